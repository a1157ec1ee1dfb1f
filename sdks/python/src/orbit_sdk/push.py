"""Push mode: the orchestrator POSTs each attempt, with its task token, to the worker. The
receiver is an ASGI application (mount it in any ASGI server); `PushServer` serves it on its own
with h11 (the HTTP/1.1 state machine httpx is built on), so `serve()` needs no web framework."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import h11

if TYPE_CHECKING:
    from .worker import Worker

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_LIMIT = 64 * 1024 * 1024


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
            return await reply(send, 405, {"error": {"code": "method_not_allowed", "message": "POST an attempt here"}})
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        headers = dict(scope["headers"])
        token = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
        try:
            assignment = json.loads(b"".join(chunks))
            if not isinstance(assignment, dict):
                raise ValueError("not an object")
        except ValueError as error:
            return await reply(send, 400, {"error": {"code": "bad_request", "message": f"the body is not an assignment: {error}"}})
        status = worker.accept(assignment, token)  # type: ignore[arg-type]
        if status == 202:
            return await reply(send, 202, {"ok": True})
        if status == 503:
            return await reply(send, 503, {"error": {"code": "stopping", "message": "this worker is stopping"}})
        return await reply(send, 401, {"error": {"code": "unauthorized", "message": "the task token is not valid for this task run"}})

    return app


class PushServer:
    """An HTTP/1.1 server (keep-alive) for one ASGI application."""

    def __init__(self, app: App, server: asyncio.Server) -> None:
        self.app = app
        self.server = server
        self.port = int(server.sockets[0].getsockname()[1])
        self.connections: set[asyncio.StreamWriter] = set()

    @classmethod
    async def start(cls, app: App, host: str, port: int) -> PushServer:
        holder: list[PushServer] = []
        server = await asyncio.start_server(lambda r, w: holder[0].connection(r, w), host, port)
        holder.append(cls(app, server))
        return holder[0]

    async def close(self) -> None:
        self.server.close()
        for writer in list(self.connections):
            writer.close()
        await self.server.wait_closed()

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.add(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_LIMIT)
        try:
            while True:
                request = await self._next(conn, reader)
                if not isinstance(request, h11.Request):
                    return
                body = bytearray()
                while True:
                    event = await self._next(conn, reader)
                    if isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > _LIMIT:
                            return
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                await self._respond(conn, writer, request, bytes(body))
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.connections.discard(writer)
            writer.close()

    @staticmethod
    async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await reader.read(65536))

    async def _respond(self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes) -> None:
        path, _, query = request.target.decode().partition("?")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": request.http_version.decode(),
            "method": request.method.decode(),
            "path": path,
            "raw_path": request.target,
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers],
        }
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        data = b"".join(chunks)
        if not any(k.lower() == b"content-length" for k, _ in headers):
            headers.append((b"content-length", str(len(data)).encode()))
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        writer.write(conn.send(h11.Data(data=data)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
