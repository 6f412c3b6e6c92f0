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

from datetime import datetime
from typing import Any

import msgpack

from nodes.eventtime import to_datetime, to_ms
from nodes.windows import Windowed

WINDOWED = 1
"""The msgpack extension type of a Windowed."""


def default(value: Any) -> Any:
    """msgpack's ``default``: a Windowed as extension type WINDOWED."""
    if type(value) is Windowed:
        body = msgpack.packb([to_ms(value.start), to_ms(value.end), value.value],
                           use_bin_type=True, datetime=True, default=default)
        return msgpack.ExtType(WINDOWED, body)
    raise TypeError(f"cannot serialise an object of type {type(value).__name__}: records"
                    " that leave a step must be made of None, bool, int, float, str, bytes,"
                    " lists, tuples, dicts, aware datetimes and Windowed values")


def ext_hook(code: int, data: bytes) -> Any:
    """msgpack's ``ext_hook``: extension type WINDOWED back into a Windowed."""
    if code == WINDOWED:
        start, end, value = unpack(data)
        return Windowed(to_datetime(start), to_datetime(end), value)
    return msgpack.ExtType(code, data)


pack = msgpack.Packer(use_bin_type=True, datetime=True, default=default).pack
"""msgpack of ``value`` (raises TypeError or ValueError for what cannot go)."""


def unpack(data: bytes, use_list: bool = False) -> Any:
    """What :func:`pack` packed (arrays as tuples, or lists with ``use_list``)."""
    return msgpack.unpackb(data, raw=False, use_list=use_list, strict_map_key=False,
                           timestamp=3, ext_hook=ext_hook)


def json_default(value: Any) -> Any:
    """``json.dumps``' ``default``: an aware datetime as ISO 8601, a Windowed as
    ``{"start", "end", "value"}`` (ISO 8601 times)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if type(value) is Windowed:
        return {"start": value.start.isoformat(), "end": value.end.isoformat(),
                "value": value.value}
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
