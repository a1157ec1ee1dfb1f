"""What a handler gets: its input, upstream outputs, ids, a logger whose records reach the
attempt's log, and progress reports (awaitable in `async def` handlers, blocking in `def` ones,
which run in the worker's thread pool)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

Report = Callable[[float, "str | None"], Coroutine[Any, Any, None]]
Send = Callable[[str, Any, "str | None"], Coroutine[Any, Any, dict[str, Any]]]

_MISSING: Any = object()


class _Lines(logging.Handler):
    """Keeps each record as a line of the attempt's log: `[INFO] message`."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{logging.Formatter().formatException(record.exc_info)}"
        self.lines.append(f"[{record.levelname}] {text}")


_PARENT = logging.getLogger("orbit.task")


def attempt_logger(task: str, lines: list[str]) -> logging.Logger:
    """A logger of its own per attempt (not kept in logging's registry, so attempts leave nothing
    behind); records also propagate to `orbit.task`, where the application's handlers see them."""
    log = logging.Logger(f"orbit.task.{task}", logging.DEBUG)
    log.parent = _PARENT
    log.addHandler(_Lines(lines))
    return log


class _Done:
    """The result of a call a `def` handler already waited for: awaiting it gives the value."""

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield


async def _shown(name: str, payload: Any, _ttl: str | None) -> dict[str, Any]:
    """`send_signal` with no orchestrator (`run_local`): shown on stderr; nothing waits for it."""
    import json
    import sys

    print(f"[signal {name}] {json.dumps(payload)}", file=sys.stderr)
    return {"delivered": [], "kept": False}


class Context:
    """One attempt of a task, as its handler sees it."""

    def __init__(
        self,
        *,
        input: Any,
        upstream: dict[str, Any],
        run_id: str,
        task_run_id: str,
        task: str,
        pipeline: str,
        attempt: int,
        code_version: int,
        effect_key: str,
        loop: asyncio.AbstractEventLoop,
        report: Report,
        send: Send = _shown,
    ) -> None:
        self.input = input
        self.upstreams = upstream
        self.run_id = run_id
        self.task_run_id = task_run_id
        self.task = task
        self.pipeline = pipeline
        self.attempt = attempt
        self.code_version = code_version
        self.effect_key = effect_key
        self.traceparent: str | None = None
        """The attempt's W3C `traceparent` (the run's trace): pass it on to continue the trace."""
        self.lines: list[str] = []
        self.cancelled = threading.Event()
        """Set when the attempt's lease is lost, it times out or the worker hands it back: a `def`
        handler should check it in long loops (an `async def` one is cancelled instead)."""
        self._loop = loop
        self._report = report
        self._send = send
        self._log: logging.Logger | None = None

    def upstream(self, task: str, default: Any = _MISSING) -> Any:
        """The output of upstream task `task` (large values already fetched)."""
        if task in self.upstreams:
            return self.upstreams[task]
        if default is _MISSING:
            raise KeyError(f"no upstream task `{task}` (upstream: {', '.join(self.upstreams) or 'none'})")
        return default

    @property
    def log(self) -> logging.Logger:
        """A standard logger; its records become the attempt's log (`orbit logs`, the dashboard)."""
        if self._log is None:
            self._log = attempt_logger(self.task, self.lines)
        return self._log

    def send_signal(self, name: str, payload: Any = None, *, ttl: str | None = None) -> Awaitable[dict[str, Any]]:
        """Sends Orbit signal `name` (what `orbit signal` and `POST /signals/{name}` send): every
        `wait` task parked on it gets `payload` as its output; with none waiting yet, it is kept
        (`ttl`, 24h by default) for the first that waits. Gives `{"delivered", "kept"}`; await it
        in an `async def` handler, a `def` handler's call returns it."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return asyncio.ensure_future(self._send(name, payload, ttl))
        return _Done(asyncio.run_coroutine_threadsafe(self._send(name, payload, ttl), self._loop).result())

    def progress(self, fraction: float, message: str | None = None) -> Awaitable[None]:
        """Records progress (0..1) and renews the lease. Await it in an `async def` handler; a
        `def` handler's call returns once it is recorded. Raises LeaseLost when the attempt lost
        its task."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"progress must be within 0..1, not {fraction}")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return asyncio.ensure_future(self._report(fraction, message))
        asyncio.run_coroutine_threadsafe(self._report(fraction, message), self._loop).result()
        return _Done()
