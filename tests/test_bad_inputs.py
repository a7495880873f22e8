"""A catalogue of bad inputs, each run through the real CLI in a subprocess.

Every case must end with exit code 2, no traceback, exactly one error line on stderr naming the
offending key or file, and nothing left behind that would trip a rerun: no sweep folder (a second
`gentune sweep` would demand --resume), no half-made `gentune train --out` folder for a bad spec, no
checkpoint or output file, and the user's own files untouched.

The second half checks safe loading: checkpoints carrying pickled objects are refused, every
`torch.load` reads with weights_only=True, and the servers gentune starts bind 127.0.0.1.
"""
from __future__ import annotations

import ast
import collections
import hashlib
import json
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

from conftest import REPO, gentune

PACKAGES = ("search", "models", "trainables", "analysis", "benchmarks")
# `gentune train` announces the run (and a resume) on stderr once the spec is valid: the only lines
# allowed besides the error
PROGRESS = re.compile(r"^(gentune train: \w+ \(.+\) -> \S+|gentune: resuming \S+ from epoch \d+)$")


# --------------------------------------------------------------------------------------- fixtures

def png(path: Path, size: tuple[int, int] = (16, 16), colour: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (colour, colour // 2, 255 - colour)).save(path)
    return path


def report_digits(root: Path, domain: str = "usps", n: int = 6, size: int = 16) -> Path:
    """The report's digit layout: digits/<domain>/data/*.png with train.csv / val.csv (image_name,label)."""
    d = root / "digits" / domain
    for i in range(n):
        png(d / "data" / f"{i}.png", (size, size), 20 * i)
    (d / "train.csv").write_text("image_name,label\n" + "".join(f"{i}.png,{i % 10}\n" for i in range(n - 2)))
    (d / "val.csv").write_text("image_name,label\n" + "".join(f"{i}.png,{i % 10}\n" for i in range(n - 2, n)))
    return root


def report_faces(root: Path, n: int = 3) -> Path:
    for split in ("train", "val"):
        for i in range(n):
            png(root / "face" / split / f"{i}.png", (64, 64), 40 * i)
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Payload:
    """An object whose unpickling would create `marker`: proof that loading it runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class MyDict(collections.OrderedDict):
    """A harmless dict subclass: still a pickled class, which weights_only loading must refuse."""


DANN_BASE = {"mode": "dann", "epochs": 1, "steps_per_epoch": 1, "batch_size": 16}


def dann_ckpt(**over) -> dict:
    """A gentune DANN checkpoint as far as loading and resuming look before training starts."""
    from trainables.config import DANNConfig, from_flat, to_flat

    return {"format": 1, "family": "dann", "config": to_flat(from_flat(DANNConfig, {**DANN_BASE, **over})), "epoch": 1,
            "state": {}, "rng": {"cpu": torch.get_rng_state()}, "history": [{"epoch": 1}], "stop_reason": None,
            "code_version": "test"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """A GAN and a DANN bundle written by analysis.export.write_bundle from untrained models (no sweep needed)."""
    from analysis.export import build_models, write_bundle
    from trainables.config import from_flat, to_flat
    from trainables.families import config_class

    base = tmp_path_factory.mktemp("bundles")
    out = {}
    for fam, flat in (("gan", {"epochs": 1, "fid": "off"}), ("dann", dict(DANN_BASE))):
        cfg = from_flat(config_class(fam), flat)
        state = {k: m.state_dict() for k, m in build_models(fam, cfg).items()}
        ckpt = {"format": 1, "family": fam, "config": to_flat(cfg), "epoch": 1, "state": state}
        out[fam] = write_bundle(base / fam, ckpt, metrics={}, quiet=True)
    return out


# --------------------------------------------------------------------------------------- the catalogue

@dataclass
class Run:
    """What a case runs and what it must (not) leave behind."""

    args: list[str]
    names: tuple[str, ...]  # substrings the error line must hold (the offending key / file)
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards
    unchanged: list[Path] = field(default_factory=list)  # the user's files: same bytes afterwards
    rerun: bool = False  # run it twice: the second run must fail the same way (nothing left that trips it)


class T:
    """Per-case paths and writers under the test's tmp folder."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.storage = tmp / "sweeps"
        self.out = tmp / "out"

    def spec(self, text: str, name: str = "bad") -> Path:
        p = self.tmp / f"{name}.yaml"
        p.write_text(text)
        return p

    def sweep(self, text: str, *extra: str, names: tuple[str, ...], rerun: bool = False, name: str = "bad") -> Run:
        """`gentune sweep` of a spec that must be refused before its sweep folder exists."""
        spec = self.spec(text, name)
        return Run(["sweep", str(spec), "--storage", str(self.storage), "--quiet", *extra], names,
                   absent=[self.storage / name], rerun=rerun)

    def train(self, text: str, *extra: str, names: tuple[str, ...], absent: list[Path] | None = None,
              unchanged: list[Path] | None = None, rerun: bool = False) -> Run:
        spec = self.spec(text)
        return Run(["train", str(spec), "--out", str(self.out), "--quiet", *extra], names,
                   absent=[self.out] if absent is None else absent, unchanged=unchanged or [], rerun=rerun)

    def dann_report(self, root: Path, *, split_of: str = "target") -> str:
        """A tiny DANN spec reading its target domain (usps) from the report layout at `root`."""
        return (f"family: dann\nconfig: {{mode: dann, epochs: 1, steps_per_epoch: 1, batch_size: 8,\n"
                f"  {split_of}: {{source: report, root: '{root}', domain: usps}}}}\n")

    def gan_report(self, root: Path) -> str:
        return (f"family: gan\nconfig: {{epochs: 1, steps_per_epoch: 1, batch_size: 2, n_eval: 2, fid: 'off',\n"
                f"  data: {{source: report, root: '{root}'}}}}\n")

    def checkpoint(self, obj) -> Path:
        p = self.out / "checkpoint.pt"
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, p)
        return p

    def dann_spec(self, **over) -> str:
        cfg = {**DANN_BASE, **over}
        return "family: dann\nconfig: " + json.dumps(cfg) + "\n"


def data_case(t: T, mutate: Callable[[Path], None], names: tuple[str, ...], via: str = "sweep", rerun: bool = False) -> Run:
    root = report_digits(t.tmp / "hw")
    mutate(root / "digits" / "usps")
    if via == "sweep":
        return t.sweep(t.dann_report(root), names=names, rerun=rerun)
    return t.train(t.dann_report(root), names=names, absent=[t.out / "checkpoint.pt"], rerun=rerun)


def truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def face_case(t: T, mutate: Callable[[Path], None], names: tuple[str, ...]) -> Run:
    root = report_faces(t.tmp / "hw")
    mutate(root / "face")
    return t.train(t.gan_report(root), names=names, absent=[t.out / "checkpoint.pt"])


def ckpt_case(t: T, ckpt: dict, names: tuple[str, ...], *, cut: int = 0, spec: dict | None = None,
              absent: list[Path] | None = None) -> Run:
    """`gentune train` into an --out folder that already holds `ckpt` (truncated to `cut` bytes if given)."""
    p = t.checkpoint(ckpt)
    if cut:
        truncate(p, cut)
    return Run(["train", str(t.spec(t.dann_spec(**(spec or {})))), "--out", str(t.out), "--quiet"], names,
               absent=absent or [], unchanged=[p])


def existing_sweep_case(t: T) -> Run:
    (t.storage / "taken").mkdir(parents=True)
    (t.storage / "taken" / "sweep.json").write_text("{}")
    spec = t.spec("family: dann\n", "taken")
    return Run(["sweep", str(spec), "--storage", str(t.storage), "--quiet"], ("taken", "--resume"),
               unchanged=[t.storage / "taken" / "sweep.json"])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


CASES: list[tuple[str, Callable[..., Run]]] = [
    # ---- specs (refused by `gentune sweep` before Ray starts and before the sweep folder exists)
    ("spec-unknown-top-level-key", lambda t: t.sweep("family: dann\nfoo: 1\n", names=("unknown key 'foo'",))),
    ("spec-unknown-config-key", lambda t: t.sweep("family: dann\nconfig: {lrr: 0.1}\n", names=("config.lrr",))),
    ("spec-empty-range", lambda t: t.sweep("family: dann\nsearch: {lr: {loguniform: [1.0e-2, 1.0e-4]}}\n",
                                           names=("search.lr.loguniform", "empty range"))),
    ("spec-loguniform-not-positive", lambda t: t.sweep("family: dann\nsearch: {lr: {loguniform: [0, 1.0e-3]}}\n",
                                                       names=("search.lr.loguniform", "> 0"))),
    ("spec-range-end-refused-by-config", lambda t: t.sweep("family: dann\nsearch: {lamb: {uniform: [-1.0, 0.5]}}\n",
                                                           names=("search.lamb",))),
    ("spec-wrong-type", lambda t: t.sweep("family: dann\nconfig: {epochs: ten}\n", names=("epochs", "'ten'"))),
    ("spec-wrong-type-in-domain", lambda t: t.sweep("family: dann\nsearch: {lr: {uniform: [low, 1.0]}}\n",
                                                    names=("search.lr.uniform", "'low'"))),
    ("spec-bad-choice-value", lambda t: t.sweep("family: dann\nconfig: {lambda_schedule: cosine}\n",
                                                names=("lambda_schedule", "'cosine'"))),
    ("spec-out-of-range-value", lambda t: t.sweep("family: dann\nconfig: {batch_size: 0}\n", names=("batch_size",))),
    ("spec-search-key-not-in-config", lambda t: t.sweep("family: dann\nsearch: {depth: {choice: [1, 2]}}\n",
                                                        names=("search.depth",))),
    ("spec-unsupported-family", lambda t: t.sweep("family: vae\n", names=("unknown family 'vae'",))),
    ("spec-missing-family", lambda t: t.sweep("config: {epochs: 1}\n", names=("'family'",))),
    ("spec-bad-mode", lambda t: t.sweep("family: dann\nmode: maximize\n", names=("mode", "'maximize'"))),
    ("spec-zero-trials", lambda t: t.sweep("family: dann\nbudget: {trials: 0}\n", names=("budget.trials",))),
    ("spec-missing-data-path", lambda t: t.sweep("family: dann\nconfig: {target: {source: report, domain: usps}}\n",
                                                 names=("config.target.root",))),
    ("spec-data-folder-missing", lambda t: t.sweep(
        f"family: dann\nconfig: {{target: {{source: report, root: '{t.tmp / 'nowhere'}', domain: usps}}}}\n",
        names=("config.target.root", "nowhere"))),
    ("spec-not-yaml", lambda t: t.sweep("family: [dann\n", names=("bad.yaml", "not valid YAML"))),
    ("spec-not-a-mapping", lambda t: t.sweep("- family: dann\n", names=("bad.yaml", "mapping"))),
    ("spec-set-without-value", lambda t: t.sweep("family: dann\n", "--set", "lr", names=("--set 'lr'",))),
    ("spec-set-unknown-key", lambda t: t.sweep("family: dann\n", "--set", "lrr=0.1", names=("--set lrr",))),
    ("spec-bad-spec-leaves-no-train-folder", lambda t: t.train("family: dann\nconfig: {epochs: -1}\n", names=("epochs",))),
    ("spec-unknown-study", lambda t: t.train("studies:\n  - {name: a, family: dann}\n  - {name: b, family: dann}\n",
                                             "--study", "c", names=("--study 'c'",))),
    # ---- data in the report layout (refused while the driver decodes it, before Ray starts)
    ("data-domain-folder-missing", lambda t: t.sweep(
        t.dann_report(report_digits(t.tmp / "hw", domain="mnistm")), names=("usps", "does not exist"))),
    ("data-csv-names-missing-image", lambda t: data_case(
        t, lambda d: (d / "train.csv").write_text("image_name,label\n0.png,0\n99.png,1\n"),
        ("train.csv line 3", "99.png"), rerun=True)),
    ("data-truncated-png", lambda t: data_case(t, lambda d: truncate(d / "data" / "1.png"), ("1.png", "cannot decode"))),
    ("data-label-out-of-range", lambda t: data_case(
        t, lambda d: (d / "train.csv").write_text("image_name,label\n0.png,0\n1.png,12\n"), ("label 12", "train.csv"))),
    ("data-label-not-a-number", lambda t: data_case(
        t, lambda d: (d / "val.csv").write_text("image_name,label\n4.png,seven\n"), ("'seven'", "val.csv"))),
    ("data-wrong-image-size", lambda t: data_case(t, lambda d: png(d / "data" / "2.png", (20, 20)),
                                                  ("2.png", "20x20"), via="train")),
    ("data-empty-split", lambda t: data_case(t, lambda d: (d / "val.csv").write_text("image_name,label\n"),
                                             ("val.csv", "empty"), via="train", rerun=True)),
    ("data-csv-bad-header", lambda t: data_case(t, lambda d: (d / "train.csv").write_text("file,digit\n0.png,0\n"),
                                                ("train.csv", "image_name,label"))),
    ("data-face-split-missing", lambda t: face_case(t, lambda f: shutil.rmtree(f / "train"), ("face", "train", "does not exist"))),
    ("data-face-truncated-png", lambda t: face_case(t, lambda f: truncate(f / "train" / "1.png"), ("1.png", "cannot decode"))),
    # ---- checkpoints in a `gentune train --out` folder (a resume reads them first)
    ("ckpt-truncated", lambda t: ckpt_case(t, dann_ckpt(), ("cannot read checkpoint",), cut=100)),
    ("ckpt-wrong-family", lambda t: ckpt_case(t, {**dann_ckpt(), "family": "gan"}, ("a gan checkpoint", "dann"))),
    ("ckpt-config-mismatch-on-resume", lambda t: ckpt_case(t, dann_ckpt(lr=0.001), ("differs", "lr"), spec={"lr": 0.01})),
    ("ckpt-pickled-object", lambda t: ckpt_case(t, {**dann_ckpt(), "extra": Payload(t.tmp / "pwned")},
                                                ("cannot read checkpoint",), absent=[t.tmp / "pwned"])),
    ("ckpt-not-gentune", lambda t: ckpt_case(t, {"weights": torch.zeros(3)}, ("not a gentune checkpoint",))),
    # ---- the CLI
    ("cli-spec-file-missing", lambda t: Run(["sweep", str(t.tmp / "nope.yaml"), "--storage", str(t.storage)],
                                            ("nope.yaml", "does not exist"), absent=[t.storage])),
    ("cli-train-spec-file-missing", lambda t: Run(["train", str(t.tmp / "nope.yaml"), "--out", str(t.out)],
                                                  ("nope.yaml",), absent=[t.out])),
    ("cli-sweep-folder-exists", lambda t: existing_sweep_case(t)),
    ("cli-unreachable-ray-address", lambda t: t.sweep("family: dann\nconfig: {epochs: 1}\n", "--address",
                                                      f"127.0.0.1:{closed_port()}", names=("--address", "127.0.0.1"))),
    ("cli-compare-missing-sweep", lambda t: Run(["compare", str(t.tmp / "nosweep")], ("nosweep", "does not exist"))),
    ("cli-status-missing-sweep", lambda t: Run(["status", str(t.tmp / "nosweep")], ("nosweep", "does not exist"))),
    ("cli-export-missing-sweep", lambda t: Run(["export", str(t.tmp / "nosweep"), "--out", str(t.out)],
                                               ("nosweep", "does not exist"), absent=[t.out])),
    ("cli-face-rate-missing-folder", lambda t: Run(["face-rate", str(t.tmp / "noimages")], ("noimages",))),
]

def generate_case(t: T, bundle: Path, names: tuple[str, ...]) -> Run:
    return Run(["generate", str(bundle), "--out", str(t.tmp / "g.png")], names, absent=[t.tmp / "g.png"])


def without_description(d: Path) -> Path:
    (d / "bundle.json").unlink()
    return d


BUNDLE_CASES: list[tuple[str, Callable[..., Run]]] = [
    ("bundle-missing", lambda t, b: generate_case(t, t.tmp / "nobundle", ("nobundle", "does not exist"))),
    ("bundle-tampered-weights", lambda t, b: generate_case(
        t, tamper(copy_bundle(b["gan"], t.tmp / "b")), ("model.safetensors", "sha256"))),
    ("bundle-truncated-weights", lambda t, b: generate_case(
        t, truncate_bundle(copy_bundle(b["gan"], t.tmp / "b")), ("model.safetensors", "cannot read"))),
    ("bundle-no-description", lambda t, b: generate_case(
        t, without_description(copy_bundle(b["gan"], t.tmp / "b")), ("bundle.json",))),
    ("bundle-wrong-family-generate", lambda t, b: generate_case(t, b["dann"], ("dann bundle",))),
    ("bundle-wrong-family-predict", lambda t, b: Run(["predict", str(b["gan"]), str(png(t.tmp / "imgs" / "a.png").parent),
                                                      "--out", str(t.tmp / "p.csv")], ("gan bundle",), absent=[t.tmp / "p.csv"])),
]


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def tamper(d: Path) -> Path:
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-8:] = bytes(8)  # change weights, keep the size
    w.write_bytes(bytes(data))
    return d


