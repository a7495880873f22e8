"""`gentune train`: one trial without Ray, a checkpoint every epoch, resume after Ctrl-C, clear errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO, SPECS, gentune
from trainables.checkpoint import load_checkpoint
from trainables.standalone import sigint_deferred


def epochs_logged(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family, extra", [
    # epochs long enough (each one evaluated) that SIGINT lands before the last one
    # all three in the slow set (DANN 48 s, GAN 22 s, DDPM 30 s on 2 cores): the default run stays under 10 minutes
    pytest.param("dann", ["--set", "steps_per_epoch=20", "--set", "eval_every=1"], marks=pytest.mark.slow),
    # gan.yaml's model A at smoke sizes loses to its discriminator by epoch 3 (D(G(z)) 0.03): the rule that stops
    # such a trial is off here, where what is tested is the resume
    pytest.param("gan", ["--set", "steps_per_epoch=20", "--set", "eval_every=1", "--set", "d_won_fake=0"], marks=pytest.mark.slow),
    pytest.param("ddpm", ["--set", "steps_per_epoch=4", "--set", "eval_every=1"], marks=pytest.mark.slow),
])
def test_ctrl_c_then_rerun_resumes(family, extra, tmp_path, cache_dir) -> None:
    """Interrupted with SIGINT after the first checkpoint, the same command continues from that epoch."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "search.cli", "train", str(SPECS / f"{family}.yaml"), "--smoke", "--out", str(out),
           "--set", "epochs=4", *extra]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    assert ckpt.exists(), p.communicate()[1][-3000:]
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    done = load_checkpoint(ckpt, family)["epoch"]
    if p.returncode == 0:  # the run was fast enough to finish before the signal landed
        pytest.fail(f"run finished before SIGINT; make it longer ({err[-500:]})")
    assert p.returncode == 130 and "interrupted" in err
    assert 1 <= done < 4 and epochs_logged(out) == list(range(1, done + 1))
    r = gentune("train", str(SPECS / f"{family}.yaml"), "--smoke", "--out", str(out), "--set", "epochs=4", *extra)
    assert f"resuming {out} from epoch {done}" in r.stderr
    first_new = [line for line in r.stdout.splitlines() if line.startswith(f"[{family}] epoch")][0]
    assert first_new.startswith(f"[{family}] epoch {done + 1}:")
    assert epochs_logged(out) == [1, 2, 3, 4]
    final = load_checkpoint(ckpt, family)
    assert final["epoch"] == 4 and [h["epoch"] for h in final["history"]] == [1, 2, 3, 4]


