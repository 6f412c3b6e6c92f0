"""Bytewax 0.21 tumbling 1-minute counts per key, for scripts/benchmarks/windows.py to time.

Reads every *.jsonl in $WIN_EVENTS (lines like ``{"ts": 1767225600.123, "k": "k17"}``),
writes "key window_id count" lines into $WIN_OUT and one line per late event into
$WIN_LATE. Windows are aligned to the epoch, so a window's id is its start in
minutes since the epoch (``ts_ms // 60000``). Run with
``python -m bytewax.run bytewax_windows:flow`` from this directory.
"""

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bytewax.operators as op
from bytewax.connectors.files import DirSink, DirSource
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower, count_window

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def event_time(event: dict) -> datetime:
    return datetime.fromtimestamp(event["ts"], tz=timezone.utc)


flow = Dataflow("windows")
lines = op.input("lines", flow, DirSource(Path(os.environ["WIN_EVENTS"]), glob_pat="*.jsonl"))
events = op.map("parse", lines, json.loads)
# Bytewax 0.21's EventClock has no separate max delay: its watermark is the key's
# largest ts less wait_for_system_duration (plus the system time since), so the
# 5 s max delay is that duration.
clock = EventClock(event_time, wait_for_system_duration=timedelta(seconds=5))
counts = count_window("count", events, clock,
                      TumblingWindower(length=timedelta(minutes=1), align_to=EPOCH),
                      key=lambda e: e["k"])
op.output("out", op.map("format", counts.down,
                        lambda kv: (kv[0], f"{kv[0]} {kv[1][0]} {kv[1][1]}")),
          DirSink(Path(os.environ["WIN_OUT"]), file_count=4))
op.output("late", op.map("format_late", counts.late, lambda kv: (kv[0], kv[0])),
          DirSink(Path(os.environ["WIN_LATE"]), file_count=1))
