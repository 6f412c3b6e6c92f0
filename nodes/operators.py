"""Stateless operators compiled into batch functions.

``compile_stateless(step)`` returns ``run(batch) -> list``: one pass over the
whole batch, driven from C (``map``, ``filter``, ``itertools.chain``), so the
only per-record Python work is the user's own function. ``key_by`` returns
the list of keys (the plan pairs them with the batch, or hands both columns
to a combiner without building tuples).

When a user function raises, the offending record is found from how far the
batch iterator got (``operator.length_hint``), which costs nothing on the
normal path; the FlowError names the step, the function by file and line,
the exception and the record, and chains the original exception.

Example:
    >>> from nodes import Flow, sources, sinks
    >>> flow = Flow("ops")
    >>> s = flow.source(sources.generate(3, str)).flat_map(lambda r: [r, r])
    >>> s.sink(sinks.publish())
    >>> compile_stateless(s.step)(["a", "b"])
    ['a', 'a', 'b', 'b']
"""

from __future__ import annotations

import inspect
from collections import Counter, deque
from collections.abc import Callable
from itertools import chain, islice
from operator import itemgetter, length_hint
from typing import Any

from nodes.errors import StepRef, callback_error, describe_fn, safe_repr, typed

KEY_TYPES = frozenset({str, bytes})
Batch = list
_first, _second = itemgetter(0), itemgetter(1)


def compile_stateless(step: Any) -> Callable[[Batch], Batch]:
    """The batch function of a map, filter, flat_map, inspect, map_values or key_by step.

    Args:
        step: a ``nodes.flow.Step`` of one of those kinds.

    Returns:
        ``run(batch) -> list``: the step's outputs for the whole batch (for
        key_by: the keys, one per record).

    Raises:
        KeyError: the step is not stateless.
    """
    return _COMPILERS[step.kind](step.ref, step.fn)


def _offender(batch: Batch, it: Any) -> Any:
    """The record a C-driven loop over ``it = iter(batch)`` was processing when it raised."""
    return batch[len(batch) - length_hint(it) - 1]


def _map(ref: StepRef, fn: Callable) -> Callable[[Batch], Batch]:
    def run(batch: Batch) -> Batch:
        it = iter(batch)
        try:
            return list(map(fn, it))
        except Exception as err:
            raise callback_error(ref, fn, _offender(batch, it), err) from err
    return run


def call_each(ref: StepRef, fn: Callable) -> Callable[[Batch], Batch]:
    """``run(batch) -> [fn(record) for record in batch]``, with the step's error messages
    (what timed filters and flat_maps build on)."""
    return _map(ref, fn)


def _filter(ref: StepRef, fn: Callable) -> Callable[[Batch], Batch]:
    def run(batch: Batch) -> Batch:
        it = iter(batch)
        try:
            return list(filter(fn, it))
        except Exception as err:
            raise callback_error(ref, fn, _offender(batch, it), err) from err
    return run


def _flat_map(ref: StepRef, fn: Callable) -> Callable[[Batch], Batch]:
    def run(batch: Batch) -> Batch:
        it = iter(batch)
        try:
            return list(chain.from_iterable(map(fn, it)))
        except Exception as err:
            hint = ""
            if isinstance(err, TypeError) and "not iterable" in str(err):
                hint = ("flat_map's function must return an iterable (list, tuple, generator)"
                        " of output records; return [] for none")
            raise callback_error(ref, fn, _offender(batch, it), err, hint) from err
    return run


def _inspect(ref: StepRef, fn: Callable) -> Callable[[Batch], Batch]:
    def run(batch: Batch) -> Batch:
        it = iter(batch)
        try:
            deque(map(fn, it), maxlen=0)
        except Exception as err:
            raise callback_error(ref, fn, _offender(batch, it), err) from err
        return batch
    return run


