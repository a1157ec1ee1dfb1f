"""Real `orbit server` processes (and PostgreSQL databases) for the tests: the binary is
ORBIT_BIN, else the workspace's build (CARGO_TARGET_DIR or target/, debug then release)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

KEY = "python-sdk-test-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[3]


def orbit_bin() -> str:
    if os.environ.get("ORBIT_BIN"):
        return os.environ["ORBIT_BIN"]
    roots = [os.environ.get("CARGO_TARGET_DIR"), str(ROOT / "target")]
    for root in filter(None, roots):
        for profile in ("debug", "release"):
            path = Path(root) / profile / "orbit"
            if path.exists():
                return str(path)
    raise RuntimeError("no orbit binary: build it (cargo build -p orbit-cli) or set ORBIT_BIN")


@dataclass
class Server:
    base: str
    dir: str
    process: subprocess.Popen[bytes]
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        response = self.http.request(method, self.base + path, json=body) if body is not None else self.http.request(method, self.base + path)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    def get_json(self, path: str) -> Any:
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def save(self, document: dict[str, Any]) -> None:
        status, body = self.call("POST", "/api/v1/pipelines", document)
        assert status in (200, 201), body

    def trigger(self, pipeline: str, input: Any) -> str:
        status, body = self.call("POST", f"/api/v1/pipelines/{pipeline}/trigger", {"input": input})
        assert status in (200, 201), body
        return str(body["run"]["id"])

    def settled(self, run: str, within: float = 30) -> Any:
        end = time.monotonic() + within
        while True:
            body = self.get_json(f"/api/v1/runs/{run}?taskLimit=1000")
            if body["run"]["state"] in ("succeeded", "failed", "cancelled"):
                return body
            if time.monotonic() > end:
                raise AssertionError(f"run {run} did not settle: {body}")
            time.sleep(0.05)

    def wait_for(self, path: str, within: float = 10) -> Any:
        """Waits until GET `path` answers 200."""
        end = time.monotonic() + within
        while True:
            status, body = self.call("GET", path)
            if status == 200:
                return body
            if time.monotonic() > end:
                raise AssertionError(f"{path} still answers {status}: {body}")
            time.sleep(0.05)


def task(detail: Any, name: str) -> Any:
    return next(t for t in detail["tasks"] if t["taskName"] == name)


@contextmanager
def start_server(database: str | None = None, workers: int = 0, env: dict[str, str] | None = None) -> Iterator[Server]:
    """`orbit server` with the secret key, on a free port, in a temporary directory."""
    directory = tempfile.mkdtemp(prefix="orbit-py-")
    process = subprocess.Popen(
        [orbit_bin(), "server", "--bind", "127.0.0.1:0", "--workers", str(workers)],
        cwd=directory,
        env={
            **os.environ,
            "ORBIT_DATABASE_URL": database or f"sqlite://{directory}/orbit.db",
            "ORBIT_SECRET_KEY": KEY,
            "ORBIT_LOG": "error",
            "ORBIT_API_TOKEN": "",
            **(env or {}),
        },
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    found = re.search(r"http://\S+", line)
    if not found:
        process.kill()
        raise RuntimeError(f"orbit server did not start: {line!r} (exit {process.wait()})")
    server = Server(found.group(0), directory, process)
    try:
        yield server
    finally:
        server.http.close()
        process.terminate()
        process.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def start_postgres() -> Iterator[str | None]:
    """A PostgreSQL database for one test: a fresh database on ORBIT_TEST_PG_URL's server, else a
    private cluster (initdb + pg_ctl on a free port in a temporary directory), as the Rust tests
    do; None when this machine has no PostgreSQL programs."""
    name = f"orbit_py_{os.getpid()}_{time.time_ns()}"
    admin = os.environ.get("ORBIT_TEST_PG_URL")
    if admin:
        subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"], check=True)
        try:
            yield urlsplit(admin)._replace(path=f"/{name}").geturl()
        finally:
            subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])
        return
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        yield None
        return
    bin_dir = versions[-1].parent
    directory = tempfile.mkdtemp(prefix="orbit-py-pg-")
    as_root = os.geteuid() == 0

    def run(program: str, *args: str) -> None:
        argv = [str(bin_dir / program), *args]
        if as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    if as_root:
        shutil.chown(directory, "postgres", "postgres")
    data = f"{directory}/data"
    run("initdb", "-D", data, "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
    port = free_port()
    run("pg_ctl", "-D", data, "-l", f"{directory}/log", "-w", "-t", "60", "start",
        "-o", f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off")
    try:
        yield f"postgres://postgres@127.0.0.1:{port}/postgres"
    finally:
        try:
            run("pg_ctl", "-D", data, "-m", "immediate", "stop")
        finally:
            shutil.rmtree(directory, ignore_errors=True)


class Api:
    """The server's HTTP API for tests whose workers run on the same event loop."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.AsyncClient(timeout=30)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        response = await self.http.request(method, self.base + path, json=body)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    async def get(self, path: str) -> Any:
        status, body = await self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    async def save(self, document: dict[str, Any]) -> None:
        status, body = await self.call("POST", "/api/v1/pipelines", document)
        assert status in (200, 201), body

    async def trigger(self, pipeline: str, input: Any) -> str:
        status, body = await self.call("POST", f"/api/v1/pipelines/{pipeline}/trigger", {"input": input})
        assert status in (200, 201), body
        return str(body["run"]["id"])

    async def settled(self, run: str, within: float = 30) -> Any:
        end = time.monotonic() + within
        while True:
            body = await self.get(f"/api/v1/runs/{run}?taskLimit=1000")
            if body["run"]["state"] in ("succeeded", "failed", "cancelled"):
                return body
            if time.monotonic() > end:
                raise AssertionError(f"run {run} did not settle: {body}")
            await asyncio.sleep(0.05)

    async def until(self, path: str, check: Any, within: float = 10) -> Any:
        """Polls GET `path` until `check(body)` holds."""
        end = time.monotonic() + within
        while True:
            status, body = await self.call("GET", path)
            if status == 200 and check(body):
                return body
            if time.monotonic() > end:
                raise AssertionError(f"{path}: {status} {body}")
            await asyncio.sleep(0.05)
