"""FlowError, and the helpers that make every error point at the user's code.

There is one exception type for everything a user can get wrong in a flow:

    Exception
     └── FlowError      bad declaration, invalid flow file, a user function
                        that raised or returned the wrong thing, unreadable
                        input. ``.step`` is the step's name (or None),
                        ``.where`` the "file:line" the step was declared at.

Messages follow one pattern: which step (name, kind, where it was declared),
what went wrong (naming the user's function by file and line, the value and
its type), and what to do. Exceptions raised by user functions are chained
(``raise FlowError(...) from err``) so the original traceback is kept.

Example:
    >>> err = FlowError("step 'm' (map, declared at f.py:3) failed", step="m", where="f.py:3")
    >>> err.step, err.where
    ('m', 'f.py:3')
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
from typing import Any, NamedTuple

REPR_LIMIT = 200
_NODES_DIR = os.path.dirname(os.path.abspath(__file__))
_inside_nodes: dict[str, bool] = {}


class FlowError(Exception):
    """Something is wrong with a flow: its declaration, its file, or its data.

    Attributes:
        step: name of the step at fault, if any.
        where: "file:line" where that step (or the flow) was declared, if known.
    """

    def __init__(self, message: str, *, step: str | None = None, where: str | None = None):
        super().__init__(message)
        self.step = step
        self.where = where


def short_path(filename: str) -> str:
    """``filename`` relative to the working directory when it lies below it."""
    if filename.startswith("<") or not os.path.isabs(filename):
        return filename
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


def user_location() -> tuple[str, int]:
    """(filename, line) of the innermost frame outside the ``nodes`` package.

    Called when a step is declared, so errors can name the line that declared it.
    """
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        inside = _inside_nodes.get(filename)
        if inside is None:
            inside = _inside_nodes[filename] = (
                os.path.dirname(os.path.abspath(filename)) == _NODES_DIR
            )
        if not inside:
            return filename, frame.f_lineno
        frame = frame.f_back
    return "<unknown>", 0


def format_location(filename: str, line: int) -> str:
    """``"file:line"`` for messages."""
    return f"{short_path(filename)}:{line}"


def describe_fn(fn: Any) -> str:
    """Name a user callable with its file and line, e.g. ``"<lambda> at flow.py:5"``.

    Lambdas also show their source line when it is known. Built-ins (``str.split``)
    have no file and are shown as ``"str.split (built-in)"``.
    """
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    code = getattr(target, "__code__", None)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    name = name.rpartition(".<locals>.")[2] if isinstance(name, str) else None
    if isinstance(target, type):  # a class called on each record: point at its __init__
        code = getattr(target.__init__, "__code__", None)
        if code is None or code.co_filename == "<string>":  # built-in, or generated
            return f"{name} (class)" if code else f"{name} (built-in)"
    elif code is None and not hasattr(target, "__qualname__"):
        call = getattr(type(target), "__call__", None)
        code = getattr(call, "__code__", None)
        name = type(target).__qualname__.rpartition(".<locals>.")[2] + " instance"
    name = name or safe_repr(target, 60)
    if code is None:
        return f"{name} (built-in)"
    text = f"{name} at {format_location(code.co_filename, code.co_firstlineno)}"
    if name.endswith("<lambda>"):
        line = linecache.getline(code.co_filename, code.co_firstlineno).strip()
        if line:
            text += f" (`{line if len(line) <= 80 else line[:77] + '...'}`)"
    return text


def safe_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters; never raises."""
    try:
        text = repr(value)
    except Exception as err:  # a user type whose __repr__ is broken
        text = f"<{type(value).__name__} object; repr() raised {type(err).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def typed(value: Any) -> str:
    """``"int 42"``: a value with its type, for messages."""
    return f"{type(value).__name__} {safe_repr(value, 80)}"


class StepRef(NamedTuple):
    """Who a message is about: a step's name, kind and declaration site.

    Sources and sinks carry one once their step is declared, so errors raised
    while reading or writing name the step too.
    """

    name: str
    kind: str
    where: str

    @property
    def label(self) -> str:
        """``"step 'parse' (map, declared at flow.py:7)"``."""
        return f"step '{self.name}' ({self.kind}, declared at {self.where})"

    def error(self, message: str) -> FlowError:
        """A FlowError ``"{label}: {message}"`` with step and where set."""
        return FlowError(f"{self.label}: {message}", step=self.name, where=self.where)


def callback_error(
    step: StepRef, fn: Any, record: Any, err: BaseException, hint: str = "",
    what: str = "record",
) -> FlowError:
    """The FlowError for a user function that raised on a record.

    Args:
        step: the step the function belongs to.
        fn: the user's function.
        record: the input it failed on (shown as a truncated repr).
        err: what it raised; the caller chains it with ``raise ... from err``.
        hint: an extra sentence saying what to do, if there is one.
        what: what ``record`` is ("record", "index", "key and value", ...).

    Returns:
        A FlowError whose message names all of the above.
    """
    message = (
        f"{step.label} failed: {describe_fn(fn)} raised {type(err).__name__}: {err}\n"
        f"  {what}: {safe_repr(record)}"
    )
    if hint:
        message += f"\n  {hint}"
    return FlowError(message, step=step.name, where=step.where)
