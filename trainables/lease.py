"""One driver per sweep: a lease file in the sweep folder, on any storage.

The lease (`.gentune.lease`, JSON: pid, host, since, renewed, ttl_s) names the driver that holds the sweep. A
second `gentune sweep` on the same folder reads it and is refused, told who holds it, on which host and since
when. What each store gives to make taking it atomic:

- a local folder: an exclusive flock on `.gentune.lock`, held for the life of the driver. The kernel drops it
  when the process dies, so `--resume` works at once after a crash (on one host; a folder shared over NFS
  needs working NFS locks).
- S3 (and S3-compatible servers): conditional writes. The lease is created with `If-None-Match: *` (only
  one of two drivers can create it), renewed with `If-Match: <its ETag>` every ttl/3 s, and deleted with
  `If-Match` on exit. A driver that dies stops renewing; once `renewed + ttl_s` has passed (GENTUNE_LEASE_TTL_S,
  default 90 s, by the clock of the driver that reads it) the next driver takes it over with `If-Match` on
  the dead one's ETag, so two drivers racing for an expired lease cannot both win.
- other URIs (gs://, hdfs://, ...): pyarrow offers no conditional write there. The lease is written, then
  read back; this refuses a second driver started after the first, but not two started in the same moment.
  A line says so when such a lease is taken.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from trainables.errors import SpecError
from trainables.storage import Folder

LEASE = ".gentune.lease"
LOCK = ".gentune.lock"


def ttl_s() -> float:
    return float(os.environ.get("GENTUNE_LEASE_TTL_S", "90"))


def _body(since: float | None = None, token: str = "") -> dict[str, Any]:
    now = time.time()
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": since or now, "renewed": now,
            "ttl_s": ttl_s(), "token": token or uuid.uuid4().hex}


def describe(holder: dict[str, Any]) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {when}"


def expired(holder: dict[str, Any], now: float | None = None) -> bool:
    renewed, ttl = holder.get("renewed"), holder.get("ttl_s")
    if not isinstance(renewed, (int, float)) or not isinstance(ttl, (int, float)):
        return True  # not a lease this code wrote whole: nobody can be holding it
    return (now or time.time()) > renewed + ttl


def read_holder(folder: Folder) -> dict[str, Any] | None:
    """The lease's content, or None when there is none (or it is not readable JSON)."""
    if not folder.exists(LEASE):
        return None
    for attempt in range(3):
        try:
            data = json.loads(folder.read_bytes(LEASE))
            break
        except ValueError:
            # a read that met the holder's renewal half-written (S3-compatible servers that do not swap an
            # object whole, such as moto under load): read it again before calling it not a lease
            if attempt == 2:
                return {}
            time.sleep(0.1)
    return data if isinstance(data, dict) else {}


def driver_alive(folder: Folder) -> bool | None:
    """Whether a `gentune sweep` holds the sweep now (None: cannot tell)."""
    if not folder.remote:
        import fcntl

        path = os.path.join(folder.base, LOCK)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    return True
                fcntl.flock(f, fcntl.LOCK_UN)
                return False
        except OSError:
            return None
    holder = read_holder(folder)
    return False if holder is None else not expired(holder)


def _refuse(folder: Folder, holder: dict[str, Any]) -> SpecError:
    ago = time.time() - holder["renewed"] if isinstance(holder.get("renewed"), (int, float)) else None
    renewed = f"; its lease was renewed {ago:.0f} s ago" if ago is not None else ""
    left = f" and expires {max(0.0, holder['renewed'] + holder['ttl_s'] - time.time()):.0f} s after its driver stops renewing it" \
        if ago is not None and isinstance(holder.get("ttl_s"), (int, float)) else ""
    return SpecError(f"sweep {folder} is in use by another gentune sweep: {describe(holder)}{renewed}{left}; "
                     "wait for it to finish or stop it first")


