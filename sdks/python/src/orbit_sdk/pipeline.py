"""Pipelines in code: the same document a pipeline file holds, with handler tasks backed by the
worker they are attached to. Saved on the server when the worker starts (a new version only when
it changed)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from typing_extensions import NotRequired, TypedDict

from .types import Handler, KeyFunction, TaskOptions

if TYPE_CHECKING:
    from .worker import Worker

H = TypeVar("H", bound=Handler)
Duration = str | float
"""`"30s"`, `"10ms"`, or a number of seconds."""


class Concurrency(TypedDict):
    """At most `limit` attempts of tasks with the same rendered `key` run at once, on every
    worker: `{"key": "{{ input.customerId }}", "limit": 2}` (the key may use `input` and `run`).
    Without `limit`, the key's named limit (`orbit limits set KEY N`) applies."""

    key: str
    limit: NotRequired[int]


class RateLimit(TypedDict):
    """At most `limit` attempts of tasks with the same rendered `key` start in any `per` (a
    token bucket shared by every worker): `{"key": "openai", "per": "1s", "limit": 10}`."""

    key: str
    per: Duration
    limit: int


def handler_name(pipeline: str, task: str) -> str:
    """The registered task that backs a handler task: `<pipeline>.<task>`."""
    return f"{pipeline}.{task}"


def _duration(value: Duration) -> str:
    return value if isinstance(value, str) else f"{round(value * 1000)}ms"


@dataclass
class _Task:
    name: str
    fields: dict[str, Any]
    handler: Handler | None = None
    options: TaskOptions = field(default_factory=TaskOptions)


class Pipeline:
    """A pipeline defined in Python: `@pipeline.task(needs=[...])` handlers run by the worker it is
    attached to, and built-in tasks (`shell`, `http`, `sleep`, `wait`, `approval`, `script`, `worker`,
    `pipeline`) by `add`."""

    def __init__(self, name: str, *, schedule: str | None = None, description: str | None = None, concurrency: Concurrency | None = None, output: Any = None) -> None:
        """`concurrency` caps the runs with the same rendered key running at once; the others
        wait pending. `output` is what a run gives a parent run that runs this pipeline
        (`add("resize", "pipeline", pipeline="thumbs")`): a template over `input`, `tasks` and
        `run`; by default the outputs of the tasks nothing needs."""
        self.name = name
        self.schedule = schedule
        self.description = description
        self.concurrency = concurrency
        self.output = output
        self._tasks: dict[str, _Task] = {}

    def task(
        self,
        name: str | None = None,
        *,
        needs: str | list[str] | None = None,
        retry: dict[str, Any] | None = None,
        timeout: Duration | None = None,
        priority: int | None = None,
        allowed_next: list[str] | None = None,
        input: Any = None,
        idempotency_key: str | KeyFunction | None = None,
        retries: int | None = None,
        heartbeat_interval: float | None = None,
        code_version: str | None = None,
        concurrency: Concurrency | None = None,
        rate_limit: RateLimit | None = None,
        for_each: str | None = None,
        allow_failures: str | float | None = None,
        fail_fast: bool | None = None,
    ) -> Callable[[H], H]:
        """A task run by the decorated handler (named after it unless `name` is given).
        `retry` is the pipeline file's policy (`{"max_attempts": 3, "initial": "1s"}`). With
        `for_each` the handler runs once per element of the list it renders to, the element as
        its input."""

        def decorate(handler: H) -> H:
            task = name or handler.__name__
            fields = self._fields(needs, retry, timeout, priority, allowed_next, input, concurrency, rate_limit)
            mapped = {"for_each": for_each, "allow_failures": allow_failures, "fail_fast": fail_fast}
            fields.update({k: v for k, v in mapped.items() if v is not None})
            options = TaskOptions(list(allowed_next or []), idempotency_key, retries, None, heartbeat_interval, code_version)
            self._add(_Task(task, {"type": "worker", "task": handler_name(self.name, task), **fields}, handler, options))
            return handler

        return decorate

    def add(
        self,
        name: str,
        type: str,
        *,
        needs: str | list[str] | None = None,
        retry: dict[str, Any] | None = None,
        timeout: Duration | None = None,
        priority: int | None = None,
        concurrency: Concurrency | None = None,
        rate_limit: RateLimit | None = None,
        for_each: str | None = None,
        allow_failures: str | float | None = None,
        fail_fast: bool | None = None,
        **params: Any,
    ) -> Pipeline:
        """A built-in task with its parameters as the pipeline file names them:
        `add("fetch", "http", url="https://…", needs="extract")`. With `for_each` (a template
        that renders to a list, such as `"{{ tasks.list.output.items }}"`) it runs once per
        element, `item` and `index` in its context; `allow_failures` (`"10%"`) and `fail_fast`
        decide its outcome when children fail."""
        mapped = {"for_each": for_each, "allow_failures": allow_failures, "fail_fast": fail_fast}
        fields = self._fields(needs, retry, timeout, priority, None, None, concurrency, rate_limit)
        self._add(_Task(name, {"type": type, **params, **fields, **{k: v for k, v in mapped.items() if v is not None}}))
        return self

    def _fields(self, needs: str | list[str] | None, retry: dict[str, Any] | None, timeout: Duration | None, priority: int | None, allowed_next: list[str] | None, input: Any, concurrency: Concurrency | None, rate_limit: RateLimit | None) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "needs": needs,
            "retry": retry,
            "timeout": None if timeout is None else _duration(timeout),
            "priority": priority,
            "allowed_next": allowed_next,
            "input": input,
            "concurrency": None if concurrency is None else dict(concurrency),
            "rate_limit": None if rate_limit is None else {**rate_limit, "per": _duration(rate_limit["per"])},
        }
        return {k: v for k, v in fields.items() if v is not None}

    def _add(self, task: _Task) -> None:
        if task.name in self._tasks:
            raise ValueError(f"pipeline `{self.name}` already has a task `{task.name}`")
        self._tasks[task.name] = task

    def document(self) -> dict[str, Any]:
        """The stored document (the pipeline file format, as JSON); handler tasks are `type: worker`."""
        doc: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            doc["description"] = self.description
        if self.schedule is not None:
            doc["schedule"] = self.schedule
        if self.concurrency is not None:
            doc["concurrency"] = dict(self.concurrency)
        if self.output is not None:
            doc["output"] = self.output
        doc["tasks"] = [{"name": t.name, **t.fields} for t in self._tasks.values()]
        return doc

    def attach(self, worker: Worker, *, api_token: str | None = None) -> Pipeline:
        """Registers the handlers with `worker`; the pipeline is saved each time it registers."""
        for t in self._tasks.values():
            if t.handler is not None:
                worker.register(handler_name(self.name, t.name), t.handler, t.options)
        token = api_token or os.environ.get("ORBIT_API_TOKEN")

        async def save(w: Worker) -> None:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            async with w.http.post(w.resolve("/api/v1/pipelines"), json=self.document(), headers=headers) as response:
                if response.status >= 300:
                    raise RuntimeError(f"saving pipeline `{self.name}`: {response.status} {await response.text()}")

        worker.hooks.append(save)
        return self
