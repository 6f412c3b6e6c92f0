"""Shared fixtures, and which tests are ``slow``.

One name per kind of cluster:

- ``cluster``: real daemons, processes on 127.0.0.1 (:class:`daemons.Cluster`);
- ``make_replica_cluster``: the replication simulation on a MemoryNetwork and a
  FakeClock (:class:`replicacluster.ReplicaCluster`);
- the membership simulation, :class:`simcluster.SimCluster` (no fixture: its tests
  build one per run).

Slow tests: every test using ``cluster`` is marked ``slow`` here, by
:func:`pytest_collection_modifyitems`; the others that start daemons (through
scripts) or run over about 3 s on a 2-core machine carry ``@pytest.mark.slow`` (or a
module's ``pytestmark``) themselves. ``scripts/test -m "not slow"`` skips them all.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import Cluster
from replicacluster import ReplicaCluster


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that starts real daemons through ``cluster``."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@contextlib.contextmanager
def _uncaptured(config: pytest.Config) -> Iterator[None]:
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
    else:
        with capman.global_and_fixture_disabled():
            yield


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A :class:`~daemons.Cluster` whose daemons all stop at the end, pass or fail; on a
    failure, the tail of each daemon's log goes to stderr."""
    failed_before = request.session.testsfailed
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()
        if request.session.testsfailed > failed_before and c.daemons:
            # The failure report is already out: write past the capture, straight to stderr.
            with _uncaptured(request.config):
                sys.stderr.write(f"\n----- daemon logs of {request.node.nodeid}\n"
                                 f"{c.log_tails()}\n")
                sys.stderr.flush()


@pytest.fixture
def make_replica_cluster(tmp_path: Path) -> Iterator[Any]:
    """``make_replica_cluster(names, **options)``: a ReplicaCluster in tmp_path, closed
    after the test."""
    made: list[ReplicaCluster] = []

    def make(names: list[str], **options: Any) -> ReplicaCluster:
        made.append(ReplicaCluster(tmp_path, names, **options))
        return made[-1]

    yield make
    for c in made:
        c.close()
