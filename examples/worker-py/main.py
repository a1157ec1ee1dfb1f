"""Serves the shop: `python main.py` long-polls (works behind NAT); `python main.py --push PORT`
serves the orchestrator's POSTs instead. Needs ORBIT_URL and ORBIT_SECRET_KEY."""

from __future__ import annotations

import asyncio
import os
import sys

from shop import service


async def main() -> None:
    worker = service()
    if "--push" in sys.argv:
        port = await worker.listen(int(sys.argv[sys.argv.index("--push") + 1]))
        print(f"shop: serving pushes on port {port}", flush=True)
        await worker.stopped()
    else:
        print("shop: polling", os.environ.get("ORBIT_URL"), flush=True)
        await worker.start()


if __name__ == "__main__":
    asyncio.run(main())