def _map_values(ref: StepRef, fn: Callable) -> Callable[[Batch], Batch]:
    def run(batch: Batch) -> Batch:
        it = iter(list(map(_second, batch)))
        try:
            values = list(map(fn, it))
        except Exception as err:
            raise callback_error(ref, fn, _offender(batch, it), err) from err
        return list(zip(map(_first, batch), values))
    return run


def _key_by(ref: StepRef, fn: Callable) -> Callable[[Batch], Batch]:
    def run(batch: Batch) -> Batch:
        it = iter(batch)
        try:
            keys = list(map(fn, it))
        except Exception as err:
            raise callback_error(ref, fn, _offender(batch, it), err) from err
        if not KEY_TYPES.issuperset(map(type, keys)):
            _normalise_keys(ref, fn, batch, keys)
        return keys
    return run


def compile_counting_key_by(step: Any) -> Callable[[Batch, Counter], None]:
    """A key_by fused with the count combiner after it: ``run(batch, counts)``.

    Counts ``fn(record)`` for every record straight into the Counter ``counts``
    (one C loop, no list of keys), then checks the types of the keys that are
    new in ``counts`` only: the hot path of a word count.

    Raises:
        FlowError: as ``compile_stateless`` for a key_by.
    """
    ref, fn = step.ref, step.fn
    identity = is_identity(fn)

    def run(batch: Batch, counts: Counter) -> None:
        before = len(counts)
        it = iter(batch)
        try:
            counts.update(it if identity else map(fn, it))
        except Exception as err:
            record = _offender(batch, it)
            try:  # the error path only: was it fn, or its key (unhashable)?
                key = fn(record)
            except Exception:
                raise callback_error(ref, fn, record, err) from err
            _normalise_keys(ref, fn, [record], [key])
            raise
        grew = len(counts) - before
        if grew and not KEY_TYPES.issuperset(map(type, islice(reversed(counts), grew))):
            _normalise_new_keys(ref, fn, batch, counts, grew)
    return run


def is_identity(fn: Callable) -> bool:
    """Whether ``fn`` is a plain function that returns its one argument, as
    ``lambda w: w`` (then counting need not call it once per record).

    >>> is_identity(lambda w: w), is_identity(lambda w: w.lower()), is_identity(str)
    (True, False, False)
    """
    code = getattr(fn, "__code__", None)
    return (code is not None and code.co_code == _IDENTITY.co_code
            and code.co_argcount == 1 and not code.co_kwonlyargcount
            and not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)
            and not getattr(fn, "__defaults__", None))


_IDENTITY = (lambda record: record).__code__


def _normalise_new_keys(ref: StepRef, fn: Callable, batch: Batch, counts: Counter,
                        grew: int) -> None:
    """Replace str/bytes subclass keys among the ``grew`` newest; reject other types."""
    for key in list(islice(reversed(counts), grew)):
        if type(key) in KEY_TYPES:
            continue
        if isinstance(key, (str, bytes)):
            n = counts.pop(key)
            counts[str.__str__(key) if isinstance(key, str) else bytes(key)] += n
            continue
        record = next((r for r in batch if type(fn(r)) is type(key) and fn(r) == key), None)
        _normalise_keys(ref, fn, [record], [key])


def _normalise_keys(ref: StepRef, fn: Callable, batch: Batch, keys: list) -> None:
    """Turn str/bytes subclasses into plain str/bytes in place; reject anything else."""
    for i, key in enumerate(keys):
        if type(key) in KEY_TYPES:
            continue
        if isinstance(key, str):
            keys[i] = str.__str__(key)
        elif isinstance(key, bytes):
            keys[i] = bytes(key)
        else:
            raise ref.error(
                f"key_by needs a function returning str or bytes; {describe_fn(fn)} returned"
                f" {typed(key)} for record {safe_repr(batch[i])} — wrap it in str(), e.g."
                " .key_by(lambda r: str(...))")


_COMPILERS = {
    "map": _map,
    "filter": _filter,
    "flat_map": _flat_map,
    "inspect": _inspect,
    "map_values": _map_values,
    "key_by": _key_by,
}
