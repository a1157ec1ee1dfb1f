"""What a handler returns and raises, and how a task is registered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from .context import Context

Json = Any
"""A JSON value: None, bool, int, float, str, list or dict of them."""

Handler = Callable[["Context"], Union[Any, Awaitable[Any]]]
"""A task's code: `def` or `async def`, taking the attempt's context."""

KeyFunction = Callable[[Any, Any], str]
"""An idempotency key built from the input and the code version: `lambda input, v: f"v{v}-{input['id']}"`."""


@dataclass
class TaskResult:
    """A result that also chooses which of the task's `allowed_next` run."""

    output: Json = None
    run_next: list[str] | None = None


class Fatal(Exception):
    """Raise it for a failure retrying cannot fix: the task goes to the dead-letter queue at once."""


class RetryAfter(Exception):
    """Raise it when the task should be tried again after `seconds` (a quota, an upstream's
    `Retry-After`): it waits that long and does not spend one of its retries."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = max(0.0, float(seconds))


class LeaseLost(Exception):
    """The attempt no longer holds its task (its lease expired or the run was cancelled): stop;
    nothing it sends counts any more."""


class OrbitError(Exception):
    """A request the orchestrator refused: `status` and the error's `code`."""

    def __init__(self, message: str, status: int, code: str | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body


@dataclass
class TaskOptions:
    """How a task is registered (docs/worker-protocol.md §1). Times are in seconds."""

    allowed_next: list[str] = field(default_factory=list)
    idempotency_key: str | KeyFunction | None = None
    retries: int | None = None
    timeout: float | None = None
    heartbeat_interval: float | None = None
    code_version: str | None = None


@dataclass
class RegisteredTask:
    name: str
    handler: Handler
    options: TaskOptions
    code_hash: str
    is_async: bool


@dataclass
class RegisteredVersion:
    """What the orchestrator answered a registration with, per task."""

    name: str
    code_version: int
    changed: bool