def truncate_bundle(d: Path) -> Path:
    """Truncated weights whose sha256 in bundle.json was updated to match: only reading them can fail."""
    w = d / "model.safetensors"
    truncate(w, 200)
    meta = json.loads((d / "bundle.json").read_text())
    meta["sha256"] = sha(w)
    (d / "bundle.json").write_text(json.dumps(meta))
    return d


def check_refusal(run: Run, p, what: str) -> str:
    """Exit 2, no traceback, one error line naming the offending thing; returns that line."""
    cmd = run.args[0]
    out = p.stdout + p.stderr
    assert p.returncode == 2, f"{what}: exit {p.returncode}\n{out[-3000:]}"
    assert "Traceback" not in out, f"{what}: traceback\n{out[-3000:]}"
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"gentune {cmd}: error: ")]
    assert len(errors) == 1, f"{what}: expected one error line on stderr, got:\n{p.stderr}"
    others = [line for line in lines if line not in errors and not PROGRESS.match(line)]
    assert not others, f"{what}: stderr holds more than the error:\n{p.stderr}"
    assert lines[-1] == errors[0], f"{what}: the error is not the last line:\n{p.stderr}"
    for name in run.names:
        assert name in errors[0], f"{what}: the error does not name {name!r}: {errors[0]}"
    return errors[0]


