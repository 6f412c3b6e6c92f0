"""Multi-process tests: real daemons on 127.0.0.1, real UDP and ZeroMQ, ``--preset local``.

Each test starts its own daemons through the ``cluster`` fixture (tests/conftest.py),
which stops them all (by pid) however the test ends.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time

import msgpack
import pytest
import zmq
from daemons import Cluster, cli, free_port, wait_for, zmq_requests

from daemon.cli import load_secret
from daemon.config import PROTOCOL_VERSION, Config
from daemon.errors import ClientError
from daemon.wire import Codec, MessageType

pytestmark = pytest.mark.timeout(60)

FIVE = ["n0", "n1", "n2", "n3", "n4"]
DETECTION_LIMIT = 1.5
"""Seconds within which every member must know a SIGKILLed member is dead (preset local)."""


def statuses_of(cluster: Cluster, target: str, observers: list[str]) -> dict[str, str | None]:
    """{observer: status of ``target`` in its view}."""
    return {o: cluster.statuses(o, timeout=0.5).get(target) for o in observers}


def seen_dead(cluster: Cluster, target: str, observers: list[str], since: float,
              limit: float = 10.0) -> dict[str, float]:
    """Seconds from ``since`` until each observer's answer first shows ``target`` dead.
    Each observer is polled on a thread of its own, so polling one does not delay
    seeing another."""
    seen: dict[str, float] = {}

    def watch(observer: str) -> None:
        while time.monotonic() - since < limit:
            try:
                if cluster.statuses(observer, timeout=0.5).get(target) == "dead":
                    seen[observer] = time.monotonic() - since
                    return
            except ClientError:
                pass
            time.sleep(0.01)

    threads = [threading.Thread(target=watch, args=(o,), daemon=True) for o in observers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(limit + 1.0)
    return seen


# ---------------------------------------------------------------- membership


def test_five_daemons_converge(cluster: Cluster) -> None:
    cluster.start_many(FIVE)
    for name in FIVE:
        members = cluster.members(name)
        assert sorted(m["name"] for m in members) == FIVE
        assert {m["status"] for m in members} == {"alive"}
        assert {m["name"]: m["address"] for m in members} == {
            n: cluster[n].address for n in FIVE}
        assert all(m["incarnation"] == 0 for m in members)  # fresh data dirs, no refutation
        assert all(m["meta"] == {"v": PROTOCOL_VERSION, "p": 256, "r": 2} for m in members)


def test_sigkill_is_detected_then_restart_comes_back_alive(cluster: Cluster) -> None:
    cluster.start_many(FIVE)
    victim, others = "n3", [n for n in FIVE if n != "n3"]
    before = cluster.request(victim, "status")["incarnation"]
    assert {cluster.incarnations(o)[victim] for o in others} == {before}

    t0 = time.monotonic()
    cluster.kill(victim, signal.SIGKILL)
    first_dead = seen_dead(cluster, victim, others, t0)
    elapsed = max(first_dead.values(), default=float("inf"))
    print(f"\nSIGKILL {victim}: all of {others} show it dead after {elapsed:.3f} s; "
          f"each: {{{', '.join(f'{o}: {t:.3f}' for o, t in sorted(first_dead.items()))}}}; "
          f"preset local bound {Config.preset('local').detection_bound(5):.3f} s")
    assert sorted(first_dead) == others, f"not all see {victim} dead after 10 s: {first_dead}"
    assert elapsed <= DETECTION_LIMIT, f"detection took {elapsed:.3f} s > {DETECTION_LIMIT} s"
    assert cluster.wait_exit(victim) == -signal.SIGKILL
    for observer in others:  # dead, and nobody else touched
        assert cluster.statuses(observer) == {n: "dead" if n == victim else "alive" for n in FIVE}

    cluster.restart(victim)
    cluster.wait_converged(FIVE)
    after = cluster.request(victim, "status")["incarnation"]
    assert after > before
    for observer in FIVE:
        assert cluster.incarnations(observer)[victim] == after
    saved = json.loads((cluster[victim].data_dir / "member.json").read_text())
    assert saved == {"name": victim, "incarnation": after}


def test_sigterm_leaves_gracefully(cluster: Cluster) -> None:
    cluster.start_many(FIVE)
    leaver, others = "n2", [n for n in FIVE if n != "n2"]
    cluster.kill(leaver, signal.SIGTERM)
    assert cluster.wait_exit(leaver, timeout=10.0) == 0
    wait_for(lambda: set(statuses_of(cluster, leaver, others).values()) == {"left"}, 10.0,
             message=f"{others} all show {leaver} left")
    for observer in others:
        assert cluster.statuses(observer) == {n: "left" if n == leaver else "alive" for n in FIVE}
    log = cluster[leaver].log()
    assert "event=leaving member=n2" in log and "event=stopped member=n2 exit_code=0" in log


# ---------------------------------------------------------------- bad input


def _garbage() -> tuple[list[bytes], list[bytes]]:
    """(packets that must be dropped as DecodeError, as AuthError) by a daemon without a secret."""
    rng = random.Random(20240611)
    ping = {"s": 1, "t": "a", "f": "x", "a": "127.0.0.1:9"}
    valid = Codec(None).encode(MessageType.PING, ping)
    decode_errors = [
        b"",                                                       # empty
        bytes([rng.randrange(2, 256)]) + rng.randbytes(63),        # random, unknown flag byte
        b"\x00" + rng.randbytes(200),                              # untagged, random body
        b"\x00\xc1",                                               # never-used msgpack byte
        valid[:-5],                                                # truncated msgpack
        valid[:1],                                                 # flag alone
        b"\x00" + msgpack.packb([99, {"f": "x"}]),                 # unknown message type
        b"\x00" + msgpack.packb({"type": 1}),                      # not [type, body]
        b"\x00" + msgpack.packb([1, {"s": "one", "t": "a"}]),      # PING with wrong fields
        Codec(None).encode(MessageType.PING, {**ping, "u": [7]}),  # update that is not a map
    ]
    auth_errors = [
        Codec(b"another cluster").encode(MessageType.PING, ping),  # tagged, no secret here
        b"\x01" + rng.randbytes(40),                               # tagged flag, random rest
    ]
    return decode_errors, auth_errors


def test_garbage_is_counted_and_dropped(cluster: Cluster) -> None:
    cluster.start_many(["a", "b"])
    target = cluster["a"]
    decode_errors, auth_errors = _garbage()
    before = cluster.stats("a")

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for packet in decode_errors + auth_errors:
            udp.sendto(packet, ("127.0.0.1", target.port))
    # The same bytes as ZeroMQ requests: each is answered with ERROR and counted the same way.
    replies = zmq_requests(target.address, decode_errors + auth_errors)
    for reply in replies:
        kind, body = Codec(None).decode(reply)
        assert kind == MessageType.ERROR and body["error"].startswith("bad request: "), body

    def delta(after: dict[str, int], key: str) -> int:
        return after.get(key, 0) - before.get(key, 0)

    expected = {"dropped_DecodeError": 2 * len(decode_errors),
                "dropped_AuthError": 2 * len(auth_errors),
                "dropped": 2 * (len(decode_errors) + len(auth_errors))}

    def counted() -> dict[str, int]:
        after = cluster.stats("a")
        got = {key: delta(after, key) for key in expected}
        return got if got == expected else {}

    wait_for(counted, 5.0, message=f"a counts {expected} more drops")
    time.sleep(0.3)  # nothing more trickles in
    after = cluster.stats("a")
    assert {key: delta(after, key) for key in expected} == expected
    assert cluster["a"].running()
    assert cluster.statuses("a") == {"a": "alive", "b": "alive"}
    assert cluster.statuses("b") == {"a": "alive", "b": "alive"}
    assert after.get("probes", 0) > before.get("probes", 0)  # still probing

    # Frames a ROUTER cannot take as [id, packet]: not answered; the daemon carries on.
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{target.address}")
    sock.send_multipart([b"only one frame"])
    sock.send_multipart([b"1", b"2", b"3"])
    assert not sock.poll(300)
    sock.close()
    assert cluster.statuses("a") == {"a": "alive", "b": "alive"}


# ---------------------------------------------------------------- secret


def test_secret_cluster(cluster: Cluster, tmp_path) -> None:
    secret_file, other_file = tmp_path / "secret", tmp_path / "other-secret"
    secret_file.write_text(os.urandom(16).hex() + "\n")
    other_file.write_text(os.urandom(16).hex() + "\n")
    three = ["s0", "s1", "s2"]
    cluster.start_many(three, secret_file=secret_file)

    # Wrongly tagged gossip to s1: untagged, and tagged with another key. Exactly counted.
    before = cluster.stats("s1").get("dropped_AuthError", 0)
    ping = {"s": 1, "t": "s1", "f": "x", "a": "127.0.0.1:9"}
    bad = [Codec(None).encode(MessageType.PING, ping),
           Codec(load_secret(str(other_file))).encode(MessageType.PING, ping)] * 2
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for packet in bad:
            udp.sendto(packet, ("127.0.0.1", cluster["s1"].port))
    wait_for(lambda: cluster.stats("s1").get("dropped_AuthError", 0) - before == len(bad), 5.0,
             message="s1 counts the wrongly tagged packets")

    # The CLI without the secret: one line, exit 2. With it: the three members.
    node = cluster["s0"].address
    result = cli("members", "--node", node, "--timeout", "2")
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("gossipflow: "), \
        result.stderr
    assert "--secret-file" in result.stderr
    result = cli("members", "--node", node, "--json", "--secret-file", str(secret_file))
    assert result.returncode == 0, result.stderr
    assert sorted(m["name"] for m in json.loads(result.stdout)) == three
    result = cli("members", "--node", node, "--json", GOSSIPFLOW_SECRET_FILE=str(secret_file))
    assert result.returncode == 0, result.stderr  # the secret from the environment
    assert sorted(m["name"] for m in json.loads(result.stdout)) == three
    for name in three:  # started with a secret: no warning
        assert "event=insecure" not in cluster[name].log_path.read_text()

    # A daemon with another secret never gets in, and the seed counts its attempts.
    seed_drops = cluster.stats("s0").get("dropped_AuthError", 0)
    cluster.start("intruder", join=["s0"], secret_file=other_file)
    cluster.wait_up("intruder")
    wait_for(lambda: cluster.stats("s0").get("dropped_AuthError", 0) - seed_drops >= 3, 5.0,
             message="s0 drops the intruder's join attempts")
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        for name in three:
            assert cluster.statuses(name) == {n: "alive" for n in three}
        time.sleep(0.1)
    assert cluster.statuses("intruder") == {"intruder": "alive"}
    assert cluster.stats("intruder").get("dropped_AuthError", 0) >= 3  # the seed's answers
    assert cluster["intruder"].running()


# ---------------------------------------------------------------- cluster shape


@pytest.mark.parametrize("flag, value, words", [
    ("--partitions", 64, "partition count differs: this cluster uses 256, the other member 64"),
    ("--replicas", 3, "replica count differs: this cluster uses 2, the other member 3"),
])
def test_mismatched_shape_is_refused(cluster: Cluster, flag: str, value: int, words: str) -> None:
    three = ["n0", "n1", "n2"]
    cluster.start_many(three)
    kwargs = {"partitions": value} if flag == "--partitions" else {"replicas": value}
    cluster.start("odd", join=["n0"], **kwargs)
    assert cluster.wait_exit("odd", timeout=10.0) == 3
    log = cluster["odd"].log()
    assert "event=join_refused" in log and words in log, log
    assert "Traceback" not in log
    assert cluster.stats("n0").get("refused_members", 0) == 1
    time.sleep(0.3)
    for name in three:
        assert cluster.statuses(name) == {n: "alive" for n in three}
        assert cluster.request(name, "ring")["members"] == three


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("how", ["--node", "GOSSIPFLOW_NODE"])
def test_cli_unreachable_daemon(how: str) -> None:
    address = f"127.0.0.1:{free_port()}"
    args, env = (["--node", address], {}) if how == "--node" else ([], {"GOSSIPFLOW_NODE": address})
    t0 = time.monotonic()
    result = cli("members", *args, "--timeout", "0.5", **env)
    took = time.monotonic() - t0
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"gossipflow: no answer from {address} within 0.5 s")
    assert "Traceback" not in result.stderr
    assert took < 5.0


def test_cli_ring_is_the_same_everywhere(cluster: Cluster) -> None:
    three = ["n0", "n1", "n2"]
    cluster.start_many(three)
    rings = []
    for name in ("n0", "n2"):
        result = cli("ring", "--json", "--node", cluster[name].address)
        assert result.returncode == 0, result.stderr
        rings.append(json.loads(result.stdout))
    assert rings[0] == rings[1]
    ring = rings[0]
    assert (ring["partitions"], ring["replicas"], ring["members"]) == (256, 2, three)
    assert len(ring["placement"]) == 256
    for replicas in ring["placement"]:
        assert len(replicas) == 2 and len(set(replicas)) == 2 and set(replicas) <= set(three)

    result = cli("ring", "--node", cluster["n1"].address)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "256 partitions, 2 replicas, 3 live members"


# ---------------------------------------------------------------- forged gossip
# Valid-looking, untagged gossip packets that any host able to reach the UDP port of a
# cluster without a secret can send: refused at decode, counted, and harmless.


def _gossip(update: dict) -> bytes:
    return Codec(None).encode(MessageType.GOSSIP, {"f": "x", "u": [update]})


def _send_udp(port: int, packet: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(packet, ("127.0.0.1", port))


def test_unparseable_member_address_is_refused_and_probing_goes_on(cluster: Cluster) -> None:
    three = ["n0", "n1", "n2"]
    cluster.start_many(three)
    dropped = cluster.stats("n0").get("dropped_DecodeError", 0)
    _send_udp(cluster["n0"].port, _gossip(
        {"k": 0, "n": "ghost", "i": 0, "a": "not-an-address",
         "m": {"v": PROTOCOL_VERSION, "p": 256, "r": 2}}))
    wait_for(lambda: cluster.stats("n0").get("dropped_DecodeError", 0) == dropped + 1, 2.0,
             message="the forged update is counted as a decode error")
    before = {n: cluster.stats(n).get("probes", 0) for n in three}
    wait_for(lambda: all(cluster.stats(n).get("probes", 0) >= before[n] + 5 for n in three),
             2.0, message="every daemon keeps probing")
    for name in three:
        assert sorted(m["name"] for m in cluster.members(name)) == three
        assert "event=handler_failed" not in cluster[name].log()


@pytest.mark.parametrize("incarnation, counter", [
    (2**64 - 1, "dropped_DecodeError"),   # past what the wire accepts: refused at decode
    (2**48, "refused_incarnations"),      # the wire's largest: b could never outbid it,
])                                        # so no member adopts it
def test_huge_incarnation_does_not_wedge_a_member(cluster: Cluster, incarnation: int,
                                                  counter: str) -> None:
    cluster.start_many(["a", "b"])
    _send_udp(cluster["a"].port, _gossip({"k": 0, "n": "b", "i": incarnation,
                                           "a": cluster["b"].address,
                                           "m": {"v": PROTOCOL_VERSION, "p": 256, "r": 2}}))
    wait_for(lambda: cluster.stats("a").get(counter, 0) >= 1, 3.0,
             message=f"a counts {counter}")
    assert cluster.statuses("a")["b"] == "alive"
    assert cluster.request("b", "status", timeout=1.0)["incarnation"] < 2**48
    assert "event=handler_failed" not in cluster["b"].log()
    cluster.kill("b", signal.SIGTERM)
    assert cluster.wait_exit("b") == 0
    cluster.restart("b")
    cluster.wait_converged(["a", "b"])
