"""A small client of Orbit's HTTP API, sync (`Client`) and asyncio (`AsyncClient`). Its models
are src/orbit_sdk/models.py, generated from the server's OpenAPI document by
scripts/gen_models.py, so the SDK and the API cannot drift."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, cast
from urllib.parse import quote

import httpx

from .models import KeyUsage, Rerun, Retried, RunDetail, RunPage, RunRecord, Signalled, TaskRunRecord, Timeline, Triggered, WhyAnswer
from .worker import answer

_SETTLED = ("succeeded", "failed", "cancelled")


def _settings(url: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    url = url or os.environ.get("ORBIT_URL")
    if not url:
        raise ValueError("Client: url is required (or set ORBIT_URL)")
    token = token if token is not None else os.environ.get("ORBIT_API_TOKEN")
    return url.rstrip("/") + "/api/v1", {"authorization": f"Bearer {token}"} if token else {}


def _query(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _trigger_body(input: Any, idempotency_key: str | None, priority: int | None) -> dict[str, Any]:
    return {"input": {} if input is None else input, **_query(idempotencyKey=idempotency_key, priority=priority)}


def _answer(method: str, path: str, response: httpx.Response) -> Any:
    return answer(f"{method} {path}", response.status_code, response.content)


def _id(run: str) -> str:
    return quote(run, safe="")


def _decision(decision: str, comment: str | None, by: str | None) -> dict[str, Any]:
    return {"decision": decision, **_query(comment=comment, by=by)}


def _rerun_body(from_task: str, input: Any, upstream: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"from": from_task}
    if input is not None:
        body["input"] = input
    if upstream:
        body["upstream"] = upstream
    return body


class Client:
    """Orbit's API: `Client("http://127.0.0.1:3000", token)` (ORBIT_URL and ORBIT_API_TOKEN when absent)."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.url, headers = _settings(url, token)
        self._http = httpx.Client(headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, self.url + path, json=body, params=params)
        return _answer(method, path, response)

    def trigger(self, pipeline: str, input: Any = None, *, idempotency_key: str | None = None, priority: int | None = None) -> Triggered:
        """Starts a run of a saved pipeline."""
        return cast(Triggered, self._request("POST", f"/pipelines/{_id(pipeline)}/trigger", _trigger_body(input, idempotency_key, priority)))

    def get_run(self, run: str, *, task_state: str | None = None, task_limit: int | None = None, task_offset: int | None = None) -> RunDetail:
        """A run with a page of its task runs."""
        params = _query(taskState=task_state, taskLimit=task_limit, taskOffset=task_offset)
        return cast(RunDetail, self._request("GET", f"/runs/{_id(run)}", params=params))

    def list_runs(self, *, status: str | None = None, pipeline: str | None = None, limit: int | None = None, offset: int | None = None) -> RunPage:
        """Runs, newest first."""
        params = _query(status=status, pipeline=pipeline, limit=limit, offset=offset)
        return cast(RunPage, self._request("GET", "/runs", params=params))

    def cancel(self, run: str) -> RunRecord:
        return cast(RunRecord, self._request("POST", f"/runs/{_id(run)}/cancel"))

    def retry(self, run: str) -> Retried:
        """Puts a failed run's dead and cancelled tasks back in the queue."""
        return cast(Retried, self._request("POST", f"/runs/{_id(run)}/retry"))

    def signal(self, name: str, payload: Any = None, *, ttl: str | None = None) -> Signalled:
        """Sends signal `name`: every `wait` task waiting for it gets `payload` as its output; with none waiting yet, it is kept (`ttl`, e.g. "10m"; 24h by default) for the first that waits."""
        return cast(Signalled, self._request("POST", f"/signals/{_id(name)}", payload, params=_query(ttl=ttl)))

    def approve(self, run: str, task: str, *, comment: str | None = None, by: str | None = None) -> TaskRunRecord:
        """Approves an `approval` task that waits for a decision."""
        return cast(TaskRunRecord, self._request("POST", f"/runs/{_id(run)}/tasks/{_id(task)}/decision", _decision("approve", comment, by)))

    def reject(self, run: str, task: str, *, comment: str | None = None, by: str | None = None) -> TaskRunRecord:
        """Rejects an `approval` task that waits for a decision."""
        return cast(TaskRunRecord, self._request("POST", f"/runs/{_id(run)}/tasks/{_id(task)}/decision", _decision("reject", comment, by)))

    def rerun(self, run: str, from_task: str, *, input: Any = None, upstream: dict[str, Any] | None = None) -> Rerun:
        """Runs a run again from task `from_task`, keeping the outputs of the tasks not downstream of it."""
        return cast(Rerun, self._request("POST", f"/runs/{_id(run)}/rerun", _rerun_body(from_task, input, upstream)))

    def why(self, run: str, task: str | None = None) -> WhyAnswer:
        """Why each task of a run that is not running waits (`orbit why`)."""
        return cast(WhyAnswer, self._request("GET", f"/runs/{_id(run)}/why", params=_query(task=task)))

    def timeline(self, run: str) -> Timeline:
        """A run's timeline: each task's queue wait, attempts, backoffs and parks, critical path marked."""
        return cast(Timeline, self._request("GET", f"/runs/{_id(run)}/timeline"))

    def limits(self) -> list[KeyUsage]:
        """Every named limit of a concurrency key (`orbit limits`)."""
        return cast(list[KeyUsage], self._request("GET", "/limits"))

    def set_limit(self, key: str, limit: int) -> KeyUsage:
        """At most `limit` task runs (or runs) with concurrency key `key` run at once."""
        return cast(KeyUsage, self._request("PUT", f"/limits/{_id(key)}", {"limit": limit}))

    def delete_limit(self, key: str) -> None:
        self._request("DELETE", f"/limits/{_id(key)}")

    def wait_for_run(self, run: str, *, timeout: float = 300.0, interval: float = 0.25) -> RunDetail:
        """Waits until the run succeeded, failed or was cancelled; its detail."""
        end = time.monotonic() + timeout
        while True:
            detail = self.get_run(run)
            if detail["run"]["state"] in _SETTLED:
                return detail
            if time.monotonic() > end:
                raise TimeoutError(f"run {run} is still {detail['run']['state']}")
            time.sleep(interval)


