"""`orbit bench --sdk python`: a worker service whose one task, `noop`, returns at once.

    python scripts/bench_worker.py --url URL --concurrency N [--push]   (ORBIT_SECRET_KEY set)

Uses this checkout's SDK (src/), so it needs only the SDK's dependencies installed."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from orbit_sdk import Context, TaskOptions, Worker  # noqa: E402


async def noop(ctx: Context) -> None:
    return None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--push", action="store_true")
    args = parser.parse_args()
    worker = Worker(args.url, "bench", concurrency=args.concurrency)
    worker.register("noop", noop, TaskOptions(code_version="1"))
    if args.push:
        await worker.listen(0, host="127.0.0.1")
        await worker.stopped()
    else:
        await worker.start()


if __name__ == "__main__":
    asyncio.run(main())
