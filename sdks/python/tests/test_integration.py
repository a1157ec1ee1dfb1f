"""The SDK against real `orbit server` processes: the example service (examples/worker-py) in pull
and push mode on SQLite and PostgreSQL, and workers on the test's event loop for retries, lease
loss, blocking handlers, large values, code versions, pipelines in code and the client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from orbit_sdk import AsyncClient, Client, Context, Fatal, OrbitError, Pipeline, RetryAfter, Worker
from orbit_sdk.context import _Done
from support import KEY, ROOT, Api, Server, start_postgres, start_server, task

EXAMPLE = ROOT / "examples" / "worker-py"
CHECKOUT = (ROOT / "examples" / "worker" / "pipeline.yaml").read_text()


def shop(base: str, *args: str) -> subprocess.Popen[bytes]:
    """The example service as its README runs it; returns once it has registered."""
    child = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "main.py"), *args],
        cwd=EXAMPLE,
        env={**os.environ, "ORBIT_URL": base, "ORBIT_SECRET_KEY": KEY},
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stdout.readline().startswith(b"shop:"), "the example did not start"
    return child


def checkout_runs(s: Server) -> None:
    s.save({"yaml": CHECKOUT})
    s.wait_for("/api/v1/services/shop/tasks")
    # Fast: express runs, standard is skipped; the report sees the payment's receipt.
    fast = s.settled(s.trigger("checkout", {"orderId": "o-1", "amount": 12.5, "fast": True}))
    assert fast["run"]["state"] == "succeeded", fast
    assert task(fast, "express")["state"] == "succeeded"
    assert task(fast, "express")["output"] == {"order": "o-1", "shipping": "express", "days": 1}
    assert task(fast, "standard")["state"] == "skipped"
    assert task(fast, "report")["output"]["receipt"] == "rcpt-o-1", "the upstream output reached the handler"
    assert task(fast, "report")["progress"] == 1, "progress was recorded"
    pay = s.get_json(f"/api/v1/task-runs/{task(fast, 'payment')['id']}")
    assert "[INFO] charging 12.5 for o-1" in pay["attempts"][0]["log"], "ctx.log reached the attempt's log"
    # The same order again: the payment is reused, not charged twice.
    again = s.settled(s.trigger("checkout", {"orderId": "o-1", "amount": 12.5, "fast": False}))
    assert task(again, "standard")["state"] == "succeeded"
    reused = s.get_json(f"/api/v1/task-runs/{task(again, 'payment')['id']}")
    assert reused["attempts"][0]["outcome"] == "reused", reused["attempts"]
    # A fatal error: dead after one attempt, in the dead-letter queue.
    bad = s.settled(s.trigger("checkout", {"orderId": "o-2", "amount": -1, "fast": True}))
    assert bad["run"]["state"] == "failed"
    dead = task(bad, "payment")
    assert dead["state"] == "dead" and dead["attempt"] == 1, "Fatal is not retried"
    assert "refusing a negative amount -1" in dead["error"]
    assert any(dead["id"] in (e.get("taskRunId"), e.get("id")) for e in s.get_json("/api/v1/dlq"))


@pytest.mark.parametrize("mode", ["pull", "push"])
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_the_example_service(mode: str, database: str) -> None:
    with start_postgres() if database == "postgres" else _none() as url:
        if database == "postgres" and url is None:
            if os.environ.get("CI"):
                pytest.fail("no PostgreSQL programs on this CI machine")
            pytest.skip("no PostgreSQL here (set ORBIT_TEST_PG_URL or install postgresql)")
        with start_server(database=url) as s:
            child = shop(s.base, *(["--push", "0"] if mode == "push" else []))
            try:
                checkout_runs(s)
            finally:
                child.terminate()
                assert child.wait(30) == 0, "SIGTERM stops the worker cleanly"


class _none:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def make(s: Server, service: str, **options: Any) -> Worker:
    return Worker(s.base, service, KEY, concurrency=4, grace=2, **options)


@asynccontextmanager
async def running(worker: Worker, push: bool = False) -> AsyncIterator[None]:
    if push:
        await worker.listen(0, host="127.0.0.1")
        job = None
    else:
        job = asyncio.create_task(worker.start())
        while not worker.tasks or worker._http is None:
            await asyncio.sleep(0.01)
    try:
        yield
    finally:
        await worker.stop()
        if job is not None:
            await job



@pytest.mark.anyio
@pytest.mark.parametrize("push", [False, True])
async def test_a_retried_error_succeeds_on_a_later_attempt(server: Server, push: bool) -> None:
    api = Api(server.base)
    w = make(server, f"flaky-{push}")

    @w.task(f"flaky-{push}")
    async def flaky(ctx: Context) -> dict[str, int]:
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} failed")
        return {"attempt": ctx.attempt}

    await api.save({"name": f"flaky-{push}", "tasks": [{"name": f"flaky-{push}", "type": "worker", "retry": {"max_attempts": 3, "initial": "10ms"}}]})
    async with running(w, push):
        d = await api.settled(await api.trigger(f"flaky-{push}", {}))
    assert d["run"]["state"] == "succeeded"
    assert task(d, f"flaky-{push}")["output"] == {"attempt": 3}
    attempts = (await api.get(f"/api/v1/task-runs/{task(d, f'flaky-{push}')['id']}"))["attempts"]
    assert [a["error"] for a in attempts[:2]] == ["attempt 1 failed", "attempt 2 failed"]


@pytest.mark.anyio
async def test_a_lost_lease_stops_the_handler_and_its_late_result_is_refused(server: Server) -> None:
    api = Api(server.base)
    w = make(server, "slow")
    seen: dict[str, Any] = {}

    @w.task("slow-async", heartbeat_interval=0.1)
    async def slow_async(ctx: Context) -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen["async"] = "cancelled"
            raise
        return "too late"

    @w.task("slow-sync", heartbeat_interval=0.1)
    def slow_sync(ctx: Context) -> str:
        # A blocking handler learns of the loss from ctx.cancelled; what it returns is dropped.
        seen["sync"] = ctx.cancelled.wait(60)
        return "too late"

    await api.save({"name": "slow", "tasks": [{"name": "slow-async", "type": "worker", "heartbeat_interval": "1s"}, {"name": "slow-sync", "type": "worker", "heartbeat_interval": "1s"}]})
    async with running(w):
        run = await api.trigger("slow", {})
        await api.until(f"/api/v1/runs/{run}", lambda b: all(t["state"] == "running" for t in b["tasks"]))
        status, _ = await api.call("POST", f"/api/v1/runs/{run}/cancel")
        assert status == 200
        end = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < end:
            await asyncio.sleep(0.05)
        assert seen == {"async": "cancelled", "sync": True}, "the heartbeat's 409 stopped both handlers"
    d = await api.settled(run)
    assert d["run"]["state"] == "cancelled"
    for name in ("slow-async", "slow-sync"):
        attempts = (await api.get(f"/api/v1/task-runs/{task(d, name)['id']}"))["attempts"]
        assert attempts[0]["outcome"] == "cancelled", "the late result was not kept"


@pytest.mark.anyio
async def test_a_blocking_handler_keeps_its_lease(server: Server) -> None:
    api = Api(server.base)
    w = make(server, "blocking")

    @w.task("blocking", heartbeat_interval=0.2)
    def blocking(ctx: Context) -> str:
        time.sleep(1.2)  # 3× the task's 400 ms heartbeat interval, holding no event loop
        return threading.current_thread().name

    await api.save({"name": "blocking", "tasks": [{"name": "blocking", "type": "worker", "heartbeat_interval": "400ms", "retry": {"max_attempts": 1}}]})
    async with running(w):
        d = await api.settled(await api.trigger("blocking", {}))
    assert d["run"]["state"] == "succeeded", d
    t = task(d, "blocking")
    assert t["attempt"] == 1, "the lease was never lost"
    assert t["output"].startswith("orbit-blocking"), "a def handler runs in the worker's thread pool"


@pytest.mark.anyio
async def test_a_200_kb_input_and_output_round_trip_through_object_storage(server: Server) -> None:
    api = Api(server.base)
    w = make(server, "big")

    @w.task("grow")
    def grow(ctx: Context) -> dict[str, list[str]]:
        return {"rows": [r.upper() for r in ctx.input["rows"]]}

    @w.task("count")
    async def count(ctx: Context) -> int:
        return len(ctx.upstream("grow")["rows"])

    await api.save({"name": "big", "tasks": [{"name": "grow", "type": "worker"}, {"name": "count", "type": "worker", "needs": "grow"}]})
    rows = [f"row-{i}-xxxxxxxx" for i in range(10_000)]
    async with running(w):
        d = await api.settled(await api.trigger("big", {"rows": rows}))
    assert d["run"]["state"] == "succeeded", d["run"]
    assert "$orbit_object" in d["run"]["input"], "the input was stored as an object"
    assert "$orbit_object" in task(d, "grow")["output"], "the output was uploaded as an object"
    assert task(d, "count")["output"] == 10_000
    log = (await api.get(f"/api/v1/task-runs/{task(d, 'grow')['id']}"))["attempts"][0]["log"]
    assert "written by the worker to object" in log


def test_a_new_handler_body_bumps_the_code_version(server: Server) -> None:
    def version(source: str) -> Any:
        namespace: dict[str, Any] = {}
        path = Path(server.dir) / f"calc_{abs(hash(source))}.py"
        path.write_text(source)
        exec(compile(source, str(path), "exec"), namespace)  # a module of its own, as on disk
        w = make(server, "versions")
        w.register("calc", namespace["calc"])
        return asyncio.run(_register(w))[0]

    first = version("def calc(ctx):\n    return ctx.input['a'] + ctx.input['b']\n")
    same = version("def calc(ctx):  # a comment\n    '''Adds.'''\n    return (ctx.input['a']\n            + ctx.input['b'])\n")
    changed = version("def calc(ctx):\n    return ctx.input['a'] * ctx.input['b']\n")
    assert same.code_version == first.code_version, "formatting, comments and docstrings are not a new version"
    assert changed.code_version == first.code_version + 1 and changed.changed
    history = server.get_json("/api/v1/tasks/calc/history")
    assert len(history) >= 2, history


async def _register(w: Worker) -> Any:
    try:
        return await w.register_with_server()
    finally:
        await w.stop()


@pytest.mark.anyio
async def test_a_pipeline_in_code_is_saved_when_its_worker_starts_and_the_clients_follow_it(server: Server) -> None:
    api = Api(server.base)
    w = make(server, "coded")
    coded = Pipeline("coded")

    @coded.task()
    def double(ctx: Context) -> int:
        return int(ctx.input["n"]) * 2

    coded.add("wait", "sleep", duration="10ms", needs="double")

    @coded.task(needs=["double", "wait"])
    async def report(ctx: Context) -> str:
        return f"got {ctx.upstream('double')}"

    coded.attach(w)
    async with running(w):
        await api.until("/api/v1/pipelines/coded", lambda b: True)
        async with AsyncClient(server.base) as client:
            run = (await client.trigger("coded", {"n": 21}))["run"]
            d = await client.wait_for_run(run["id"], timeout=30, interval=0.05)
            assert d["run"]["state"] == "succeeded"
            assert task(d, "report")["output"] == "got 42"
            listed = await client.list_runs(pipeline="coded", limit=5)
            assert listed["runs"][0]["id"] == run["id"]
            assert (await client.set_limit("coded", 2))["limit"] == 2
            assert [u["key"] for u in await client.limits()] == ["coded"]
            await client.delete_limit("coded")
            # Errors say what the server said.
            with pytest.raises(OrbitError) as missing:
                await client.get_run("nope")
            assert missing.value.status in (400, 404)
    # A pipeline file with the same tasks gives the same stored definition (saved under another
    # name, so as not to become a version of this one).
    stored = await api.get("/api/v1/pipelines/coded")
    file = "\n".join(
        [
            "name: coded-file",
            "tasks:",
            "  - {name: double, type: worker, task: coded.double}",
            "  - {name: wait, type: sleep, duration: 10ms, needs: double}",
            "  - {name: report, type: worker, task: coded.report, needs: [double, wait]}",
        ]
    )
    status, from_file = await api.call("POST", "/api/v1/pipelines", {"yaml": file})
    assert status in (200, 201)
    assert {**from_file["definition"], "name": "coded"} == stored["definition"], "the same definition from a file"
    # Saved again by a restart: unchanged, no new version.
    w2 = make(server, "coded")
    coded.attach(w2)
    await _register(w2)
    assert (await api.get("/api/v1/pipelines/coded"))["version"] == stored["version"]


@pytest.mark.anyio
async def test_the_client_signals_approves_reruns_explains_and_draws_the_timeline(server: Server) -> None:
    api = Api(server.base)
    w = make(server, "gate")
    gate = Pipeline("gate")
    gate.add("pay", "wait", event="paid.{{ input.id }}")
    gate.add("review", "approval", message="Ship {{ input.id }}?", approvers=["ann"], needs="pay")

    @gate.task(needs=["pay", "review"])
    def ship(ctx: Context) -> str:
        return f"shipped {ctx.upstream('pay')['amount']} for {ctx.upstream('review')['decidedBy']}"

    gate.attach(w)
    notifier = Pipeline("notifier")

    @notifier.task()
    def notify(ctx: Context) -> bool:
        sent = ctx.send_signal(f"paid.{ctx.input['id']}", {"amount": 3})
        assert isinstance(sent, _Done)
        # Kept, and the attempt carries the run's trace.
        traced = (ctx.traceparent or "").startswith(f"00-{ctx.run_id.replace('-', '')}-")
        return bool(sent.value["kept"]) and traced

    notifier.attach(w)
    async with running(w):
        await api.until("/api/v1/pipelines/notifier", lambda b: True)
        await api.until("/api/v1/pipelines/gate", lambda b: True)
        async with AsyncClient(server.base) as client:
            run = (await client.trigger("gate", {"id": "p-1"}))["run"]["id"]

            async def parked(name: str) -> None:
                for _ in range(300):
                    if task(await client.get_run(run), name)["state"] == "parked":
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"{name} never parked")

            await parked("pay")
            why = await client.why(run, "pay")
            assert "waiting for signal `paid.p-1`" in why["why"][0]["reason"]
            sent = await client.signal("paid.p-1", {"amount": 5})
            assert sent["delivered"] == [{"runId": run, "task": "pay"}]
            assert (await client.signal("paid.p-1", {"amount": 1}, ttl="1m"))["kept"]
            await parked("review")
            with pytest.raises(OrbitError) as refused:
                await client.approve(run, "review", by="bob")
            assert refused.value.status == 403
            decided = await client.approve(run, "review", by="ann", comment="ok")
            assert decided["wake"]["decidedBy"] == "ann"
            done = await client.wait_for_run(run, timeout=30, interval=0.05)
            assert done["run"]["state"] == "succeeded"
            assert task(done, "ship")["output"] == "shipped 5 for ann"
            timeline = await client.timeline(run)
            assert [lane["task"] for lane in timeline["lanes"]] == ["pay", "review", "ship"]
            assert any(seg["kind"] == "parked" for seg in timeline["lanes"][1]["segments"])
            again = await client.rerun(run, "ship")
            assert again["reused"] == ["pay", "review"] and again["run"]["rerunOf"] == run
            redone = await client.wait_for_run(again["run"]["id"], timeout=30, interval=0.05)
            assert task(redone, "ship")["output"] == "shipped 5 for ann"
            # A handler sends a signal before anything waits for it: the next wait takes it.
            sender = (await client.trigger("notifier", {"id": "p-2"}))["run"]["id"]
            assert task(await client.wait_for_run(sender, timeout=30, interval=0.05), "notify")["output"] is True
            second = (await client.trigger("gate", {"id": "p-2"}))["run"]["id"]
            run = second
            await parked("review")
            await client.approve(second, "review", by="ann")
            paid = await client.wait_for_run(second, timeout=30, interval=0.05)
            assert task(paid, "ship")["output"] == "shipped 3 for ann"
    with Client(server.base) as sync:
        kept = sync.signal("nobody.waits", None, ttl="5m")
        assert kept["kept"] and kept["delivered"] == []
        with pytest.raises(OrbitError) as missing:
            sync.reject(run, "review", by="ann")
        assert missing.value.status == 409


def test_the_sync_client(server: Server) -> None:
    server.save({"name": "client-sync", "tasks": [{"name": "nap", "type": "sleep", "duration": "5s"}]})
    with Client(server.base) as client:
        triggered = client.trigger("client-sync", {"k": 1}, idempotency_key="once")
        assert triggered["created"]
        assert not client.trigger("client-sync", {"k": 1}, idempotency_key="once")["created"], "the idempotency key returned the same run"
        run = triggered["run"]["id"]
        assert client.get_run(run, task_limit=1)["tasksPage"]["limit"] == 1
        assert client.cancel(run)["state"] == "cancelled"
        assert client.wait_for_run(run, timeout=10)["run"]["state"] == "cancelled"
        retried = client.retry(run)
        assert retried["requeued"], retried
        assert client.list_runs(pipeline="client-sync")["runs"][0]["id"] == run
        client.cancel(run)
        with pytest.raises(OrbitError) as refused:
            client.trigger("no-such-pipeline")
        assert refused.value.status == 404 and refused.value.code
        # Named limits of concurrency keys (a key that needs escaping in a path).
        assert client.set_limit("api/eu west", 4) == {"key": "api/eu west", "running": 0, "runsRunning": 0, "limit": 4}
        assert [u["key"] for u in client.limits()] == ["api/eu west"]
        client.delete_limit("api/eu west")
        assert client.limits() == []
        with pytest.raises(OrbitError) as gone:
            client.delete_limit("api/eu west")
        assert gone.value.status == 404


@pytest.mark.anyio
async def test_a_fatal_error_is_not_retried(server: Server) -> None:
    api = Api(server.base)
    w = make(server, "fatal")

    @w.task("fatal")
    def fatal(ctx: Context) -> None:
        raise Fatal("no such customer")

    await api.save({"name": "fatal", "tasks": [{"name": "fatal", "type": "worker", "retry": {"max_attempts": 5, "initial": "10ms"}}]})
    async with running(w):
        d = await api.settled(await api.trigger("fatal", {}))
    assert task(d, "fatal")["state"] == "dead"
    assert task(d, "fatal")["attempt"] == 1
    assert task(d, "fatal")["error"] == "no such customer"


@pytest.mark.anyio
async def test_retry_after_waits_without_spending_a_retry(server: Server) -> None:
    api = Api(server.base)
    w = make(server, "quota")
    calls: list[float] = []

    @w.task("quota")
    def quota(ctx: Context) -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RetryAfter("quota exceeded", 0.3)
        return "done"

    # No retries at all: only attempts that do not count can come back.
    await api.save({"name": "quota", "tasks": [{"name": "quota", "type": "worker", "retry": {"max_attempts": 1}}]})
    async with running(w):
        d = await api.settled(await api.trigger("quota", {}))
    assert task(d, "quota")["state"] == "succeeded", d
    assert task(d, "quota")["output"] == "done"
    assert [round(b - a, 1) >= 0.3 for a, b in zip(calls, calls[1:])] == [True, True], calls
    attempts = await api.get(f"/api/v1/task-runs/{task(d, 'quota')['id']}")
    assert [a["outcome"] for a in attempts["attempts"]] == ["throttled", "throttled", "succeeded"]


@pytest.mark.anyio
async def test_a_handler_mapped_over_a_list_gets_one_element_each(server: Server) -> None:
    api = Api(server.base)
    w = make(server, "mapper")

    @w.task("double")
    def double(ctx: Context) -> int:
        return int(ctx.input) * 2

    await api.save({"name": "mapped", "tasks": [
        {"name": "double", "type": "worker", "for_each": "{{ input.numbers }}"},
        {"name": "sum", "type": "sleep", "duration": "0s", "needs": ["double"]},
    ]})
    async with running(w):
        d = await api.settled(await api.trigger("mapped", {"numbers": list(range(25))}))
    assert d["run"]["state"] == "succeeded", d
    assert task(d, "double")["output"] == [n * 2 for n in range(25)]
    assert sum(c["count"] for c in d["children"]) == 25


def test_the_models_are_what_the_servers_openapi_document_describes() -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "gen_models.py"
    assert subprocess.run([sys.executable, str(script), "--check"]).returncode == 0


@pytest.mark.anyio
async def test_a_stop_hands_running_attempts_back_after_the_grace(server: Server) -> None:
    api = Api(server.base)
    w = Worker(server.base, "handback", KEY, concurrency=2, grace=0.3)
    finished: list[str] = []

    @w.task("handback")
    async def quick_or_stuck(ctx: Context) -> str:
        await asyncio.sleep(0.1 if ctx.input["quick"] else 60)
        finished.append(ctx.input["name"])
        return "done"

    await api.save({"name": "handback", "tasks": [{"name": "handback", "type": "worker", "retry": {"max_attempts": 2, "initial": "10ms"}}]})
    async with running(w):
        quick = await api.trigger("handback", {"quick": True, "name": "quick"})
        stuck = await api.trigger("handback", {"quick": False, "name": "stuck"})
        await api.until(f"/api/v1/runs/{stuck}", lambda b: b["tasks"][0]["state"] == "running")
        await api.until(f"/api/v1/runs/{quick}", lambda b: b["tasks"][0]["state"] == "running")
    # Stopped: the quick attempt finished within the grace, the stuck one was handed back.
    assert finished == ["quick"]
    assert (await api.settled(quick))["run"]["state"] == "succeeded"
    detail = await api.get(f"/api/v1/runs/{stuck}")
    attempts = (await api.get(f"/api/v1/task-runs/{detail['tasks'][0]['id']}"))["attempts"]
    assert attempts[0]["error"] == "the worker stopped before the attempt finished", attempts
    assert detail["tasks"][0]["state"] in ("ready", "running"), "handed back to be retried"
    await api.call("POST", f"/api/v1/runs/{stuck}/cancel")


@pytest.mark.anyio
async def test_the_asgi_app_in_a_real_asgi_server(server: Server) -> None:
    import uvicorn
    from support import free_port

    api = Api(server.base)
    w = make(server, "asgi")

    @w.task("asgi")
    def shout(ctx: Context) -> str:
        return str(ctx.input["word"]).upper()

    port = free_port()
    app = w.asgi_app(public_url=f"http://127.0.0.1:{port}/hooks/orbit")
    host = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    serving = asyncio.create_task(host.serve())
    try:
        # Registered on the ASGI server's startup with the URL it was given: the push reaches it.
        await api.until("/api/v1/services", lambda b: any(s.get("service") == "asgi" for s in b))
        await api.save({"name": "asgi", "tasks": [{"name": "asgi", "type": "worker"}]})
        d = await api.settled(await api.trigger("asgi", {"word": "pushed"}))
        assert task(d, "asgi")["output"] == "PUSHED"
        # A request without this secret's task token is refused and runs nothing.
        async with httpx_client() as http:
            refused = await http.post(f"http://127.0.0.1:{port}/hooks/orbit", json={"taskRunId": "x", "token": "y"}, headers={"authorization": "Bearer y"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
            assert (await http.get(f"http://127.0.0.1:{port}/hooks/orbit")).status_code == 405
    finally:
        host.should_exit = True
        await serving
    assert w._http is None, "the ASGI server's shutdown stopped the worker"


def httpx_client() -> Any:
    import httpx

    return httpx.AsyncClient(timeout=10)