def execute(run: Run, what: str) -> None:
    before = {f: sha(f) for f in run.unchanged}
    p = gentune(*run.args, check=False, timeout=300)
    line = check_refusal(run, p, what)
    for f in run.absent:
        assert not f.exists(), f"{what}: {f} was left behind"
    for f, h in before.items():
        assert f.exists() and sha(f) == h, f"{what}: {f} was changed"
    if run.rerun:
        again = check_refusal(run, gentune(*run.args, check=False, timeout=300), f"{what} (rerun)")
        assert again == line, f"{what}: the rerun failed differently:\n{line}\n{again}"


@pytest.mark.parametrize("cid,case", CASES, ids=[i for i, _ in CASES])
def test_bad_input_is_one_clear_error(cid, case, tmp_path, cache_dir):
    execute(case(T(tmp_path)), cid)


@pytest.mark.parametrize("cid,case", BUNDLE_CASES, ids=[i for i, _ in BUNDLE_CASES])
def test_bad_bundle_is_one_clear_error(cid, case, tmp_path, bundles):
    execute(case(T(tmp_path), bundles), cid)


def test_catalogue_is_broad():
    ids = [i for i, _ in CASES + BUNDLE_CASES]
    assert len(ids) == len(set(ids)) >= 20
    for area in ("spec-", "data-", "ckpt-", "cli-", "bundle-"):
        assert sum(i.startswith(area) for i in ids) >= 2, area


