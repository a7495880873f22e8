"""An S3-compatible server for tests: moto's `moto_server` on 127.0.0.1, started by the fixture and stopped by PID."""
from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from benchmarks.faults import free_port, kill_group, start, tail

BUCKET = "gentune-test"


def wait_http(url: str, proc, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}:\n{tail(log)}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing answers on {url}:\n{tail(log)}")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with one bucket; the environment a driver and Ray's workers need for it."""
    folder = tmp_path_factory.mktemp("s3")
    port = free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    proc = start([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                 folder / "moto.log", {**os.environ, **env})
    try:
        wait_http(env["AWS_ENDPOINT_URL"], proc, folder / "moto.log")
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        kill_group(proc, signal.SIGKILL)
        proc.wait(15)


