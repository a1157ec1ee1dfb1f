"""Large inputs and outputs move between the worker and object storage directly: a reference
(`{"$orbit_object": {backend, key, size}}`) in the input or an upstream output is fetched from the
URL the assignment grants for it; an output over the server's threshold is PUT to a URL granted
for this attempt's own object, and the callback carries only the reference."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Assignment
    from .worker import Worker


def reference(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or len(value) != 1:
        return None
    inner = value.get("$orbit_object")
    if isinstance(inner, dict) and isinstance(inner.get("backend"), str) and isinstance(inner.get("key"), str):
        return inner
    return None


async def _fetch(worker: Worker, a: Assignment, value: Any) -> Any:
    ref = reference(value)
    if ref is None:
        return value
    name = f"{ref['backend']}/{ref['key']}"
    url = (a.get("objects") or {}).get(name)
    if not url:
        raise RuntimeError(f"the assignment grants no access to object `{name}`")
    async with worker.http.get(worker.resolve(url)) as response:
        if response.status >= 300:
            raise RuntimeError(f"reading object `{name}` was refused: {response.status}")
        return json.loads(await response.read())


async def hydrate(worker: Worker, a: Assignment) -> tuple[Any, dict[str, Any]]:
    """The attempt's input and upstream outputs, with references replaced by their content."""
    if "objects" not in a:
        return a["input"], a["upstream"]
    upstream = {name: await _fetch(worker, a, value) for name, value in a["upstream"].items()}
    return await _fetch(worker, a, a["input"]), upstream


async def store(worker: Worker, a: Assignment, body: bytes) -> dict[str, Any]:
    """Uploads an output's JSON to this attempt's granted object; the reference to call back with."""
    grant = await worker.task_call("/api/v1/grant", a, {"taskRunId": a["taskRunId"]})
    async with worker.http.put(worker.resolve(grant["url"]), data=body, headers={"content-type": "application/json"}) as response:
        if response.status >= 300:
            raise RuntimeError(f"storing the output was refused: {response.status} {await response.text()}")
    return {"$orbit_object": grant["reference"]}
