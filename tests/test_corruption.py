"""The corruption matrix: every file gentune reads that a person or a program could have edited, truncated or
replaced is checked before it is used (trainables/filecheck.py). Each corruption must give one error line naming
the file, exit 2 through the CLI, and leave the sweep folder byte-identical.

The default set calls the readers in-process (one or more cases per file kind, about a second each); the full
matrix runs every case through the real CLI commands that read the file (slow: 3-5 s per command)."""
from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from conftest import REPO, gentune
from trainables.errors import DataError, GentuneError

# --- corruptions --------------------------------------------------------------------------------------------


def truncate(p: Path) -> None:
    """Cut to about half, never just after a newline (so a text file ends mid-line, as a torn write leaves it)."""
    data = p.read_bytes()
    cut = max(1, len(data) // 2)
    while cut > 1 and data[cut - 1:cut] in (b"\n", b"\r", b" "):
        cut -= 1
    p.write_bytes(data[:cut])


def empty(p: Path) -> None:
    p.write_bytes(b"")


def to_folder(p: Path) -> None:
    p.unlink()
    p.mkdir()
    (p / "x").write_text("x")


def edit_json(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def go(p: Path) -> None:
        d = json.loads(p.read_text())
        fn(d)
        p.write_text(json.dumps(d))
    return go


def edit_lines(fn: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def go(p: Path) -> None:
        p.write_text("\n".join(fn(p.read_text().splitlines())) + "\n")
    return go


def edit_state_trial(fn: Callable[[dict], None], part: int = 0) -> Callable[[Path], None]:
    """Edit the first trial's (part 0) meta or (part 1) runtime JSON inside an experiment_state file."""
    def go(d: dict) -> None:
        inner = json.loads(d["trial_data"][0][part])
        fn(inner)
        d["trial_data"][0][part] = json.dumps(inner)
    return edit_json(go)


def edit_ckpt(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def go(p: Path) -> None:
        ck = torch.load(p, weights_only=True)
        fn(ck)
        torch.save(ck, p)
    return go


def set_key(k, v):
    return lambda d: d.__setitem__(k, v)


def del_key(k):
    return lambda d: d.pop(k)


# --- files of a sweep folder ---------------------------------------------------------------------------------

def state_file(root: Path, study: str = "dann") -> Path:
    return Path(sorted(glob.glob(str(root / study / "experiment_state-*.json")))[-1])


def trial_folder(root: Path, study: str = "dann") -> Path:
    return sorted(p for p in (root / study).iterdir() if p.is_dir() and p.name.startswith("run_trial"))[0]


def result_file(root: Path, study: str = "dann") -> Path:
    return trial_folder(root, study) / "result.json"


def checkpoints(root: Path, study: str = "dann") -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(root / study / "*" / "checkpoint_*" / "checkpoint.pt")))


def waiting_file(root: Path) -> Path:
    p = root / "waiting.json"
    if not p.exists():
        p.write_text(json.dumps({"study": "dann", "message": "1 trial(s) of study dann waiting", "trials": 1,
                                 "asks": {"CPU": 1.0}, "cluster": {"CPU": 2.0}, "since": 1.0, "updated": 2.0}))
    return p


def every_checkpoint(fn: Callable[[Path], None]) -> Callable[[Path], None]:
    """The same corruption in every checkpoint of the study (so whichever trial a command picks, it meets it)."""
    def go(root: Path) -> None:
        for p in checkpoints(root):
            fn(p)
    return go


def on(locate: Callable[[Path], Path], fn: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda root: fn(locate(root))


SWEEP_JSON = lambda r: r / "sweep.json"  # noqa: E731
OPTUNA_DB = lambda r: r / "optuna.db"  # noqa: E731

# (file kind, case, corruption of a sweep folder, what the error line must name)
SWEEP_CASES = [
    ("sweep.json", "truncated", on(SWEEP_JSON, truncate), "sweep.json: line"),
    ("sweep.json", "empty", on(SWEEP_JSON, empty), "sweep.json is empty"),
    ("sweep.json", "folder", on(SWEEP_JSON, to_folder), "sweep.json is a folder"),
    ("sweep.json", "wrong type", on(SWEEP_JSON, edit_json(set_key("studies", "abc"))), "studies: expected a list"),
    ("sweep.json", "key missing", on(SWEEP_JSON, edit_json(del_key("name"))), "name: expected"),
    ("sweep.json", "unknown key", on(SWEEP_JSON, edit_json(set_key("studys", ["x"]))), "studys: expected only the keys"),
    ("sweep.json", "duplicated", on(SWEEP_JSON, edit_json(lambda d: d["studies"].append(d["studies"][0]))), "listed twice"),
    ("sweep.json", "contradictory", on(SWEEP_JSON, edit_json(lambda d: d["families"].__setitem__("ghost", "dann"))),
     "families.ghost: expected a study listed in studies"),
    ("sweep.json", "out of range", on(SWEEP_JSON, edit_json(set_key("state", "exploded"))), "state: expected one of"),
    ("sweep.json", "bad name", on(SWEEP_JSON, edit_json(lambda d: d["studies"].__setitem__(0, "../x"))), "a plain name"),
    ("experiment_state", "truncated", on(state_file, truncate), "experiment_state-"),
    ("experiment_state", "empty", on(state_file, empty), "is empty"),
    ("experiment_state", "folder", on(state_file, to_folder), "is a folder"),
    ("experiment_state", "wrong type", on(state_file, edit_json(set_key("trial_data", {}))), "trial_data: expected a list"),
    ("experiment_state", "key missing", on(state_file, edit_json(del_key("trial_data"))), "trial_data: expected"),
    ("experiment_state", "duplicated", on(state_file, edit_json(lambda d: d["trial_data"].append(d["trial_data"][0]))),
     "each trial once"),
    ("experiment_state", "out of range", on(state_file, edit_state_trial(set_key("status", "EXPLODED"))),
     "trial_data[0][0].status: expected one of"),
    ("experiment_state", "wrong type inside", on(state_file, edit_state_trial(set_key("start_time", "soon"), 1)),
     "trial_data[0][1].start_time"),
    ("result.json", "truncated", on(result_file, truncate), "result.json: line"),
    ("result.json", "folder", on(result_file, to_folder), "result.json is a folder"),
    ("result.json", "damaged line", on(result_file, edit_lines(lambda ls: ["{not json", *ls])), "result.json: line 1"),
    ("result.json", "wrong type", on(result_file, edit_lines(lambda ls: [json.dumps({**json.loads(ls[0]), "training_iteration": "x"}), *ls[1:]])),
     "line 1.training_iteration: expected an integer"),
    ("result.json", "key missing", on(result_file, edit_lines(lambda ls: [json.dumps({k: v for k, v in json.loads(ls[0]).items() if k != "trial_id"}), *ls[1:]])),
     "line 1.trial_id: expected"),
    ("result.json", "contradictory", on(result_file, edit_lines(lambda ls: [*ls, json.dumps({**json.loads(ls[-1]), "trial_id": "00000000"})])),
     "trial_id: expected the trial id of line 1"),
    ("result.json", "out of range", on(result_file, edit_lines(lambda ls: [json.dumps({**json.loads(ls[0]), "epoch": -3}), *ls[1:]])),
     "line 1.epoch: expected a value in [0, inf]"),
    ("waiting.json", "truncated", on(waiting_file, truncate), "waiting.json: line"),
    ("waiting.json", "folder", lambda r: r.joinpath("waiting.json").mkdir(), "waiting.json is a folder"),
    ("waiting.json", "wrong type", on(waiting_file, edit_json(set_key("trials", "two"))), "trials: expected an integer"),
    ("waiting.json", "key missing", on(waiting_file, edit_json(del_key("message"))), "message: expected"),
    ("waiting.json", "unknown study", on(waiting_file, edit_json(set_key("study", "ghost"))), "study: expected a study of sweep.json"),
    ("checkpoint", "truncated", every_checkpoint(truncate), "cannot read checkpoint"),
    ("checkpoint", "empty", every_checkpoint(empty), "checkpoint.pt is empty"),
    ("checkpoint", "folder", every_checkpoint(to_folder), "checkpoint.pt is a folder"),
    ("checkpoint", "wrong type", every_checkpoint(edit_ckpt(set_key("epoch", "two"))), "epoch: expected an integer"),
    ("checkpoint", "key missing", every_checkpoint(edit_ckpt(del_key("history"))), "history: expected"),
    ("checkpoint", "unknown key", every_checkpoint(edit_ckpt(set_key("surprise", 1))), "surprise: expected only the keys"),
    ("checkpoint", "contradictory", every_checkpoint(edit_ckpt(lambda c: c["history"].append(c["history"][-1]))),
     "history: expected one metrics entry per epoch"),
    ("checkpoint", "out of range", every_checkpoint(edit_ckpt(set_key("epoch", -1))), "epoch: expected a value in [0, inf]"),
    ("checkpoint", "bad config", every_checkpoint(edit_ckpt(lambda c: c["config"].__setitem__("lr", "fast"))), "config: expected a valid dann config"),
    ("optuna.db", "truncated", on(OPTUNA_DB, truncate), "optuna.db"),
    ("optuna.db", "empty", on(OPTUNA_DB, empty), "optuna.db is empty"),
    ("optuna.db", "folder", on(OPTUNA_DB, to_folder), "optuna.db is a folder"),
    ("optuna.db", "not optuna", on(OPTUNA_DB, lambda p: (p.unlink(), sqlite3.connect(p).execute("CREATE TABLE t (a)").connection.commit())),
     "expected the sweep's stored Optuna studies"),
]

TUNER = lambda r: r / "gan" / "tuner.pkl"  # noqa: E731
SEARCHER = lambda r: Path(sorted(glob.glob(str(r / "gan" / "searcher-state-*.pkl")))[-1])  # noqa: E731
SWEEP_CASES += [  # what Tuner.restore reads on --resume
    ("tune state", "tuner.pkl truncated", on(TUNER, truncate), "tuner.pkl: expected Ray Tune's saved state (it does not unpickle"),
    ("tune state", "tuner.pkl empty", on(TUNER, empty), "tuner.pkl is empty"),
    ("tune state", "searcher truncated", on(SEARCHER, truncate), ".pkl: expected Ray Tune's saved state (it does not unpickle"),
    ("tune state", "experiment state not Tune's", on(lambda r: state_file(r, "gan"), edit_json(set_key("trial_data", 3))),
     "trial_data: expected Ray Tune's list of trials, found 3"),
]

# The commands that read each kind (through the real CLI, slow set).
READERS = {
    "tune state": ["resume"],
    "sweep.json": ["status", "compare", "summary", "report", "export", "resume", "dashboard"],
    "experiment_state": ["status"],
    "result.json": ["status", "export", "report"],
    "waiting.json": ["status"],
    "checkpoint": ["export", "report"],
    "optuna.db": ["report", "dashboard", "resume"],
}


def tree_hash(root: Path) -> dict[str, str]:
    out = {}
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            p = Path(d) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        if not files and not dirs:
            out[str(Path(d).relative_to(root)) + "/"] = "dir"
    return out


@pytest.fixture
def sweep_copy(smoke_sweep, tmp_path) -> Path:
    root = tmp_path / "quickstart"
    shutil.copytree(smoke_sweep["root"], root)
    return root


def one_line(p, command: str, needle: str) -> None:
    errs = [x for x in p.stderr.splitlines() if x.startswith(f"gentune {command}: error:")]
    assert p.returncode == 2, (p.returncode, p.stdout[-1500:], p.stderr[-3000:])
    assert len(errs) == 1 and needle in errs[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr


def run_command(command: str, root: Path, tmp: Path):
    if command == "resume":
        return gentune("sweep", str(REPO / "search" / "specs" / "quickstart.yaml"), "--smoke", "--storage",
                       str(root.parent), "--name", root.name, "--resume", "--quiet", check=False), "sweep"
    args = {"report": ["--out", str(tmp / "report"), "--device", "cpu", "--quiet"],
            "export": ["--study", "dann", "--out", str(tmp / "bundle"), "--quiet"]}.get(command, [])
    return gentune(command, str(root), *args, check=False, timeout=900), command


# --- default set: in-process ----------------------------------------------------------------------------------

def in_process(kind: str, root: Path) -> None:
    """The reader each kind goes through, called directly."""
    from analysis.status import read_status
    from analysis.sweepdata import Sweep, check_optuna_db, read_sweep_json
    from trainables.checkpoint import load_checkpoint

    if kind == "sweep.json":
        read_sweep_json(root)
    elif kind in ("experiment_state", "result.json", "waiting.json"):
        read_status(root, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    elif kind == "checkpoint":
        for p in checkpoints(root):
            load_checkpoint(p)
    elif kind == "optuna.db":
        check_optuna_db(root / "optuna.db")
    elif kind == "tune state":
        from search.folder import check_tune_state

        check_tune_state(root / "gan")
    else:
        Sweep(root)


DEFAULT = {("sweep.json", c) for c in ("truncated", "wrong type", "contradictory", "folder")} | {
    ("experiment_state", "truncated"), ("experiment_state", "out of range"), ("result.json", "damaged line"),
    ("result.json", "contradictory"), ("waiting.json", "wrong type"), ("checkpoint", "truncated"),
    ("checkpoint", "contradictory"), ("optuna.db", "not optuna"), ("tune state", "tuner.pkl truncated"),
    ("tune state", "searcher truncated"), ("tune state", "experiment state not Tune's")}


@pytest.mark.parametrize("kind,case,corrupt,needle", [c for c in SWEEP_CASES if (c[0], c[1]) in DEFAULT],
                         ids=[f"{c[0]}-{c[1]}" for c in SWEEP_CASES if (c[0], c[1]) in DEFAULT])
def test_reader_refuses(kind, case, corrupt, needle, sweep_copy):
    from trainables.errors import GentuneError

    corrupt(sweep_copy)
    before = tree_hash(sweep_copy)
    with pytest.raises(GentuneError) as e:
        in_process(kind, sweep_copy)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert tree_hash(sweep_copy) == before


def test_intact_sweep_reads(sweep_copy):
    """The schemas accept what gentune and Ray really write."""
    for kind in ("sweep.json", "experiment_state", "checkpoint", "optuna.db", "tune state"):
        in_process(kind, sweep_copy)


def test_report_reads_only_the_checkpoints_it_draws(sweep_copy, tmp_path):
    """The report draws the models of the trials it picks (GAN A/B, DDPM, DANN's t-SNE from the `dann` study), not
    of every finished trial: damaged checkpoints of the baselines, whose numbers come from MLflow, do not stop it.
    A damaged checkpoint it does draw is one error and no report (the CLI matrix below, every `dann` checkpoint)."""
    from analysis.report import build_report

    damaged = checkpoints(sweep_copy, "dann-baselines")
    assert damaged
    for p in damaged:
        truncate(p)
    res = build_report(sweep_copy, tmp_path / "report", device="cpu", tsne_max=60, log_mlflow=False, quiet=True)
    md = res["markdown"].read_text()
    assert "## DANN" in md and "t-SNE" in md and "skipped" not in md, md[-2000:]
    rows = [ln for ln in md.splitlines() if ln.startswith(("| Trained on source |", "| Trained on target |"))]
    assert len(rows) == 2 and all(ln.split("|")[2].strip() not in ("", "-") for ln in rows), rows  # from MLflow values


# --- slow: the full matrix through the CLI ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind,case,corrupt,needle", SWEEP_CASES, ids=[f"{c[0]}-{c[1]}" for c in SWEEP_CASES])
def test_cli_refuses(kind, case, corrupt, needle, smoke_sweep, tmp_path):
    for command in READERS[kind]:
        work = tmp_path / command
        root = work / "quickstart"
        shutil.copytree(smoke_sweep["root"], root)
        corrupt(root)
        before = tree_hash(root)
        p, shown = run_command(command, root, work)
        one_line(p, shown, needle if command != "dashboard" or kind != "optuna.db" else "optuna.db")
        assert tree_hash(root) == before, f"{command} changed the sweep folder"
        assert not (work / "report").exists() and not (work / "bundle").exists()


# --- bundles -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(smoke_sweep, tmp_path_factory) -> Path:
    from analysis.export import export_best
    from analysis.sweepdata import Sweep

    out = tmp_path_factory.mktemp("bundle") / "dann"
    export_best(Sweep(smoke_sweep["root"]), out, study="dann")
    return out


def bundle_meta(fn):
    return lambda b: edit_json(fn)(b / "bundle.json")


BUNDLE_CASES = [
    ("truncated", lambda b: truncate(b / "bundle.json"), "bundle.json: line"),
    ("empty", lambda b: empty(b / "bundle.json"), "bundle.json is empty"),
    ("folder", lambda b: to_folder(b / "bundle.json"), "bundle.json is a folder"),
    ("wrong type", bundle_meta(set_key("epoch", "two")), "epoch: expected an integer"),
    ("key missing", bundle_meta(del_key("sha256")), "sha256: expected"),
    ("unknown key", bundle_meta(set_key("extra", 1)), "extra: expected only the keys"),
    ("out of range", bundle_meta(set_key("epoch", -2)), "epoch: expected a value in [0, inf]"),
    ("contradictory", bundle_meta(set_key("tensors", 1)), "tensors: expected"),
    ("weights path", bundle_meta(set_key("weights", "../model.safetensors")), "weights: expected a plain name"),
    ("weights truncated", lambda b: truncate(b / "model.safetensors"), "does not match its sha256"),
    ("weights folder", lambda b: to_folder(b / "model.safetensors"), "model.safetensors is a folder"),
]


@pytest.mark.parametrize("case,corrupt,needle", BUNDLE_CASES[:1] + BUNDLE_CASES[5:6] + BUNDLE_CASES[7:8],
                         ids=[c[0] for c in BUNDLE_CASES[:1] + BUNDLE_CASES[5:6] + BUNDLE_CASES[7:8]])
def test_bundle_refused(case, corrupt, needle, bundle, tmp_path):
    from analysis.export import load_bundle

    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    corrupt(b)
    with pytest.raises(GentuneError) as e:
        load_bundle(b)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("case,corrupt,needle", BUNDLE_CASES, ids=[c[0] for c in BUNDLE_CASES])
def test_bundle_cli_refuses(case, corrupt, needle, bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    corrupt(b)
    before = tree_hash(b)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(imgs / "a.png")
    for args, cmd in ((["predict", str(b), str(imgs), "--out", str(tmp_path / "l.csv")], "predict"),
                      (["generate", str(b), "--out", str(tmp_path / "g.png")], "generate")):
        p = gentune(*args, check=False)
        if cmd == "generate":  # a DANN bundle: generate refuses the family before or after the file checks
            assert p.returncode == 2 and "Traceback" not in p.stderr
            continue
        one_line(p, cmd, needle)
    assert tree_hash(b) == before and not (tmp_path / "l.csv").exists() and not (tmp_path / "g.png").exists()


# --- data files: the report's layout, MNIST-M labels, the dataset cache ---------------------------------------

def report_layout(root: Path, n: int = 6) -> Path:
    dom = root / "digits" / "usps"
    (dom / "data").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(dom / "data" / f"{i}.png")
    (dom / "train.csv").write_text("image_name,label\n" + "".join(f"{i}.png,{i % 10}\n" for i in range(n - 2)))
    (dom / "val.csv").write_text("image_name,label\n" + "".join(f"{i}.png,{i % 10}\n" for i in range(n - 2, n)))
    return dom


def csv_edit(fn):
    return lambda dom: (dom / "train.csv").write_text(fn((dom / "train.csv").read_text()))


CSV_CASES = [
    ("header", csv_edit(lambda t: t.replace("image_name,label", "name,label")), "must start with the header"),
    ("empty", csv_edit(lambda t: ""), "empty file"),
    ("empty split", csv_edit(lambda t: "image_name,label\n"), "lists no images"),
    ("missing image", csv_edit(lambda t: t + "nope.png,1\n"), "names nope.png, which does not exist"),
    ("wrong type", csv_edit(lambda t: t + "1.png,one\n"), "is not an integer"),
    ("out of range", csv_edit(lambda t: t.replace("1.png,1", "1.png,12")), "outside 0-9"),
    ("duplicated", csv_edit(lambda t: t + "1.png,1\n"), "1.png is already listed at line 3"),
    ("contradictory", csv_edit(lambda t: t + "1.png,7\n"), "contradictory"),
    ("contradicts the other split", csv_edit(lambda t: t + "5.png,3\n"), "expected the label val.csv gives 5.png (5)"),
    ("folder", lambda dom: to_folder(dom / "train.csv"), "train.csv"),
]


@pytest.mark.parametrize("case,corrupt,needle", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_report_csv_refused(case, corrupt, needle, tmp_path):
    from trainables.formats import read_report_digits

    dom = report_layout(tmp_path)
    corrupt(dom)
    with pytest.raises(GentuneError) as e:
        read_report_digits(tmp_path, "usps", "train")
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


MNISTM_CASES = [
    ("duplicated", lambda t: t + "00000001.png 1\n", "already listed"),
    ("contradictory", lambda t: t + "00000001.png 4\n", "contradictory"),
    ("out of range", lambda t: t.replace("00000001.png 1", "00000001.png 10"), "outside 0-9"),
    ("bad line", lambda t: t + "00000002.png\n", "expected '<file>.png <label>'"),
    ("empty", lambda t: "", "is empty"),
]


def mnistm_layout(root: Path) -> Path:
    folder = root / "mnist_m_train"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i:08d}.png")
    (root / "mnist_m_train_labels.txt").write_text("".join(f"{i:08d}.png {i}\n" for i in range(3)))
    return root / "mnist_m_train_labels.txt"


@pytest.mark.parametrize("case,edit,needle", MNISTM_CASES, ids=[c[0] for c in MNISTM_CASES])
def test_mnistm_labels_refused(case, edit, needle, tmp_path):
    from trainables.formats import read_mnistm

    labels = mnistm_layout(tmp_path)
    labels.write_text(edit(labels.read_text()))
    with pytest.raises(GentuneError) as e:
        read_mnistm(tmp_path, "train")
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("case,corrupt,needle", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_train_refuses_a_bad_report_layout(case, corrupt, needle, tmp_path):
    dom = report_layout(tmp_path / "data")
    corrupt(dom)
    out = tmp_path / "run"
    p = gentune("train", str(REPO / "search" / "specs" / "dann.yaml"), "--set", "epochs=1", "--set", "steps_per_epoch=1",
                "--set", "batch_size=4", "--set", "eval_every=1", "--set", "target.source=report",
                "--set", f"target.root={tmp_path / 'data'}", "--set", "target.domain=usps", "--out", str(out),
                "--quiet", check=False, env={"GENTUNE_CACHE": str(tmp_path / "cache")})
    one_line(p, "train", needle)
    assert not out.exists()


def test_dataset_cache_rebuilt_not_trusted(tmp_path, capsys):
    """A damaged or edited cache entry is rebuilt with one line saying so; a folder in its place is an error."""
    from trainables.config import DataConfig
    from trainables.data import load_split

    dc = DataConfig(source="report", root=str(tmp_path / "data"), domain="usps")
    report_layout(tmp_path / "data")
    cache = tmp_path / "cache"
    good = load_split(dc, "train", 32, "digits", str(cache), quiet=True)
    entry = next((cache / "datasets").glob("*.pt"))
    for corrupt in (truncate, edit_ckpt(lambda b: b["labels"].__setitem__(0, 3))):
        corrupt(entry)
        capsys.readouterr()
        again = load_split(dc, "train", 32, "digits", str(cache), quiet=True)
        err = capsys.readouterr().err
        assert "rebuilding the dataset cache entry" in err and len(err.strip().splitlines()) == 1, err
        assert again.fingerprint == good.fingerprint and torch.equal(again.labels, good.labels)
    to_folder(entry)
    with pytest.raises(GentuneError, match="is a folder"):
        load_split(dc, "train", 32, "digits", str(cache), quiet=True)


# --- the original datasets' files: MNIST's IDX, SVHN's .mat, USPS's LIBSVM, MNIST-M's images, CelebA's partitions --
# Each reader refuses a damaged file with one DataError naming it and what is wrong; none makes up a dataset.

def refused(read: Callable[[], object], name: str, needle: str) -> None:
    with pytest.raises(DataError) as e:
        read()
    msg = str(e.value)
    assert name in msg and needle in msg and "\n" not in msg, msg


def flip(offset: int) -> Callable[[Path], None]:
    def go(p: Path) -> None:
        data = bytearray(p.read_bytes())
        data[offset] ^= 0xFF
        p.write_bytes(bytes(data))
    return go


def write_idx(path: Path, magic: int, data, dims: list[int] | None = None) -> None:
    """An IDX file gzipped as MNIST is distributed; `dims` overrides the sizes its header gives."""
    data = np.asarray(data, np.uint8)
    head = np.array([magic, *(data.shape if dims is None else dims)], ">i4").tobytes()
    path.write_bytes(gzip.compress(head + data.tobytes(), mtime=0))


MNIST_IMAGES, MNIST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


def mnist_files(root: Path) -> None:
    root.mkdir(exist_ok=True)
    write_idx(root / MNIST_IMAGES, 2051, np.arange(3 * 784).reshape(3, 28, 28) % 256)
    write_idx(root / MNIST_LABELS, 2049, [7, 2, 1])


def gunzip_edit(fn: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(gzip.compress(fn(gzip.decompress(p.read_bytes())), mtime=0))


MNIST_CASES = [  # (case, file, corrupt(file), needle)
    ("truncated", MNIST_IMAGES, truncate, "Compressed file ended"),
    ("damaged", MNIST_IMAGES, flip(12), "while decompressing data"),
    ("not gzip", MNIST_LABELS, lambda p: p.write_bytes(b"garbage" * 9), "Not a gzipped file"),
    ("empty", MNIST_LABELS, gunzip_edit(lambda raw: b""), "is 0 bytes, too short for its 8-byte header"),
    ("cut data", MNIST_IMAGES, gunzip_edit(lambda raw: raw[:-100]), "holds 2252 data bytes, its header 3x28x28 says 2352"),
    ("wrong dtype", MNIST_LABELS, lambda p: write_idx(p, 0x0D01, np.zeros(12), [3]), "has magic 3329, expected 2049"),
    ("labels as images", MNIST_IMAGES, lambda p: write_idx(p, 2049, [7, 2, 1]), "has magic 2049, expected 2051"),
    ("negative size", MNIST_IMAGES, lambda p: write_idx(p, 2051, np.zeros(2352), [-3, -28, 28]),
     "sizes -3x-28x28 in its header, expected none negative"),
    ("wrong shape", MNIST_IMAGES, lambda p: write_idx(p, 2051, np.zeros((3, 784, 1))), "holds 784x1 images, expected MNIST's 28x28"),
    ("count mismatch", MNIST_LABELS, lambda p: write_idx(p, 2049, [7, 2]), "has 3 images but"),
    ("out of range", MNIST_LABELS, lambda p: write_idx(p, 2049, [7, 12, 1]), "label 12 at index 1"),
    ("no images", MNIST_IMAGES, lambda p: (write_idx(p, 2051, np.zeros((0, 28, 28))), write_idx(p.parent / MNIST_LABELS, 2049, [])),
     "holds no images"),
    ("folder", MNIST_IMAGES, to_folder, "cannot find t10k-images-idx3-ubyte"),
]


@pytest.mark.parametrize("case,name,corrupt,needle", MNIST_CASES, ids=[c[0] for c in MNIST_CASES])
def test_mnist_idx_refused(case, name, corrupt, needle, tmp_path):
    from trainables.formats import read_mnist

    mnist_files(tmp_path)
    assert read_mnist(tmp_path, "test")[1].tolist() == [7, 2, 1]
    corrupt(tmp_path / name)
    refused(lambda: read_mnist(tmp_path, "test"), name.removesuffix(".gz"), needle)


@pytest.mark.parametrize("case,name,corrupt,needle", MNIST_CASES[::3], ids=[c[0] for c in MNIST_CASES[::3]])
def test_gentune_mnistm_refuses_damaged_mnist(case, name, corrupt, needle, tmp_path):
    """MNIST-M as built from MNIST's files: `gentune mnistm` gives one line, exit 2, and writes nothing."""
    mnist_files(tmp_path / "mnist")
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "photos" / "a.png")
    corrupt(tmp_path / "mnist" / name)
    p = gentune("mnistm", str(tmp_path / "mnist"), str(tmp_path / "photos"), "--out", str(tmp_path / "out"),
                "--split", "test", check=False)
    one_line(p, "mnistm", needle)
    assert not (tmp_path / "out").exists()


SVHN_X = (np.arange(32 * 32 * 3 * 3) % 256).astype(np.uint8).reshape(32, 32, 3, 3)


def mat(**kv) -> Callable[[Path], None]:
    """Write the .mat with X and y (3 images: digits 0, 1, 5) as given, the others as in the valid file."""
    return lambda p: scipy.io.savemat(p, {"X": SVHN_X, "y": np.array([[10], [1], [5]], np.uint8), **kv})


SVHN_CASES = [  # (case, corrupt(file), needle)
    ("truncated", truncate, "cannot read SVHN .mat file"),
    ("empty", empty, "cannot read SVHN .mat file"),
    ("not a .mat", lambda p: p.write_bytes(b"garbage\n" * 40), "Unknown mat file type"),
    ("no y", lambda p: scipy.io.savemat(p, {"X": SVHN_X}), "has no variable 'y'"),
    ("X not uint8", mat(X=SVHN_X.astype(np.float64)), "has dtype float64, expected uint8"),
    ("X wrong shape", mat(X=SVHN_X[:28, :28]), "has shape (28, 28, 3, 3), expected (32, 32, 3, N)"),
    ("y strings", mat(y=np.array(["a", "b", "c"])), "expected numeric labels (N, 1)"),
    ("y two columns", mat(X=np.concatenate([SVHN_X, SVHN_X], 3), y=np.ones((3, 2))), "is float64 (3, 2), expected numeric labels (N, 1)"),
    ("label 0", mat(y=np.array([[10], [0], [5]])), "label 0 at index 1 of y"),
    ("label 11", mat(y=np.array([[10], [11], [5]])), "label 11 at index 1 of y"),
    ("label 2.5", mat(y=np.array([[10], [2.5], [5]])), "label 2.5 at index 1 of y"),
    ("count mismatch", mat(y=np.array([[10], [1]])), "has 3 images in X but 2 labels in y"),
    ("no images", mat(X=SVHN_X[..., :0], y=np.zeros((0, 1))), "holds no images"),
    ("folder", to_folder, "is not a file"),
]


@pytest.mark.parametrize("case,corrupt,needle", SVHN_CASES, ids=[c[0] for c in SVHN_CASES])
def test_svhn_mat_refused(case, corrupt, needle, tmp_path):
    from trainables.formats import read_svhn

    path = tmp_path / "test_32x32.mat"
    mat()(path)
    assert read_svhn(tmp_path, "test")[1].tolist() == [0, 1, 5]
    corrupt(path)
    refused(lambda: read_svhn(tmp_path, "test"), path.name, needle)


def usps_text(labels=(10, 1, 7)) -> str:
    values = " ".join(f"{i}:{v:.6f}" for i, v in enumerate(np.linspace(-1, 1, 256), start=1))
    return "".join(f"{label} {values}\n" for label in labels)


def usps_edit(fn: Callable[[str], str]) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(bz2.compress(fn(bz2.decompress(p.read_bytes()).decode()).encode()))


USPS_CASES = [  # (case, corrupt(file), needle)
    ("not bzip2", lambda p: p.write_bytes(b"garbage" * 9), "Invalid data stream"),
    ("truncated", truncate, "Compressed file ended"),
    ("no samples", usps_edit(lambda t: ""), "holds no samples"),
    ("short line", usps_edit(lambda t: t.replace(" 256:1.000000", "", 1)), "line 1: expected '<label> 1:<v> 2:<v> ... 256:<v>' with each v in [-1, 1], found 255 values"),
    ("blank line", usps_edit(lambda t: t.replace("\n", "\n\n", 1)), "line 2: expected '<label> 1:<v>"),
    ("out of range", usps_edit(lambda t: t.replace(" 256:1.000000", " 256:3.5", 1)), 'line 1: expected \'<label> 1:<v> 2:<v> ... 256:<v>\' with each v in [-1, 1], found "256:3.5"'),
    ("not a number", usps_edit(lambda t: t.replace(" 2:", " 2:x", 1)), 'found "2:x-0.992157"'),
    ("index out of place", usps_edit(lambda t: t.replace(" 1:", " 2:", 1)), 'found "2:-1.000000"'),
    ("label 11", usps_edit(lambda t: "11" + t.removeprefix("10")), "label 11 on line 1"),
    ("label 0", usps_edit(lambda t: t.replace("\n1 ", "\n0 ", 1)), "label 0 on line 2"),
    ("folder", to_folder, "is not a file"),
]


@pytest.mark.parametrize("case,corrupt,needle", USPS_CASES, ids=[c[0] for c in USPS_CASES])
def test_usps_libsvm_refused(case, corrupt, needle, tmp_path):
    from trainables.formats import read_usps

    path = tmp_path / "usps.t.bz2"
    path.write_bytes(bz2.compress(usps_text().encode()))
    assert read_usps(tmp_path, "test")[1].tolist() == [9, 0, 6]
    corrupt(path)
    refused(lambda: read_usps(tmp_path, "test"), path.name, needle)


MNISTM_IMAGE_CASES = [  # (case, corrupt(the layout's root), file named, needle)
    ("truncated image", lambda root: truncate(root / "mnist_m_train" / "00000001.png"), "00000001.png", "truncated"),
    ("image of another size", lambda root: Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(
        root / "mnist_m_train" / "00000002.png"), "00000002.png", "is 16x16 (HxW) but"),
    ("image a folder", lambda root: to_folder(root / "mnist_m_train" / "00000001.png"), "00000001.png", "which does not exist"),
    ("labels a folder", lambda root: to_folder(root / "mnist_m_train_labels.txt"), "mnist_m_train_labels.txt", "is not a file"),
]


@pytest.mark.parametrize("case,corrupt,name,needle", MNISTM_IMAGE_CASES, ids=[c[0] for c in MNISTM_IMAGE_CASES])
def test_mnistm_images_refused(case, corrupt, name, needle, tmp_path):
    from trainables.formats import read_mnistm

    mnistm_layout(tmp_path)
    corrupt(tmp_path)
    refused(lambda: read_mnistm(tmp_path, "train"), name, needle)


CELEBA_CASES = [
    ("duplicated", "000002.jpg 0\n", "line 4: expected each image once; 000002.jpg is already listed with partition 0"),
    ("contradictory", "000001.jpg 2\n", "line 4: expected each image once; 000001.jpg is already listed with partition 0 (contradictory)"),
]


@pytest.mark.parametrize("case,line,needle", CELEBA_CASES, ids=[c[0] for c in CELEBA_CASES])
def test_celeba_partition_lists_each_image_once(case, line, needle, tmp_path):
    from trainables.formats import read_celeba

    (tmp_path / "img_align_celeba").mkdir()
    for i in range(1, 4):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(tmp_path / "img_align_celeba" / f"{i:06d}.jpg")
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("000001.jpg 0\n000002.jpg 0\n000003.jpg 1\n")
    assert len(read_celeba(tmp_path, "train")[0]) == 2
    part.write_text(part.read_text() + line)
    refused(lambda: read_celeba(tmp_path, "train"), part.name, needle)


@pytest.mark.slow
@pytest.mark.parametrize("source,case", [("svhn", "label 0"), ("usps", "out of range")])
def test_train_refuses_a_damaged_dataset_file(source, case, tmp_path):
    """The CLI path: `gentune train` on a damaged SVHN/USPS file gives one line, exit 2, and writes nothing."""
    data = tmp_path / "data"
    data.mkdir()
    if source == "svhn":
        path, (_, corrupt, needle) = data / "train_32x32.mat", next(c for c in SVHN_CASES if c[0] == case)
        mat()(path)
    else:
        path, (_, corrupt, needle) = data / "usps.bz2", next(c for c in USPS_CASES if c[0] == case)
        path.write_bytes(bz2.compress(usps_text().encode()))
    corrupt(path)
    out = tmp_path / "run"
    p = gentune("train", str(REPO / "search" / "specs" / "dann.yaml"), "--set", "epochs=1", "--set", "steps_per_epoch=1",
                "--set", "batch_size=4", "--set", "eval_every=1", "--set", f"target.source={source}",
                "--set", f"target.root={data}", "--out", str(out), "--quiet", check=False,
                env={"GENTUNE_CACHE": str(tmp_path / "cache")})
    one_line(p, "train", needle)
    assert path.name in p.stderr and not out.exists()


# --- gentune train's own folder ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated", "folder", "contradictory", "metrics folder"])
def test_train_refuses_a_damaged_run_folder(case, smoke_sweep, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    ck = checkpoints(smoke_sweep["root"])[0]
    shutil.copy(ck, out / "checkpoint.pt")
    {"truncated": lambda: truncate(out / "checkpoint.pt"), "folder": lambda: to_folder(out / "checkpoint.pt"),
     "contradictory": lambda: edit_ckpt(lambda c: c.__setitem__("epoch", c["epoch"] + 1))(out / "checkpoint.pt"),
     "metrics folder": lambda: (out / "metrics.jsonl").mkdir()}[case]()
    before = tree_hash(out)
    p = gentune("train", str(REPO / "search" / "specs" / "dann.yaml"), "--smoke", "--out", str(out), "--quiet", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert len([x for x in p.stderr.splitlines() if x.startswith("gentune train: error:")]) == 1
    assert tree_hash(out) == before


def test_status_reads_past_a_line_being_written_only_while_the_driver_lives(sweep_copy):
    """A result line half-appended is what a live sweep leaves between two writes: status shows the trial
    without it. The same file with no driver holding the folder is a damaged file, refused naming the line."""
    from analysis.status import read_status
    from trainables.lease import Lease
    from trainables.storage import Folder
    from trainables.errors import GentuneError

    res = result_file(sweep_copy)
    lines = res.read_text().splitlines()
    with open(res, "a") as f:
        f.write(lines[-1][: len(lines[-1]) // 2])  # no newline: being appended
    uri = f"sqlite:///{sweep_copy / 'mlflow.db'}"
    lock = Lease.acquire(Folder(str(sweep_copy)))  # this process holds the folder as a running driver does
    try:
        st = read_status(sweep_copy, tracking_uri=uri)
        assert st.driver_alive and any(s.name == "dann" and len(s.trials) == 2 for s in st.studies)
    finally:
        lock.release()
    with pytest.raises(GentuneError, match=rf"result.json: line {len(lines) + 1}"):
        read_status(sweep_copy, tracking_uri=uri)
