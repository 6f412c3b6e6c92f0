"""Keyed operators: the stateful head of a stage.

Each keyed step becomes a Head that owns one partition's state, a dict
``key -> state``, and emits a changelog: one ``(key, result)`` per key
whose result was updated in the batch (``stateful_map`` instead emits one
``(key, output)`` per record).

count, sum and reduce are *combinable*: the sending side pre-aggregates its
records into one ``(key, partial)`` per key (``new_partials`` + ``combine``,
merged across all the batches of a commit), and ``apply`` merges partials
into the state. fold and stateful_map see every record, in order.

State values: count and sum keep ints/floats (msgpack-serialisable by
construction; sum checks its values). reduce, fold and stateful_map keep
what the user's function returns: making it msgpack-serialisable (for the
daemon to store and replicate) is the user's responsibility.

Example:
    >>> from nodes.errors import StepRef
    >>> head = Count(StepRef("count", "count", "f.py:1"))
    >>> partials = head.new_partials()
    >>> head.combine(partials, ["a", "b", "a"], [None, None, None])
    >>> state = {"a": 10}
    >>> head.apply(list(partials.items()), state, set())
    [('a', 12), ('b', 1)]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from nodes.errors import FlowError, StepRef, callback_error, describe_fn, typed

NUMBERS = frozenset({int, float, bool})
_first, _second = itemgetter(0), itemgetter(1)
Records = list


class Head:
    """Base class: a keyed operator applied to one partition's state.

    Attributes:
        partials: True if senders combine records into partials (count, sum,
            reduce); the stage's input records are then (key, partial).
    """

    partials = False

    def __init__(self, ref: StepRef, fn: Callable | None = None, init: Any = None):
        self.ref, self.fn, self.init = ref, fn, init

    def new_partials(self) -> dict:
        """An empty accumulator of partials (combinable heads only)."""
        raise TypeError(f"{self.ref.kind} is not combinable")

    def combine(self, acc: dict, keys: list, values: list) -> None:
        """Fold records (as key and value columns) into the partials ``acc``."""
        raise TypeError(f"{self.ref.kind} is not combinable")

    def combine_records(self, acc: dict, records: Records) -> None:
        """Like ``combine`` for a list of (key, value) tuples."""
        self.combine(acc, list(map(_first, records)), list(map(_second, records)))

    def apply(self, batch: Records, state: dict, touched: set) -> Records:
        """Merge a batch into ``state``; add the keys written to ``touched``.

        Returns:
            The changelog records.
        """
        raise NotImplementedError


class Count(Head):
    """Records per key. Partials are counts."""

    partials = True

    def new_partials(self) -> dict:
        return Counter()

    def combine(self, acc: dict, keys: list, values: list) -> None:
        acc.update(keys)  # Counter counts a list in C

    def combine_records(self, acc: dict, records: Records) -> None:
        acc.update(map(_first, records))

    def apply(self, batch: Records, state: dict, touched: set) -> Records:
        get = state.get
        changed: dict = {}
        for key, n in batch:
            n += get(key, 0)
            state[key] = changed[key] = n
        touched.update(changed)
        return list(changed.items())


class Sum(Head):
    """Sum of int/float values per key. Partials are sums."""

    partials = True

    def new_partials(self) -> dict:
        return {}

    def combine(self, acc: dict, keys: list, values: list) -> None:
        if not NUMBERS.issuperset(map(type, values)):
            self._reject(keys, values)
        get = acc.get
        for key, value in zip(keys, values):
            acc[key] = get(key, 0) + value

    def apply(self, batch: Records, state: dict, touched: set) -> Records:
        get = state.get
        changed: dict = {}
        for key, value in batch:
            state[key] = changed[key] = get(key, 0) + value
        touched.update(changed)
        return list(changed.items())

    def _reject(self, keys: list, values: list) -> None:
        for key, value in zip(keys, values):
            if type(value) not in NUMBERS:
                raise self.ref.error(
                    f"sum() needs int or float values; got {typed(value)} for key {key!r}."
                    " Turn the values into numbers first, e.g. .map_values(float) or"
                    " .map_values(lambda order: order['total'])")


class Reduce(Head):
    """``fn(acc, value) -> acc`` per key; associative, so partials are reductions."""

    partials = True

    def new_partials(self) -> dict:
        return {}

    def combine(self, acc: dict, keys: list, values: list) -> None:
        fn = self.fn
        key = value = None
        try:
            for key, value in zip(keys, values):
                acc[key] = fn(acc[key], value) if key in acc else value
        except Exception as err:
            raise callback_error(self.ref, fn, (key, value), err, what="key and value") from err

    def apply(self, batch: Records, state: dict, touched: set) -> Records:
        fn = self.fn
        changed: dict = {}
        key = value = None
        try:
            for key, value in batch:
                state[key] = changed[key] = fn(state[key], value) if key in state else value
        except Exception as err:
            raise callback_error(self.ref, fn, (key, value), err,
                                 what="key and partial result") from err
        touched.update(changed)
        return list(changed.items())


class _InitError(FlowError):
    """A fold's init failed (kept apart from failures of the fold function)."""


class Fold(Head):
    """``fn(acc, value) -> acc`` per key from ``init`` (a factory or an immutable value)."""

    def apply(self, batch: Records, state: dict, touched: set) -> Records:
        fn, init = self.fn, self.init
        fresh = callable(init)
        changed: dict = {}
        key = value = None
        try:
            for key, value in batch:
                if key in state:
                    acc = state[key]
                elif fresh:
                    acc = self._fresh()
                else:
                    acc = init
                state[key] = changed[key] = fn(acc, value)
        except _InitError:
            raise
        except Exception as err:
            raise callback_error(self.ref, fn, (key, value), err, what="key and value") from err
        touched.update(changed)
        return list(changed.items())

    def _fresh(self) -> Any:
        try:
            return self.init()
        except Exception as err:
            raise _InitError(
                f"{self.ref.label} failed: its init {describe_fn(self.init)} raised"
                f" {type(err).__name__}: {err}; init must be a zero-argument callable making"
                " a fresh accumulator (e.g. list, dict) or an immutable value (e.g. 0)",
                step=self.ref.name, where=self.ref.where) from err


class StatefulMap(Head):
    """``fn(state, value) -> (new_state, output)`` per record; emits (key, output)."""

    def apply(self, batch: Records, state: dict, touched: set) -> Records:
        fn = self.fn
        get, pop = state.get, state.pop
        out: Records = []
        append = out.append
        for key, value in batch:
            try:
                result = fn(get(key), value)
            except Exception as err:
                raise callback_error(self.ref, fn, (key, value), err,
                                     what="key and value") from err
            try:
                new, output = result
            except (TypeError, ValueError) as err:
                raise self.ref.error(
                    f"{describe_fn(fn)} must return a pair (new_state, output); it returned"
                    f" {typed(result)} for key {key!r}. Return e.g. `state, value`"
                    " (new_state None deletes the key's state)") from err
            if new is None:
                pop(key, None)
            else:
                state[key] = new
            append((key, output))
        touched.update(map(_first, batch))
        return out


def make_head(step: Any) -> Head:
    """The Head for a keyed step (count, sum, reduce, fold, stateful_map)."""
    cls = {"count": Count, "sum": Sum, "reduce": Reduce, "fold": Fold,
           "stateful_map": StatefulMap}[step.kind]
    return cls(step.ref, step.fn, step.arg)
