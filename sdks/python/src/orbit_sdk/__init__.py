"""Orbit's Python SDK: worker services (sync and asyncio handlers, pull and push), pipelines in
code, local testing and an API client. The wire protocol is docs/worker-protocol.md."""

from .client import AsyncClient, Client
from .context import Context
from .hashing import code_hash
from .idempotency import key_template
from .local import LocalResult, run_local, run_local_async
from .pipeline import Concurrency, Pipeline, RateLimit, handler_name
from .types import Fatal, LeaseLost, OrbitError, RegisteredVersion, RetryAfter, TaskOptions, TaskResult
from .worker import Worker

__all__ = [
    "Concurrency",
    "RateLimit",
    "AsyncClient",
    "Client",
    "Context",
    "Fatal",
    "RetryAfter",
    "LeaseLost",
    "LocalResult",
    "OrbitError",
    "Pipeline",
    "RegisteredVersion",
    "TaskOptions",
    "TaskResult",
    "Worker",
    "code_hash",
    "handler_name",
    "key_template",
    "run_local",
    "run_local_async",
]
