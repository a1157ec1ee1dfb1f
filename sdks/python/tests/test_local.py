"""The SDK with no server: run_local, code hashes, idempotency templates, registration bodies,
pipelines in code, push requests' token checks."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from orbit_sdk import Context, Fatal, Pipeline, TaskResult, Worker, code_hash, key_template, run_local, run_local_async
from support import ROOT

sys.path.insert(0, str(ROOT / "examples" / "worker-py"))

from shop import service  # noqa: E402

SECRET = "a-secret-of-sixteen-characters-or-more"


def worker(**options: Any) -> Worker:
    return Worker("http://127.0.0.1:9", "unit", SECRET, **options)


def test_the_example_services_handlers_run_locally() -> None:
    shop = service("http://127.0.0.1:9", SECRET)
    routed = run_local(shop, "route", {"fast": True})
    assert (routed.output, routed.run_next, routed.logs) == ({"path": "express"}, ["express"], ["[INFO] routing order to express"])
    assert run_local(shop, "ship", {"order": "o", "speed": "standard"}).output == {"order": "o", "shipping": "standard", "days": 5}
    paid = run_local(shop, "payment", {"orderId": "o-1", "amount": 3})
    assert paid.output["receipt"] == "rcpt-o-1"
    assert paid.logs == ["[INFO] charging 3 for o-1 (code v0, provider key local-payment)"]
    with pytest.raises(Fatal, match="negative amount -1"):
        run_local(shop, "payment", {"orderId": "o-1", "amount": -1})
    reported = run_local(shop, "report", {"steps": 2}, upstream={"payment": {"receipt": "r-9"}})
    assert reported.output == {"steps": 2, "receipt": "r-9"}


def test_the_context_of_sync_and_async_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    w = worker()
    seen: dict[str, Any] = {}

    @w.task("sync")
    def sync(ctx: Context) -> str:
        seen["sync"] = (ctx.run_id, ctx.attempt, ctx.code_version, ctx.effect_key, ctx.task, ctx.upstream("a"), ctx.upstreams)
        ctx.log.warning("careful: %d", 3)
        ctx.progress(0.5, "half")  # a def handler's report returns once recorded
        assert not ctx.cancelled.is_set()
        return "done"

    @w.task("async")
    async def asynchronous(ctx: Context) -> str:
        await ctx.progress(1, "all")
        try:
            raise ValueError("boom")
        except ValueError:
            ctx.log.exception("caught")
        return ctx.input["x"]

    result = run_local(w, "sync", {"x": 1}, upstream={"a": [1]})
    assert result.output == "done" and result.logs == ["[WARNING] careful: 3"]
    assert seen["sync"] == ("local", 1, 0, "local-sync", "sync", [1], {"a": [1]})
    assert "[progress 50%] half" in capsys.readouterr().err
    out = asyncio.run(run_local_async(w, "async", {"x": "y"}))
    assert out.output == "y"
    assert out.logs[0].startswith("[ERROR] caught\nTraceback") and "ValueError: boom" in out.logs[0]
    assert "[progress 100%] all" in capsys.readouterr().err


def test_upstream_names_what_is_missing_and_progress_checks_its_range() -> None:
    w = worker()

    @w.task("t")
    def t(ctx: Context) -> Any:
        assert ctx.upstream("nope", None) is None
        with pytest.raises(ValueError, match="within 0..1"):
            ctx.progress(1.5)
        return ctx.upstream("missing")

    with pytest.raises(KeyError, match="no upstream task `missing` \\(upstream: a\\)"):
        run_local(w, "t", upstream={"a": 1})


def test_ctx_log_records_reach_the_applications_handlers_too() -> None:
    w = worker()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("orbit.task").addHandler(handler)
    try:

        @w.task("logs")
        def logs(ctx: Context) -> None:
            ctx.log.info("hello %s", "there")

        assert run_local(w, "logs").logs == ["[INFO] hello there"]
    finally:
        logging.getLogger("orbit.task").removeHandler(handler)
    assert [(r.name, r.getMessage()) for r in records] == [("orbit.task.logs", "hello there")]


def test_routing_is_checked_against_allowed_next() -> None:
    w = worker()

    @w.task("pick", allowed_next=["a", "b"])
    def pick(ctx: Context) -> TaskResult:
        return TaskResult(None, run_next=[ctx.input["to"]])

    assert run_local(w, "pick", {"to": "a"}).run_next == ["a"]
    with pytest.raises(ValueError, match=r"run_next names `c`, not in allowed_next \[a, b\]"):
        run_local(w, "pick", {"to": "c"})
    with pytest.raises(KeyError, match="no task `nope` is registered \\(registered: pick\\)"):
        run_local(w, "nope")


def test_code_versions_follow_the_code_not_its_formatting() -> None:
    def a(ctx: Context) -> int:
        return ctx.input["a"] + ctx.input["b"]

    def b(ctx: Context) -> int:  # the same code, said differently
        """Adds."""
        return ctx.input["a"] + ctx.input["b"]  # a comment

    def c(ctx: Context) -> int:
        return ctx.input["a"] * ctx.input["b"]

    async def d(ctx: Context) -> int:
        return ctx.input["a"] + ctx.input["b"]

    assert code_hash(a) == code_hash(b)
    assert code_hash(a) != code_hash(c)
    assert code_hash(a) != code_hash(d), "async is a change"
    w = worker()
    w.register("pinned", a)
    w.task("explicit", code_version="2024-06")(c)
    hashes = {t["name"]: t["codeHash"] for t in w.registration()["tasks"]}
    assert hashes == {"pinned": code_hash(a), "explicit": "version:2024-06"}
    # Source that cannot be read (built by exec) still gets a stable hash of its compiled code.
    namespace: dict[str, Any] = {}
    exec("def e(ctx):\n    return 1\n", namespace)
    assert code_hash(namespace["e"]) == code_hash(namespace["e"]) and len(code_hash(namespace["e"])) == 64


def test_idempotency_keys_functions_become_templates() -> None:
    assert key_template("v{{ code_version }}-{{ input.orderId }}") == "v{{ code_version }}-{{ input.orderId }}"
    assert key_template(lambda input, v: f"v{v}-{input['orderId']}") == "v{{ code_version }}-{{ input.orderId }}"
    assert key_template(lambda input, v: f"{input.customer.id}/{input['a b']}/{input.get('day')}") == '{{ input.customer.id }}/{{ input["a b"] }}/{{ input.day }}'
    with pytest.raises(ValueError, match="must return a string"):
        key_template(lambda input, v: 42)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="only build a string"):
        key_template(lambda input, v: str(int(input)))


def test_the_registration_body() -> None:
    w = worker(concurrency=3, version="1.2.0")

    @w.task("pay", allowed_next=["x"], idempotency_key=lambda i, v: f"{i['id']}", retries=2, timeout=1.5, heartbeat_interval=0.25)
    def pay(ctx: Context) -> None:
        return None

    body = w.registration("http://h/orbit/task")
    assert body["serviceId"] == "unit" and body["concurrency"] == 3 and body["version"] == "1.2.0" and body["url"] == "http://h/orbit/task"
    assert body["workerId"].startswith("unit@")
    (t,) = body["tasks"]
    assert {k: v for k, v in t.items() if k != "codeHash"} == {
        "name": "pay",
        "allowedNext": ["x"],
        "idempotencyKey": "{{ input.id }}",
        "retries": 2,
        "timeoutMs": 1500,
        "heartbeatIntervalMs": 250,
    }


def test_bad_settings_are_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ORBIT_URL", "PIPEWEAVE_ORCHESTRATOR_URL", "ORBIT_SECRET_KEY", "PIPEWEAVE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="orchestrator_url is required"):
        Worker(service_id="s", secret_key=SECRET)
    with pytest.raises(ValueError, match="at least 16 characters"):
        Worker("http://h", "s", "short")
    with pytest.raises(ValueError, match="service_id"):
        Worker("http://h", "bad id", SECRET)
    monkeypatch.setenv("PIPEWEAVE_ORCHESTRATOR_URL", "http://seed:3000/")
    monkeypatch.setenv("PIPEWEAVE_SECRET_KEY", SECRET)
    assert Worker(service_id="s").orchestrator_url == "http://seed:3000", "the seed's variables work"
    w = worker()
    with pytest.raises(ValueError, match="a name is 1 to 128"):
        w.register("no spaces", lambda ctx: None)
    with pytest.raises(ValueError, match="seconds above 0"):
        w.task("t", timeout=0)(lambda ctx: None)


def test_pipelines_in_code_give_the_file_format() -> None:
    w = worker()
    etl = Pipeline("etl", schedule="0 * * * *", description="hourly", concurrency={"key": "etl-{{ input.region }}", "limit": 1}, output="{{ tasks.load.output }}")

    @etl.task()
    def extract(ctx: Context) -> list[int]:
        return [1, 2]

    etl.add("pause", "sleep", duration=1.5, needs="extract")
    etl.add("hook", "http", url="https://example.com", method="POST", needs="pause", timeout=10, retry={"max_attempts": 2}, concurrency={"key": "example.com", "limit": 4})

    etl.add("thumbs", "pipeline", pipeline="resize", input={"file": "{{ input.file }}"}, needs="extract")
    etl.add("each", "http", url="https://example.com/{{ item }}", needs="extract", for_each="{{ tasks.extract.output }}", allow_failures="10%", fail_fast=True, rate_limit={"key": "example", "per": 0.5, "limit": 5})

    @etl.task("load", needs=["extract"], priority=5, allowed_next=["hook"], code_version="7", concurrency={"key": "load-{{ input.customer }}", "limit": 1})
    async def load(ctx: Context) -> int:
        return sum(ctx.upstream("extract"))

    assert etl.document() == {
        "name": "etl",
        "description": "hourly",
        "schedule": "0 * * * *",
        "concurrency": {"key": "etl-{{ input.region }}", "limit": 1},
        "output": "{{ tasks.load.output }}",
        "tasks": [
            {"name": "extract", "type": "worker", "task": "etl.extract"},
            {"name": "pause", "type": "sleep", "duration": 1.5, "needs": "extract"},
            {"name": "hook", "type": "http", "url": "https://example.com", "method": "POST", "needs": "pause", "retry": {"max_attempts": 2}, "timeout": "10000ms", "concurrency": {"key": "example.com", "limit": 4}},
            {"name": "thumbs", "type": "pipeline", "pipeline": "resize", "input": {"file": "{{ input.file }}"}, "needs": "extract"},
            {"name": "each", "type": "http", "url": "https://example.com/{{ item }}", "needs": "extract", "rate_limit": {"key": "example", "per": "500ms", "limit": 5}, "for_each": "{{ tasks.extract.output }}", "allow_failures": "10%", "fail_fast": True},
            {"name": "load", "type": "worker", "task": "etl.load", "needs": ["extract"], "priority": 5, "allowed_next": ["hook"], "concurrency": {"key": "load-{{ input.customer }}", "limit": 1}},
        ],
    }
    etl.attach(w)
    assert sorted(w.tasks) == ["etl.extract", "etl.load"]
    assert w.tasks["etl.load"].code_hash == "version:7"
    assert run_local(w, "etl.load", upstream={"extract": [1, 2]}).output == 3
    with pytest.raises(ValueError, match="already has a task `pause`"):
        etl.add("pause", "sleep", duration="1s")


def test_push_requests_need_this_secrets_task_token() -> None:
    w = worker()

    async def check() -> list[int]:
        w._bind()
        a: Any = {"taskRunId": "tr-1", "serviceTask": "none"}
        now = int(time.time())

        def token(**claims: Any) -> str:
            return jwt.encode({"sub": "unit", "aud": "orbit-task", "exp": now + 60, "trid": "tr-1", **claims}, SECRET, algorithm="HS256")

        good = token()
        codes = [
            w.accept({**a, "token": token(aud="orbit-service")}, token(aud="orbit-service")),
            w.accept({**a, "token": good}, jwt.encode({"aud": "orbit-task", "trid": "tr-1", "exp": now + 60}, "another-secret-0123456789abcdefghij", algorithm="HS256")),
            w.accept({**a, "token": token(exp=now - 60)}, token(exp=now - 60)),
            w.accept({**a, "taskRunId": "tr-2", "token": good}, good),
        ]
        w._stopping = True
        codes.append(w.accept({**a, "token": good}, good))
        await w.stop()
        return codes

    assert asyncio.run(check()) == [401, 401, 401, 401, 503]


def test_the_package_is_typed() -> None:
    package = Path(__import__("orbit_sdk").__file__).parent
    assert (package / "py.typed").exists()


def test_calls_about_an_attempt_carry_its_traceparent() -> None:
    """The orchestrator's spans for a worker's calls join the run's trace."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[tuple[str, str | None, str | None]] = []

    class Orchestrator(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append((self.path, self.headers.get("traceparent"), self.headers.get("authorization")))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Orchestrator)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    w = Worker(f"http://127.0.0.1:{server.server_address[1]}", "unit", SECRET)

    async def calls() -> None:
        w._bind()  # what start() does first: the worker's HTTP session, in this loop
        try:
            a: Any = {"token": "task-token", "traceparent": traceparent, "taskRunId": "t"}
            await w.task_call("/api/v1/heartbeat", a, {"taskRunId": "t"})
            await w.call("/api/v1/worker/heartbeat", "service-token", {})
        finally:
            await w.http.close()

    try:
        asyncio.run(calls())
    finally:
        server.shutdown()
    assert seen == [
        ("/api/v1/heartbeat", traceparent, "Bearer task-token"),
        ("/api/v1/worker/heartbeat", None, "Bearer service-token"),
    ]
