"""A worker service: registers its handlers with `orbit server`, then runs the attempts it is
given, by long-poll (`run()` / `await start()`, works behind NAT) or by push (`serve(port)`,
`await listen(port)` or `asgi_app()` in any ASGI server, for serverless platforms). The wire
protocol is docs/worker-protocol.md."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiohttp
import jwt

from . import objects
from .context import Context
from .hashing import code_hash
from .idempotency import key_template
from .types import Fatal, Handler, KeyFunction, LeaseLost, OrbitError, RegisteredTask, RegisteredVersion, RetryAfter, TaskOptions, TaskResult

if TYPE_CHECKING:
    from .models import Assignment
    from aiohttp.web import AppRunner

H = TypeVar("H", bound=Handler)
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass
class _Attempt:
    assignment: Assignment
    ctx: Context | None = None
    job: asyncio.Future[Any] | None = None
    """What to cancel when the attempt is lost: the handler's task, or its thread's future."""
    timer: asyncio.TimerHandle | None = None
    lost: bool = False
    handed_back: bool = False


class Worker:
    """A worker service (PipeWeave's `createWorker`, Orbit-Py's workers).

    `orchestrator_url` and `secret_key` default to ORBIT_URL (or PIPEWEAVE_ORCHESTRATOR_URL) and
    ORBIT_SECRET_KEY (or PIPEWEAVE_SECRET_KEY). `concurrency` attempts run at once; a stop lets
    running handlers finish for `grace` seconds before handing their attempts back.
    """

    def __init__(
        self,
        orchestrator_url: str | None = None,
        service_id: str = "",
        secret_key: str | None = None,
        *,
        concurrency: int = 4,
        version: str | None = None,
        grace: float = 30.0,
    ) -> None:
        url = orchestrator_url or os.environ.get("ORBIT_URL") or os.environ.get("PIPEWEAVE_ORCHESTRATOR_URL")
        secret = secret_key or os.environ.get("ORBIT_SECRET_KEY") or os.environ.get("PIPEWEAVE_SECRET_KEY")
        if not url:
            raise ValueError("orchestrator_url is required (or set ORBIT_URL)")
        if not secret or len(secret) < 16:
            raise ValueError("secret_key must be the server's ORBIT_SECRET_KEY (at least 16 characters)")
        if not _NAME.match(service_id):
            raise ValueError("service_id: 1 to 128 letters, digits, - _ .")
        self.orchestrator_url = url.rstrip("/")
        self.service_id = service_id
        self.concurrency = max(1, concurrency)
        self.version = version
        self.grace = grace
        self.worker_id = f"{service_id}@{socket.gethostname()}:{os.getpid()}"
        self.tasks: dict[str, RegisteredTask] = {}
        self.hooks: list[Callable[[Worker], Coroutine[Any, Any, None]]] = []
        """Run before each registration (pipelines in code save themselves here)."""
        self._secret = secret
        self._token: tuple[str, float] = ("", 0.0)
        self._running: dict[str, _Attempt] = {}
        self._jobs: set[asyncio.Future[Any]] = set()
        self._stopping = False
        self._wake: asyncio.Future[None] | None = None
        self._pulling = False
        self._signals: list[signal.Signals] = []
        self._closing: asyncio.Future[None] | None = None
        self._closed = asyncio.Event()
        self._poll: asyncio.Task[Any] | None = None
        self._beat: asyncio.Task[None] | None = None
        self._push: AppRunner | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._http: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- registering handlers ------------------------------------------------------------------

    def task(
        self,
        name: str | None = None,
        *,
        allowed_next: list[str] | None = None,
        idempotency_key: str | KeyFunction | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        heartbeat_interval: float | None = None,
        code_version: str | None = None,
    ) -> Callable[[H], H]:
        """Registers the decorated `def` or `async def` handler as task `name` (its own name when
        absent). Times are in seconds."""
        options = TaskOptions(list(allowed_next or []), idempotency_key, retries, timeout, heartbeat_interval, code_version)

        def decorate(handler: H) -> H:
            self.register(name or handler.__name__, handler, options)
            return handler

        return decorate

    def register(self, name: str, handler: Handler, options: TaskOptions | None = None) -> None:
        """Registers `handler` as task `name` (the decorator's plain form)."""
        options = options or TaskOptions()
        if not callable(handler):
            raise TypeError(f"register({name!r}): a handler function is required")
        if not _NAME.match(name):
            raise ValueError(f"register({name!r}): a name is 1 to 128 letters, digits, - _ .")
        if options.idempotency_key is not None:
            key_template(options.idempotency_key)
        for seconds in (options.timeout, options.heartbeat_interval):
            if seconds is not None and not seconds > 0:
                raise ValueError(f"register({name!r}): timeout and heartbeat_interval are seconds above 0")
        hashed = f"version:{options.code_version}" if options.code_version is not None else code_hash(handler)
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None))
        self.tasks[name] = RegisteredTask(name, handler, options, hashed, is_async)

    def registration(self, url: str | None = None) -> dict[str, Any]:
        """The registration body (docs/worker-protocol.md §1)."""

        def ms(seconds: float | None) -> int | None:
            return None if seconds is None else max(1, round(seconds * 1000))

        body: dict[str, Any] = {
            "serviceId": self.service_id,
            "workerId": self.worker_id,
            "concurrency": self.concurrency,
            "tasks": [
                _compact(
                    {
                        "name": t.name,
                        "codeHash": t.code_hash,
                        "allowedNext": t.options.allowed_next,
                        "idempotencyKey": None if t.options.idempotency_key is None else key_template(t.options.idempotency_key),
                        "retries": t.options.retries,
                        "timeoutMs": ms(t.options.timeout),
                        "heartbeatIntervalMs": ms(t.options.heartbeat_interval),
                    }
                )
                for t in self.tasks.values()
            ],
        }
        return _compact({**body, "version": self.version, "url": url})

    async def register_with_server(self, url: str | None = None) -> list[RegisteredVersion]:
        """Saves this worker's pipelines in code, then registers its tasks; each task's code version."""
        self._bind()
        for hook in self.hooks:
            await hook(self)
        answer = await self.call("/api/v1/services/register", self.service_token(), self.registration(url))
        return [RegisteredVersion(t["name"], t["codeVersion"], t["changed"]) for t in answer["tasks"]]

    # -- pull ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Pull mode, blocking: registers, then long-polls for work until SIGTERM or SIGINT; running
        handlers are let finish (up to the grace), the others handed back."""
        asyncio.run(self.start())

    async def start(self) -> None:
        """Pull mode in the running event loop, until `stop()` (or SIGTERM when no one else
        handles it)."""
        backoff = 0.2
        try:
            # Inside the try: a first registration that fails still closes the HTTP session.
            await self.register_with_server()
            self._on_signals()
            self._beat = asyncio.create_task(self._heartbeats())
            self._pulling = True
            while not self._stopping:
                free = self.concurrency - len(self._running)
                if free <= 0:
                    self._wake = asyncio.get_running_loop().create_future()
                    await self._wake
                    continue
                body = {"workerId": self.worker_id, "max": free, "waitMs": 20_000}
                self._poll = asyncio.ensure_future(self.call("/api/v1/worker/poll", self.service_token(), body))
                try:
                    answer = await self._poll
                except asyncio.CancelledError:
                    if self._stopping:
                        break
                    raise
                except Exception:
                    if self._stopping:
                        break
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    if self._stopping:
                        break
                    # The orchestrator may have lost its database: say who we are again.
                    try:
                        await self.register_with_server()
                    except Exception:
                        pass
                    continue
                backoff = 0.2
                for a in answer["tasks"]:
                    self._spawn(a)
        finally:
            await self._shutdown()
            self._pulling = False

    # -- push ----------------------------------------------------------------------------------

    def asgi_app(self, public_url: str | None = None) -> Any:
        """An ASGI application that takes the orchestrator's POSTs (any path it is mounted at).
        With `public_url` (how the orchestrator reaches it) it registers on the ASGI server's
        startup; otherwise call `await worker.register_with_server(url)` yourself."""
        from .push import asgi_app

        return asgi_app(self, public_url)

    async def listen(self, port: int = 8080, host: str = "0.0.0.0", public_url: str | None = None) -> int:
        """Push mode in the running event loop: serves the orchestrator's POSTs on `port` and
        registers with `public_url` (`http://127.0.0.1:<port>/orbit/task` by default); the
        bound port, once registered. Runs until `stop()`."""
        from .push import serve

        self._bind()
        self._push, bound = await serve(self, host, port)
        await self.register_with_server(public_url or f"http://127.0.0.1:{bound}/orbit/task")
        self.start_heartbeats()
        self._on_signals()
        return bound

    def serve(self, port: int = 8080, host: str = "0.0.0.0", public_url: str | None = None) -> None:
        """Push mode, blocking, until SIGTERM or SIGINT."""

        async def main() -> None:
            await self.listen(port, host, public_url)
            await self.stopped()

        asyncio.run(main())

    def start_heartbeats(self) -> None:
        """Says every 5 s that this worker is alive (`orbit services`); polls count too."""
        if self._beat is None:
            self._beat = asyncio.create_task(self._heartbeats())

    def accept(self, a: Assignment, token: str) -> int:
        """Takes one pushed attempt: 202 when its task token is this secret's for this task run,
        401 otherwise, 503 when stopping."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], audience="orbit-task", leeway=5)
        except jwt.PyJWTError:
            return 401
        if claims.get("trid") != a.get("taskRunId") or a.get("token") != token:
            return 401
        if self._stopping:
            return 503
        self._spawn(a)
        return 202

    # -- stopping ------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stops taking work; lets running handlers finish within the grace, hands the rest back
        (their attempts are retried at once elsewhere). Returns once that is done."""
        self._stopping = True
        if self._poll is not None:
            self._poll.cancel()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if self._push is not None:
            await self._push.cleanup()
            self._push = None
        if self._pulling:
            await self._closed.wait()
        else:
            await self._shutdown()

    async def stopped(self) -> None:
        """Waits until the worker has stopped (`stop()`, or SIGTERM)."""
        await self._closed.wait()

    async def _shutdown(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._stopping = True
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if self._jobs:
            await asyncio.wait(list(self._jobs), timeout=self.grace)
        # Grace is over: what still runs is handed back, to be retried elsewhere at once.
        left = list(self._running.values())
        for attempt in left:
            attempt.handed_back = True
            if attempt.ctx is not None:
                attempt.ctx.cancelled.set()
            if attempt.job is not None:
                attempt.job.cancel()
        await asyncio.gather(
            *(self._callback(a.assignment, status="failed", error="the worker stopped before the attempt finished") for a in left),
            return_exceptions=True,
        )
        self._running.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        for sig in self._signals:
            asyncio.get_running_loop().remove_signal_handler(sig)
        self._signals.clear()
        self._closed.set()

    def _on_signals(self) -> None:
        """SIGTERM and SIGINT stop the worker, unless the application handles them itself."""
        loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                try:
                    loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))
                    self._signals.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass

    # -- one attempt ---------------------------------------------------------------------------

    def _spawn(self, a: Assignment) -> None:
        job = asyncio.ensure_future(self._execute(a))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _execute(self, a: Assignment) -> None:
        state = _Attempt(a)
        self._running[a["taskRunId"]] = state
        loop = asyncio.get_running_loop()
        try:
            task = self.tasks.get(a["serviceTask"])
            if task is None:
                await self._callback(a, status="failed", error=f"this worker has no task `{a['serviceTask']}`")
                return
            every = max(0.1, min(a["heartbeatIntervalMs"] / 1000, task.options.heartbeat_interval or math.inf))
            # A timer, not a task: most attempts finish before their first heartbeat is due.
            state.timer = loop.call_later(every, self._heartbeat_due, state, every)
            timeout_ms = a.get("timeoutMs")
            timeout = _min_defined(None if timeout_ms is None else timeout_ms / 1000, task.options.timeout)
            try:
                input, upstream = await objects.hydrate(self, a)
            except Exception as error:
                await self._callback(a, status="failed", error=str(error))
                return
            ctx = self._context(a, input, upstream, state)
            state.ctx = ctx
            running: Any
            if task.is_async:
                # An async handler runs in this task: cancelling it cancels the handler.
                state.job = asyncio.current_task()
                running = task.handler(ctx)
            else:
                call = contextvars.copy_context().run
                running = state.job = loop.run_in_executor(self._executor(), call, task.handler, ctx)
            try:
                value = await (running if timeout is None else asyncio.wait_for(running, timeout))
            except asyncio.CancelledError:
                # Lost, or handed back by a stop (which calls back for it): nothing to send here.
                if state.lost or state.handed_back:
                    return
                raise
            except asyncio.TimeoutError:
                ctx.cancelled.set()
                await self._callback(a, status="timeout", error=f"the handler ran past its timeout of {timeout:g} s", logs=ctx.lines)
                return
            except Exception as error:
                ctx.cancelled.set()
                if state.lost or state.handed_back:
                    return
                fatal = isinstance(error, Fatal)
                message = str(error) or type(error).__name__
                later = round(error.seconds * 1000) if isinstance(error, RetryAfter) else None
                await self._callback(a, status="failed", error=message, retryable=not fatal, retry_after_ms=later, logs=ctx.lines)
                return
            finally:
                state.job = None
            if state.lost or state.handed_back:
                return
            result = value if isinstance(value, TaskResult) else TaskResult(value)
            await self._callback(a, status="succeeded", output=result.output, run_next=result.run_next, logs=ctx.lines)
        except OrbitError as error:
            # 409: the lease is gone (another attempt owns the task); anything else is logged and
            # the lease runs out, so the task is retried.
            if error.status != 409:
                print(f"orbit: {a['task']}: {error}", file=sys.stderr)
        except asyncio.CancelledError:
            if not (state.lost or state.handed_back):
                raise
        except Exception as error:
            print(f"orbit: {a['task']}: {error}", file=sys.stderr)
        finally:
            if state.timer is not None:
                state.timer.cancel()
            if self._running.pop(a["taskRunId"], None) is not None and self._wake is not None and not self._wake.done():
                self._wake.set_result(None)

    def _context(self, a: Assignment, input: Any, upstream: dict[str, Any], state: _Attempt) -> Context:
        async def report(fraction: float, message: str | None) -> None:
            try:
                await self.task_call("/api/v1/progress", a, _compact({"taskRunId": a["taskRunId"], "progress": fraction, "message": message}))
            except OrbitError as error:
                if error.status == 409:
                    self._lost(state)
                    raise LeaseLost("the attempt's lease was lost") from error
                raise

        async def send(name: str, payload: Any, ttl: str | None) -> dict[str, Any]:
            body = _compact({"taskRunId": a["taskRunId"], "name": name, "ttl": ttl})
            body["payload"] = payload
            return cast(dict[str, Any], await self.task_call("/api/v1/worker/signal", a, body))

        ctx = Context(
            input=input,
            upstream=upstream,
            run_id=a["runId"],
            task_run_id=a["taskRunId"],
            task=a["task"],
            pipeline=a["pipeline"],
            attempt=a["attempt"],
            code_version=a["codeVersion"],
            effect_key=a["effectKey"],
            loop=asyncio.get_running_loop(),
            report=report,
            send=send,
        )
        ctx.traceparent = a.get("traceparent")
        return ctx

    def _lost(self, state: _Attempt) -> None:
        state.lost = True
        if state.ctx is not None:
            state.ctx.cancelled.set()
        if state.job is not None:
            state.job.cancel()

    def _heartbeat_due(self, state: _Attempt, every: float) -> None:
        """Heartbeats while the handler runs; a 409 means the lease is gone: stop the handler."""
        a = state.assignment

        async def send() -> None:
            try:
                await self.task_call("/api/v1/heartbeat", a, {"taskRunId": a["taskRunId"]})
            except OrbitError as error:
                if error.status == 409:
                    self._lost(state)
                    return
            except Exception:
                pass
            if self._running.get(a["taskRunId"]) is state and not state.lost:
                state.timer = asyncio.get_running_loop().call_later(every, self._heartbeat_due, state, every)

        state.timer = None
        beat = asyncio.ensure_future(send())
        self._jobs.add(beat)
        beat.add_done_callback(self._jobs.discard)

    async def _callback(self, a: Assignment, *, status: str, output: Any = None, run_next: list[str] | None = None, error: str | None = None, retryable: bool = True, retry_after_ms: int | None = None, logs: list[str] | None = None) -> None:
        threshold = a.get("outputThreshold")
        if status == "succeeded" and threshold is not None:
            body = json.dumps(output, separators=(",", ":")).encode()
            if len(body) > threshold or objects.reference(output) is not None:
                output = await objects.store(self, a, body)
        payload = _compact({"taskRunId": a["taskRunId"], "status": status, "runNext": run_next, "error": error, "retryAfterMs": retry_after_ms})
        payload.update(output=output, retryable=retryable, logs=logs or [])
        await self.task_call(f"/api/v1/callback/{a['runId']}", a, payload)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(5)
            try:
                await self.call("/api/v1/worker/heartbeat", self.service_token(), {"workerId": self.worker_id})
            except Exception:
                pass

    # -- HTTP ----------------------------------------------------------------------------------

    def _bind(self) -> None:
        """The worker's state belongs to the event loop it runs in (a new loop is a new run)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._stopping = False
            self._closing = None
            self._closed = asyncio.Event()
            self._http = None
            self._pool = None
        if self._http is None:
            # aiohttp, not httpx, on this path: a no-op task costs a third of the CPU (measured
            # with `orbit bench --sdk python`: 1,350 tasks/s against httpx's 290).
            connector = aiohttp.TCPConnector(limit=self.concurrency + 8)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
            self._http = aiohttp.ClientSession(connector=connector, timeout=timeout)

    def _executor(self) -> ThreadPoolExecutor:
        # Sync handlers run here, so the event loop (heartbeats, other attempts) never stalls.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"orbit-{self.service_id}")
        return self._pool

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("the worker is not started")
        return self._http

    def service_token(self) -> str:
        """A service token, minted per four minutes."""
        now = time.time()
        token, until = self._token
        if until < now:
            issued = int(now)
            token = jwt.encode({"sub": self.service_id, "aud": "orbit-service", "iat": issued, "exp": issued + 300}, self._secret, algorithm="HS256")
            self._token = (token, now + 240)
        return token

    def resolve(self, url: str) -> str:
        """`url` as the orchestrator gave it: absolute (pre-signed) or relative to it."""
        return url if url.startswith(("http://", "https://")) else f"{self.orchestrator_url}{url}"

    async def task_call(self, path: str, a: Assignment, body: Any) -> Any:
        """A call about attempt `a`, with its task token and its `traceparent`: the
        orchestrator's span for the call joins the run's trace, under the attempt's."""
        return await self.call(path, a["token"], body, a.get("traceparent"))

    async def call(self, path: str, token: str, body: Any, traceparent: str | None = None) -> Any:
        """POSTs JSON with a bearer token; the parsed answer, or an OrbitError."""
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        if traceparent:
            headers["traceparent"] = traceparent
        async with self.http.post(self.resolve(path), data=data, headers=headers) as response:
            return answer(path, response.status, await response.read())


def answer(what: str, status: int, content: bytes) -> Any:
    """The parsed body of an answer to `what` (a path, or a method and path), or the OrbitError
    it says; the worker's and the clients' answers alike."""
    try:
        parsed = json.loads(content) if content else None
    except ValueError:
        parsed = content.decode(errors="replace")
    if status >= 400:
        error = parsed.get("error", {}) if isinstance(parsed, dict) else {}
        error = error if isinstance(error, dict) else {}
        text = error.get("message") or content.decode(errors="replace")
        raise OrbitError(f"{what}: {status} {text}", status, error.get("code"), parsed)
    return parsed


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _min_defined(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
