"""Push mode: the orchestrator POSTs each attempt, with its task token, to the worker. The same
handling serves two ways: an ASGI application (to mount in any ASGI server) and aiohttp's own
server (`Worker.listen` / `Worker.serve`)."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .worker import Worker

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def take(worker: Worker, body: bytes, authorization: str) -> tuple[int, dict[str, Any]]:
    """The answer to one pushed attempt (202 once it is taken; it then runs in the background)."""
    try:
        assignment = json.loads(body)
        if not isinstance(assignment, dict):
            raise ValueError("not an object")
    except ValueError as error:
        return 400, _error("bad_request", f"the body is not an assignment: {error}")
    status = worker.accept(assignment, authorization.removeprefix("Bearer "))  # type: ignore[arg-type]
    if status == 202:
        return 202, {"ok": True}
    if status == 503:
        return 503, _error("stopping", "this worker is stopping")
    return 401, _error("unauthorized", "the task token is not valid for this task run")


def asgi_app(worker: Worker, public_url: str | None) -> App:
    async def reply(send: Send, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if public_url is not None:
                        await worker.register_with_server(public_url)
                        worker.start_heartbeats()
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await worker.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            return await reply(send, 405, _error("method_not_allowed", "POST an attempt here"))
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode()
        status, body = take(worker, b"".join(chunks), authorization)
        await reply(send, status, body)

    return app


async def serve(worker: Worker, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serves `POST /orbit/task` on host:port; the runner (to clean up) and the bound port."""

    async def attempt(request: web.Request) -> web.Response:
        status, body = take(worker, await request.read(), request.headers.get("authorization", ""))
        return web.json_response(body, status=status)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/orbit/task", attempt)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    # A socket of our own, so that port 0 gives a port we can name in the registration.
    sock = socket.create_server((host, port), reuse_port=False)
    await web.SockSite(runner, sock).start()
    return runner, int(sock.getsockname()[1])