# --------------------------------------------------------------------------------------- safe loading

@pytest.mark.parametrize("payload", ["code", "class"])
def test_load_checkpoint_refuses_pickled_objects(tmp_path, payload):
    from trainables.errors import CheckpointError
    from trainables.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"
    obj = Payload(marker) if payload == "code" else MyDict(a=torch.ones(1))
    path = tmp_path / "checkpoint.pt"
    torch.save({**dann_ckpt(), "extra": obj}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path, "dann")
    assert not marker.exists(), "unpickling ran the payload"
    if payload == "code":  # the payload is live: an unsafe load would have run it
        torch.load(path, weights_only=False)
        assert marker.exists()
    # the same checkpoint without the object loads
    torch.save(dann_ckpt(), path)
    assert load_checkpoint(path, "dann")["family"] == "dann"


def package_trees():
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            yield f, ast.parse(f.read_text(), filename=str(f))


def calls(tree: ast.AST, dotted: str):
    mod, _, fn = dotted.rpartition(".")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == fn
                and isinstance(node.func.value, ast.Name) and node.func.value.id == mod):
            yield node


def kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else k.value
    return None


def test_every_torch_load_reads_weights_only():
    found, bad = 0, []
    for f, tree in package_trees():
        for node in calls(tree, "torch.load"):
            found += 1
            if kw(node, "weights_only") is not True:
                bad.append(f"{f.relative_to(REPO)}:{node.lineno}")
        for name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"):
            bad += [f"{f.relative_to(REPO)}:{n.lineno} {name}" for n in calls(tree, name)]
        for node in calls(tree, "np.load"):
            if kw(node, "allow_pickle") not in (None, False):
                bad.append(f"{f.relative_to(REPO)}:{node.lineno} np.load(allow_pickle=...)")
    assert found >= 3, "the scan found no torch.load calls: is it looking in the right place?"
    assert not bad, "unsafe loads: " + ", ".join(bad)


def test_servers_gentune_starts_bind_localhost():
    inits = []
    for f, tree in package_trees():
        for node in calls(tree, "ray.init"):
            inits.append(f)
            host = kw(node, "dashboard_host")
            assert kw(node, "include_dashboard") is False or host in ("127.0.0.1", "localhost"), \
                f"{f.relative_to(REPO)}:{node.lineno}: ray.init may start a dashboard on a public interface"
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ("0.0.0.0", "::"):
                pytest.fail(f"{f.relative_to(REPO)}:{node.lineno}: binds every interface")
    assert inits, "search/sweep.py calls ray.init"
    from search.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    for name, parser in sub.items():  # any command with a --host (gentune ui) defaults to 127.0.0.1
        for a in parser._actions:
            if "--host" in a.option_strings:
                assert a.default == "127.0.0.1", f"gentune {name} --host defaults to {a.default}"
