"""How records travel and are stored: msgpack, plus the two types flows emit that
msgpack lacks.

- an aware ``datetime`` goes as msgpack's timestamp and comes back as an aware
  UTC datetime (a naive one is refused: it names no instant);
- a :class:`~nodes.windows.Windowed` goes as extension type 1 holding
  ``[start ms, end ms, value]`` and comes back as a Windowed.

Lists come back as tuples and map keys may be any type (``use_list=False``,
``strict_map_key=False``), as the daemon has always read its records.

Example:
    >>> from datetime import datetime, timezone
    >>> w = Windowed(datetime(2026, 1, 1, tzinfo=timezone.utc),
    ...              datetime(2026, 1, 1, 0, 1, tzinfo=timezone.utc), [1, 2])
    >>> unpack(pack(("k", w))) == ("k", Windowed(w.start, w.end, (1, 2)))
    True
"""

from __future__ import annotations

from typing import Any

import msgpack

from nodes.eventtime import to_datetime, to_ms
from nodes.windows import Windowed

WINDOWED = 1
"""The msgpack extension type of a Windowed."""


def _default(value: Any) -> Any:
    if type(value) is Windowed:
        body = msgpack.packb([to_ms(value.start), to_ms(value.end), value.value],
                           use_bin_type=True, datetime=True, default=_default)
        return msgpack.ExtType(WINDOWED, body)
    raise TypeError(f"cannot serialise an object of type {type(value).__name__}: records"
                    " that leave a step must be made of None, bool, int, float, str, bytes,"
                    " lists, tuples, dicts, aware datetimes and Windowed values")


def _ext(code: int, data: bytes) -> Any:
    if code == WINDOWED:
        start, end, value = unpack(data)
        return Windowed(to_datetime(start), to_datetime(end), value)
    return msgpack.ExtType(code, data)


pack = msgpack.Packer(use_bin_type=True, datetime=True, default=_default).pack
"""msgpack of ``value`` (raises TypeError or ValueError for what cannot go)."""


def unpack(data: bytes) -> Any:
    """What :func:`pack` packed."""
    return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False,
                           timestamp=3, ext_hook=_ext)