class AsyncClient:
    """`Client` for asyncio: the same methods, awaited."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.url, headers = _settings(url, token)
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        response = await self._http.request(method, self.url + path, json=body, params=params)
        return _answer(method, path, response)

    async def trigger(self, pipeline: str, input: Any = None, *, idempotency_key: str | None = None, priority: int | None = None) -> Triggered:
        return cast(Triggered, await self._request("POST", f"/pipelines/{_id(pipeline)}/trigger", _trigger_body(input, idempotency_key, priority)))

    async def get_run(self, run: str, *, task_state: str | None = None, task_limit: int | None = None, task_offset: int | None = None) -> RunDetail:
        params = _query(taskState=task_state, taskLimit=task_limit, taskOffset=task_offset)
        return cast(RunDetail, await self._request("GET", f"/runs/{_id(run)}", params=params))

    async def list_runs(self, *, status: str | None = None, pipeline: str | None = None, limit: int | None = None, offset: int | None = None) -> RunPage:
        params = _query(status=status, pipeline=pipeline, limit=limit, offset=offset)
        return cast(RunPage, await self._request("GET", "/runs", params=params))

    async def cancel(self, run: str) -> RunRecord:
        return cast(RunRecord, await self._request("POST", f"/runs/{_id(run)}/cancel"))

    async def retry(self, run: str) -> Retried:
        return cast(Retried, await self._request("POST", f"/runs/{_id(run)}/retry"))

    async def signal(self, name: str, payload: Any = None, *, ttl: str | None = None) -> Signalled:
        """Sends signal `name`: every `wait` task waiting for it gets `payload` as its output; with none waiting yet, it is kept (`ttl`, e.g. "10m"; 24h by default) for the first that waits."""
        return cast(Signalled, await self._request("POST", f"/signals/{_id(name)}", payload, params=_query(ttl=ttl)))

    async def approve(self, run: str, task: str, *, comment: str | None = None, by: str | None = None) -> TaskRunRecord:
        """Approves an `approval` task that waits for a decision."""
        return cast(TaskRunRecord, await self._request("POST", f"/runs/{_id(run)}/tasks/{_id(task)}/decision", _decision("approve", comment, by)))

    async def reject(self, run: str, task: str, *, comment: str | None = None, by: str | None = None) -> TaskRunRecord:
        """Rejects an `approval` task that waits for a decision."""
        return cast(TaskRunRecord, await self._request("POST", f"/runs/{_id(run)}/tasks/{_id(task)}/decision", _decision("reject", comment, by)))

    async def rerun(self, run: str, from_task: str, *, input: Any = None, upstream: dict[str, Any] | None = None) -> Rerun:
        """Runs a run again from task `from_task`, keeping the outputs of the tasks not downstream of it."""
        return cast(Rerun, await self._request("POST", f"/runs/{_id(run)}/rerun", _rerun_body(from_task, input, upstream)))

    async def why(self, run: str, task: str | None = None) -> WhyAnswer:
        """Why each task of a run that is not running waits (`orbit why`)."""
        return cast(WhyAnswer, await self._request("GET", f"/runs/{_id(run)}/why", params=_query(task=task)))

    async def timeline(self, run: str) -> Timeline:
        """A run's timeline: each task's queue wait, attempts, backoffs and parks, critical path marked."""
        return cast(Timeline, await self._request("GET", f"/runs/{_id(run)}/timeline"))

    async def limits(self) -> list[KeyUsage]:
        return cast(list[KeyUsage], await self._request("GET", "/limits"))

    async def set_limit(self, key: str, limit: int) -> KeyUsage:
        return cast(KeyUsage, await self._request("PUT", f"/limits/{_id(key)}", {"limit": limit}))

    async def delete_limit(self, key: str) -> None:
        await self._request("DELETE", f"/limits/{_id(key)}")

    async def wait_for_run(self, run: str, *, timeout: float = 300.0, interval: float = 0.25) -> RunDetail:
        end = time.monotonic() + timeout
        while True:
            detail = await self.get_run(run)
            if detail["run"]["state"] in _SETTLED:
                return detail
            if time.monotonic() > end:
                raise TimeoutError(f"run {run} is still {detail['run']['state']}")
            await asyncio.sleep(interval)
