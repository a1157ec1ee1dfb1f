"""A function-valued idempotency key (`lambda input, v: f"v{v}-{input['orderId']}"`) is turned
into the template the orchestrator evaluates before anything runs, by calling it once with
stand-ins that print as the template's expressions."""

from __future__ import annotations

import json
import re
from typing import Any

from .types import KeyFunction

_MARK = "\x00orbit:"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _StandIn:
    __slots__ = ("_path",)

    def __init__(self, path: str) -> None:
        self._path = path

    def _child(self, key: Any) -> _StandIn:
        if isinstance(key, str) and _IDENT.match(key):
            return _StandIn(f"{self._path}.{key}")
        return _StandIn(f"{self._path}[{json.dumps(key)}]")

    def __getattr__(self, name: str) -> _StandIn:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._child(name)

    def __getitem__(self, key: Any) -> _StandIn:
        return self._child(key)

    def get(self, key: Any, default: Any = None) -> _StandIn:
        return self._child(key)

    def __str__(self) -> str:
        return f"{_MARK}{self._path}\x00"

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return str(self)


def key_template(key: str | KeyFunction) -> str:
    """The template the orchestrator renders: `key` itself, or what the function builds."""
    if isinstance(key, str):
        return key
    try:
        made = key(_StandIn("input"), _StandIn("code_version"))
    except Exception as error:
        raise ValueError(f"idempotency_key: the function must only build a string from the input and the code version ({error})") from error
    if not isinstance(made, str):
        raise ValueError("idempotency_key: the function must return a string built from the input and the code version")
    return re.sub("\x00orbit:([^\x00]*)\x00", r"{{ \1 }}", made)
