"""A handler's code hash: the SHA-256 of its syntax tree (`ast`), so comments, docstrings,
formatting, decorators and the function's name do not make a new code version; a change to what
it does (or to a literal in it) does."""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

_Function = (ast.FunctionDef, ast.AsyncFunctionDef)


def _strip(node: ast.AST) -> ast.AST:
    if isinstance(node, _Function):
        node.decorator_list = []
        node.name = ""
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return node


def _tree(fn: Callable[..., Any]) -> ast.AST | None:
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        module = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    name = getattr(fn, "__name__", "")
    for node in ast.walk(module):
        if isinstance(node, _Function) and node.name == name:
            return _strip(node)
    lambdas = [node for node in ast.walk(module) if isinstance(node, ast.Lambda)]
    # One lambda on the lines inspect returns is this one; with several, the whole statement.
    return lambdas[0] if len(lambdas) == 1 else module


def code_hash(fn: Callable[..., Any]) -> str:
    """The hash the worker registers for `fn` (its code version changes when this does)."""
    tree = _tree(inspect.unwrap(fn))
    if tree is not None:
        text = ast.dump(tree, annotate_fields=True, include_attributes=False)
    else:
        # No source to read (defined in a REPL or by exec): the compiled code stands in.
        code = inspect.unwrap(fn).__code__
        text = repr((code.co_code, code.co_consts, code.co_names, code.co_varnames))
    return hashlib.sha256(text.encode()).hexdigest()
