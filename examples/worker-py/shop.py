"""The checkout service of examples/worker (Rust) in Python: `route` picks express or standard
shipping (the other branch is skipped), `payment` is idempotent per order and code version,
`report` reports its progress. The pipeline is examples/worker/pipeline.yaml."""

from __future__ import annotations

import asyncio
from typing import Any

from orbit_sdk import Context, Fatal, TaskResult, Worker


def service(orchestrator_url: str | None = None, secret_key: str | None = None) -> Worker:
    worker = Worker(orchestrator_url, "shop", secret_key, concurrency=8, version="0.1.0")

    @worker.task("route", allowed_next=["express", "standard"])
    def route(ctx: Context) -> TaskResult:
        path = "express" if ctx.input.get("fast") else "standard"
        ctx.log.info("routing order to %s", path)
        return TaskResult({"path": path}, run_next=[path])

    @worker.task("ship")
    async def ship(ctx: Context) -> dict[str, Any]:
        order, speed = ctx.input["order"], ctx.input["speed"]
        return {"order": order, "shipping": speed, "days": 1 if speed == "express" else 5}

    @worker.task("payment", idempotency_key=lambda input, v: f"v{v}-{input['orderId']}", retries=3)
    def payment(ctx: Context) -> dict[str, Any]:
        order_id, amount = ctx.input.get("orderId"), ctx.input.get("amount", 0)
        if not order_id:
            raise Fatal("input has no `orderId`")
        if amount < 0:
            raise Fatal(f"refusing a negative amount {amount}")
        ctx.log.info("charging %s for %s (code v%s, provider key %s)", amount, order_id, ctx.code_version, ctx.effect_key)
        return {"order": order_id, "charged": amount, "receipt": f"rcpt-{order_id}"}

    @worker.task("report")
    async def report(ctx: Context) -> dict[str, Any]:
        steps = min(100, max(1, int(ctx.input.get("steps", 4))))
        for i in range(1, steps + 1):
            await asyncio.sleep(0.1)
            await ctx.progress(i / steps, f"step {i} of {steps}")
        return {"steps": steps, "receipt": ctx.upstream("payment", {}).get("receipt")}

    return worker