class Lease:
    """The sweep's lease, held from `acquire` until `release`; on remote storage a thread renews it."""

    def __init__(self, folder: Folder) -> None:
        self.folder, self.lost, self._stop = folder, False, threading.Event()
        self._fh = None
        self._etag: str | None = None
        self._body = _body()
        self._thread: threading.Thread | None = None
        self._client = None

    @classmethod
    def acquire(cls, folder: Folder) -> Lease:
        lease = cls(folder)
        if not folder.remote:
            lease._local()
        else:
            if folder.address.startswith("s3://"):
                lease._s3_acquire()
            else:
                lease._other_acquire()
            lease._thread = threading.Thread(target=lease._renew_loop, name="gentune-lease", daemon=True)
            lease._thread.start()
        return lease

    # --- local: flock ---------------------------------------------------------------------------

    def _local(self) -> None:
        import fcntl

        os.makedirs(self.folder.base, exist_ok=True)
        self._fh = open(os.path.join(self.folder.base, LOCK), "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.seek(0)
            text = self._fh.read().strip()
            self._fh.close()
            try:
                holder = json.loads(text)
            except ValueError:  # an older driver wrote its pid alone
                holder = {"pid": text or "?"}
            raise _refuse(self.folder, holder if isinstance(holder, dict) else {"pid": text}) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(self._body))
        self._fh.flush()

    # --- S3: conditional writes -------------------------------------------------------------------

    def _s3(self):
        """A boto3 client for the bucket of the sweep's URI, with the URI's endpoint and region options; the
        bucket; the lease's key."""
        if self._client is None:
            self._client = self._s3_client()
        return self._client

    def _s3_client(self):
        from urllib.parse import parse_qs

        import boto3

        query = {k: v[-1] for k, v in parse_qs(self.folder.address.partition("?")[2]).items()}
        endpoint = query.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
        bucket, _, prefix = self.folder.base.partition("/")
        # a session of its own: boto3's default session is not safe to make clients from in two threads at once
        client = boto3.session.Session().client("s3", endpoint_url=endpoint or None, region_name=query.get("region") or None)
        return client, bucket, f"{prefix}/{LEASE}" if prefix else LEASE

    def _s3_acquire(self) -> None:
        from botocore.exceptions import ClientError

        client, bucket, key = self._s3()
        with self.folder.errors("take the sweep's lease"):
            try:
                self._etag = client.put_object(Bucket=bucket, Key=key, Body=json.dumps(self._body).encode(), IfNoneMatch="*")["ETag"]
                return
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise OSError(str(e)) from None
            try:
                got = client.get_object(Bucket=bucket, Key=key)
            except ClientError as e:  # deleted in between: the other driver ended; try once more from the start
                if e.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                    raise OSError(str(e)) from None
                return self._s3_acquire()
            try:
                holder = json.loads(got["Body"].read())
            except ValueError:
                holder = {}
            holder = holder if isinstance(holder, dict) else {}
            if not expired(holder):
                raise _refuse(self.folder, holder)
            try:  # take over the expired lease: If-Match on the ETag read, so of two drivers only one wins
                self._etag = client.put_object(Bucket=bucket, Key=key, Body=json.dumps(self._body).encode(),
                                               IfMatch=got["ETag"])["ETag"]
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise SpecError(f"sweep {self.folder}: another gentune sweep took its expired lease just now") from None
                raise OSError(str(e)) from None
            print(f"gentune sweep: took over the expired lease of {describe(holder)} (its driver stopped renewing it)",
                  file=sys.stderr)

    def _s3_renew(self) -> bool:
        from botocore.exceptions import ClientError

        client, bucket, key = self._s3()
        self._body = {**self._body, "renewed": time.time()}
        try:
            self._etag = client.put_object(Bucket=bucket, Key=key, Body=json.dumps(self._body).encode(), IfMatch=self._etag)["ETag"]
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                return False
            raise OSError(str(e)) from None

    # --- other stores: write, then read back ------------------------------------------------------------

    def _other_acquire(self) -> None:
        holder = read_holder(self.folder)
        if holder is not None and not expired(holder) and holder.get("token") != self._body["token"]:
            raise _refuse(self.folder, holder)
        self.folder.write_bytes(LEASE, json.dumps(self._body).encode())
        back = read_holder(self.folder) or {}
        if back.get("token") != self._body["token"]:
            raise _refuse(self.folder, back)
        print(f"gentune sweep: {self.folder.address.split('://')[0]}:// has no conditional write through pyarrow: "
              "the sweep's lease refuses a second driver started later, not one started in the same moment", file=sys.stderr)

    def _other_renew(self) -> bool:
        holder = read_holder(self.folder) or {}
        if holder.get("token") != self._body["token"]:
            return False
        self._body = {**self._body, "renewed": time.time()}
        self.folder.write_bytes(LEASE, json.dumps(self._body).encode())
        return True

    def _renew_loop(self) -> None:
        failing = False
        while not self._stop.wait(max(0.5, ttl_s() / 3)):
            try:
                ok = self._s3_renew() if self.folder.address.startswith("s3://") else self._other_renew()
            except Exception as e:  # a store that does not answer now may answer at the next renewal
                if not failing:
                    print(f"gentune sweep: cannot renew the sweep's lease in {self.folder} ({str(e)[:160]}); retrying",
                          file=sys.stderr, flush=True)
                failing = True
                continue
            failing = False
            if not ok:
                self.lost = True
                print(f"gentune sweep: the sweep's lease in {self.folder} was taken by another driver (this one did not "
                      "renew it in time); stop this driver: two drivers on one sweep overwrite each other's state",
                      file=sys.stderr, flush=True)
                return

    def release(self) -> None:
        self._stop.set()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            return
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            if self.folder.address.startswith("s3://"):
                client, bucket, key = self._s3()
                client.delete_object(Bucket=bucket, Key=key, IfMatch=self._etag)
            elif (read_holder(self.folder) or {}).get("token") == self._body["token"]:
                self.folder.delete(LEASE)
        except Exception as e:  # the lease then expires on its own after ttl_s
            print(f"gentune sweep: could not release the sweep's lease ({str(e)[:160]}); it expires in "
                  f"{ttl_s():.0f} s", file=sys.stderr)