def test_ctrl_c_between_checkpoint_and_metrics_line_waits_for_both() -> None:
    """A SIGINT that lands inside an epoch's writes (CI saw a checkpoint of epoch 1 with an empty
    metrics.jsonl) is raised only once the checkpoint and its metrics line are both written."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    written = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            written.append("checkpoint")
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            written.append("metrics line")
    assert written == ["checkpoint", "metrics line"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_resume_continues_the_same_trajectory(tmp_path, cache_dir) -> None:
    """2 epochs + resume to 3 gives exactly the weights of 3 epochs straight (RNG state is in the checkpoint)."""
    a, b = tmp_path / "a", tmp_path / "b"
    args = [str(SPECS / "dann.yaml"), "--smoke", "--quiet", "--set", "steps_per_epoch=2", "--set", "device=cpu"]
    gentune("train", *args, "--out", str(a), "--set", "epochs=3")
    gentune("train", *args, "--out", str(b), "--set", "epochs=2")
    gentune("train", *args, "--out", str(b), "--set", "epochs=3")
    sa, sb = (load_checkpoint(p / "checkpoint.pt")["state"]["model"] for p in (a, b))
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def write_report_digits(root: Path, n: int = 12, size: int = 28, labels=None) -> Path:
    d = root / "digits" / "usps" / "data"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i:05d}.png")
        rows.append(f"{i:05d}.png,{(labels or list(range(10)))[i % len(labels or range(10))]}")
    for split in ("train", "val"):
        (root / "digits" / "usps" / f"{split}.csv").write_text("image_name,label\n" + "\n".join(rows) + "\n")
    return root


def run_bad(tmp_path: Path, *sets: str, spec: str = "dann.yaml") -> subprocess.CompletedProcess:
    args = ["train", str(SPECS / spec), "--smoke", "--out", str(tmp_path / "out")]
    for s in sets:
        args += ["--set", s]
    return gentune(*args, check=False, timeout=300)


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("gentune train: error:")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]


def test_error_missing_dataset_folder(tmp_path) -> None:
    one_line_error(run_bad(tmp_path, "target.source=report", f"target.root={tmp_path}/nowhere"), "nowhere", "does not exist")


def test_error_csv_names_missing_image(tmp_path, cache_dir) -> None:
    root = write_report_digits(tmp_path / "data")
    (root / "digits" / "usps" / "data" / "00003.png").unlink()
    one_line_error(run_bad(tmp_path, "target.source=report", f"target.root={root}", "target.domain=usps"), "00003.png", "does not exist")


def test_error_truncated_image(tmp_path, cache_dir) -> None:
    root = write_report_digits(tmp_path / "data")
    f = root / "digits" / "usps" / "data" / "00005.png"
    f.write_bytes(f.read_bytes()[:60])
    one_line_error(run_bad(tmp_path, "target.source=report", f"target.root={root}", "target.domain=usps"), "00005.png")


def test_error_label_out_of_range(tmp_path, cache_dir) -> None:
    root = write_report_digits(tmp_path / "data", labels=[1, 2, 12])
    one_line_error(run_bad(tmp_path, "target.source=report", f"target.root={root}", "target.domain=usps"), "12", "0-9")


def test_error_unknown_key_lists_valid_ones(tmp_path) -> None:
    one_line_error(run_bad(tmp_path, "lambda=0.5"), "lambda", "valid keys:", "lamb")


def test_error_wrong_type(tmp_path) -> None:
    one_line_error(run_bad(tmp_path, "batch_size=big"), "batch_size", "expected an integer")


def test_error_image_too_small_for_model(tmp_path, cache_dir) -> None:
    root = write_report_digits(tmp_path / "data", size=6)
    one_line_error(run_bad(tmp_path, "target.source=report", f"target.root={root}", "target.domain=usps"), "6x6", "32x32")


def test_debug_shows_traceback(tmp_path) -> None:
    p = gentune("--debug", "train", str(SPECS / "dann.yaml"), "--smoke", "--out", str(tmp_path / "o"), "--set", "lambda=1", check=False)
    assert p.returncode != 0 and "Traceback" in p.stderr


@pytest.mark.slow
@pytest.mark.long
def test_dann_beats_source_only_on_demo_data(tmp_path, cache_dir) -> None:
    """150 steps on the demo digits (MNIST-M-like -> USPS-like): adaptation helps the target.
    With the paper's lambda ramp to 0.1 (measured, 1 thread, seeds 0/1: 0.631/0.656 vs source-only
    0.225/0.397); a fixed lambda 0.3 from step 0 stalls the classifier this early, and a ramp to 1.0
    fails (0.114/0.086)."""
    acc = {}
    for mode in ("source-only", "dann"):
        out = tmp_path / mode
        gentune("train", str(SPECS / "dann.yaml"), "--smoke", "--quiet", "--out", str(out), "--set", f"mode={mode}",
                "--set", "epochs=3", "--set", "steps_per_epoch=50", "--set", "batch_size=64", "--set", "eval_every=3",
                "--set", "lambda_schedule=ramp", "--set", "lamb=0.1",
                "--set", "device=cpu", timeout=1500)
        acc[mode] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["target_acc"]
    assert acc["dann"] > acc["source-only"] + 0.02, acc
