"""Running a handler in this process, with no orchestrator and no database: the same context
(attempt 1, code version 0; log records and progress also go to stderr), so a test or a debugger
with breakpoints sees exactly what the handler does."""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from .context import Context
from .types import TaskResult
from .worker import Worker


@dataclass
class LocalResult(TaskResult):
    """The handler's result and the lines it logged."""

    logs: list[str] = field(default_factory=list)


async def run_local_async(worker: Worker, task: str, input: Any = None, *, upstream: dict[str, Any] | None = None) -> LocalResult:
    """`run_local` in the running event loop (for `async` tests)."""
    registered = worker.tasks.get(task)
    if registered is None:
        raise KeyError(f"no task `{task}` is registered (registered: {', '.join(worker.tasks) or 'none'})")
    loop = asyncio.get_running_loop()

    async def report(fraction: float, message: str | None) -> None:
        print(f"[progress {round(fraction * 100)}%] {message or ''}", file=sys.stderr)

    ctx = Context(
        input={} if input is None else input,
        upstream=dict(upstream or {}),
        run_id="local",
        task_run_id=str(uuid.uuid4()),
        task=task,
        pipeline="local",
        attempt=1,
        code_version=0,
        effect_key=f"local-{task}",
        loop=loop,
        report=report,
    )
    if registered.is_async:
        value = await registered.handler(ctx)
    else:
        # In a thread, as the worker runs it: its progress reports wait on this loop.
        value = await loop.run_in_executor(None, registered.handler, ctx)
    for line in ctx.lines:
        print(line, file=sys.stderr)
    result = value if isinstance(value, TaskResult) else TaskResult(value)
    allowed = registered.options.allowed_next
    for chosen in result.run_next or []:
        if chosen not in allowed:
            raise ValueError(f"run_next names `{chosen}`, not in allowed_next [{', '.join(allowed)}]")
    return LocalResult(result.output, result.run_next, list(ctx.lines))


def run_local(worker: Worker, task: str, input: Any = None, *, upstream: dict[str, Any] | None = None) -> LocalResult:
    """Runs the handler registered as `task` here (sync or async) and checks its `run_next`
    against its `allowed_next`; errors it raises (Fatal included) reach the caller."""
    return asyncio.run(run_local_async(worker, task, input, upstream=upstream))
