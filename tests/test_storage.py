"""The storage layer (trainables/storage.py) and the sweep's lease (trainables/lease.py) against a real S3-compatible
server (moto's, started by the fixture) and a local folder: what each relies on, checked where it could fail."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.s3server import BUCKET, s3  # noqa: F401 (the fixture)
from trainables.errors import GentuneError, SpecError
from trainables.lease import LEASE, Lease, driver_alive, read_holder
from trainables.storage import Folder, join


@pytest.fixture
def aws(s3, monkeypatch):
    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    return s3


def test_join_keeps_the_query_string_after_the_path() -> None:
    assert join("s3://b/x?endpoint_override=127.0.0.1:9000&scheme=http", "sweep", "gan") == \
        "s3://b/x/sweep/gan?endpoint_override=127.0.0.1:9000&scheme=http"
    assert join("/tmp/runs", "a") == "/tmp/runs/a" and join("file:///tmp/runs", "a") == "/tmp/runs/a"


def test_a_uri_with_pyarrow_options_reaches_the_server_it_names(aws, monkeypatch) -> None:
    """endpoint_override in the query string, without AWS_ENDPOINT_URL: the folder is the same one."""
    Folder(f"s3://{BUCKET}/opt").write_bytes("a/x.json", b"{}")
    host = aws["AWS_ENDPOINT_URL"].removeprefix("http://")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    f = Folder(f"s3://{BUCKET}/opt?endpoint_override={host}&scheme=http")
    assert f.read_bytes("a/x.json") == b"{}" and f.listing(recursive=True) == {"a/x.json": (2, f.listing(recursive=True)["a/x.json"][1])}
    assert str(f) == f"s3://{BUCKET}/opt" and f.uri("a") == f"s3://{BUCKET}/opt/a?endpoint_override={host}&scheme=http"


def test_an_unreachable_store_is_one_line_naming_it(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    f = Folder(f"s3://{BUCKET}/x?endpoint_override=127.0.0.1:9&scheme=http")  # nothing listens on port 9
    with pytest.raises(GentuneError, match=rf"^storage s3://{BUCKET}/x: cannot read sweep.json \("):
        f.read_bytes("sweep.json")
    with pytest.raises(GentuneError, match="not a storage URI pyarrow can open"):
        Folder("nosuchscheme://b/x")


def test_mirror_fetches_only_what_changed_and_drops_what_went(aws, tmp_path, monkeypatch) -> None:
    f = Folder(f"s3://{BUCKET}/mirror")
    for rel, data in {"sweep.json": b"1", "s/t/result.json": b"r1", "s/t/checkpoint_000001/checkpoint.pt": b"big"}.items():
        f.write_bytes(rel, data)
    fetched = []
    real = Folder.download
    monkeypatch.setattr(Folder, "download", lambda self, rel, dest: fetched.append(rel) or real(self, rel, dest))
    wanted = lambda rel: not rel.endswith(".pt")  # noqa: E731
    listing = f.mirror(tmp_path, wanted)
    assert sorted(fetched) == ["s/t/result.json", "sweep.json"] and "s/t/checkpoint_000001/checkpoint.pt" in listing
    assert (tmp_path / "s/t/result.json").read_bytes() == b"r1" and not (tmp_path / "s/t/checkpoint_000001").exists()
    fetched.clear()
    f.mirror(tmp_path, wanted)
    assert fetched == []  # nothing changed: nothing fetched
    f.write_bytes("s/t/result.json", b"r1 r2")
    f.delete("sweep.json")
    f.mirror(tmp_path, wanted)
    assert fetched == ["s/t/result.json"] and (tmp_path / "s/t/result.json").read_bytes() == b"r1 r2"
    assert not (tmp_path / "sweep.json").exists()


def test_s3_lease_refuses_a_second_driver_naming_the_holder(aws) -> None:
    f = Folder(f"s3://{BUCKET}/lease-a")
    first = Lease.acquire(f)
    try:
        holder = read_holder(f)
        assert holder["pid"] == os.getpid() and driver_alive(f) is True
        with pytest.raises(SpecError, match=rf"in use by another gentune sweep: pid {os.getpid()} on host \S+ since \d{{4}}-"):
            Lease.acquire(f)
    finally:
        first.release()
    assert read_holder(f) is None and driver_alive(f) is False
    Lease.acquire(f).release()  # free again


def test_s3_lease_is_renewed_and_expires_only_when_its_driver_stops(aws, monkeypatch) -> None:
    monkeypatch.setenv("GENTUNE_LEASE_TTL_S", "3")
    f = Folder(f"s3://{BUCKET}/lease-b")
    first = Lease.acquire(f)
    try:
        t0 = read_holder(f)["renewed"]
        time.sleep(5)  # longer than the TTL: renewed every second meanwhile, so still held
        assert read_holder(f)["renewed"] > t0
        with pytest.raises(SpecError, match="in use by another gentune sweep"):
            Lease.acquire(f)
    finally:
        first._stop.set()  # the driver dies: no renewal, no release
        first._thread.join()
    time.sleep(3.5)
    second = Lease.acquire(f)  # expired: taken over
    assert read_holder(f)["token"] == second._body["token"]
    time.sleep(1.5)
    assert first._s3_renew() is False  # the dead driver's ETag no longer matches: it cannot take it back
    second.release()
    assert read_holder(f) is None


@pytest.mark.parametrize("expired", [False, True])
def test_of_two_drivers_racing_for_a_lease_exactly_one_wins(aws, expired) -> None:
    """Both at once, many times: on a free lease (If-None-Match) and on an expired one (If-Match on its ETag)."""
    for i in range(8):
        f = Folder(f"s3://{BUCKET}/race-{expired}-{i}")
        if expired:
            f.write_bytes(LEASE, json.dumps({"pid": 1, "host": "gone", "since": 0, "renewed": time.time() - 600,
                                             "ttl_s": 90}).encode())
        won, lost, gate = [], [], threading.Barrier(2)

        def go():
            gate.wait()
            try:
                won.append(Lease.acquire(f))
            except SpecError as e:
                lost.append(str(e))

        threads = [threading.Thread(target=go) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 1, (won, lost)
        assert read_holder(f)["token"] == won[0]._body["token"]
        won[0].release()


def test_local_lease_is_free_the_moment_its_driver_dies(tmp_path) -> None:
    f = Folder(str(tmp_path / "sweep"))
    code = ("import sys, time; from trainables.lease import Lease; from trainables.storage import Folder; "
            f"held = Lease.acquire(Folder({str(f.base)!r})); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert driver_alive(f) is True
        with pytest.raises(SpecError, match=rf"in use by another gentune sweep: pid {p.pid} on host"):
            Lease.acquire(f)
    finally:
        p.kill()
        p.wait()
    assert driver_alive(f) is False
    Lease.acquire(f).release()
