"""Misuses a new user makes (issue 12), each through the real CLI: the exit code, the one error line, and
that nothing outside the named output changed (a checksum of the folder tree before and after).

The analysis commands' part: `export --force` beside other files, `generate` with values it cannot
sample (or an --out it cannot write), broken or foreign MLflow stores under `compare` / `export`, `ui`
ports, FID weights that are no checkpoint, and a sweep folder copied with `cp -r` that must read and
write its own store, never the original's.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import REPO, gentune

pytestmark = pytest.mark.ray  # uses the session's smoke sweep (run with Ray in a subprocess)


# --- helpers ---------------------------------------------------------------------------------------

def tree_sum(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `root` (and the folders, so a new empty one shows)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def refused(p, cmd: str, *names: str) -> str:
    """Exit 2, no traceback, stderr is exactly one line `gentune CMD: error: ...` naming `names`."""
    out = p.stdout + p.stderr
    assert p.returncode == 2, f"exit {p.returncode}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"gentune {cmd}: error: "), p.stderr[-3000:]
    for n in names:
        assert n in lines[0], f"the error does not name {n!r}: {lines[0]}"
    return lines[0]


def run(*args: str, timeout: float = 600):
    return gentune(*args, check=False, timeout=timeout)


@pytest.fixture()
def copied(smoke_sweep, tmp_path) -> Path:
    """A `cp -r` copy of the smoke sweep, to misuse without touching the session's sweep."""
    dst = tmp_path / "copy"
    shutil.copytree(smoke_sweep["root"], dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def bundles(smoke_sweep, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("misuse-bundles")
    out = {}
    for s in ("gan", "ddpm"):
        gentune("export", str(smoke_sweep["root"]), "--study", s, "--out", str(base / s), "--quiet")
        out[s] = base / s
    return out


# --- 1. export --force replaces only gentune's own files -------------------------------------------

@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_export_force_never_deletes_other_files(smoke_sweep, tmp_path):
    root = str(smoke_sweep["root"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("three years of work\n")
    (out / "notes").mkdir()
    before = tree_sum(tmp_path)
    refused(run("export", root, "--study", "gan", "--out", str(out)), "export", str(out), "--force")
    e = refused(run("export", root, "--study", "gan", "--out", str(out), "--force"), "export", "thesis.txt", "notes")
    assert "did not write" in e
    assert tree_sum(tmp_path) == before  # nothing deleted, no temporary folder left

    b = tmp_path / "bundle"  # an earlier bundle is replaced by --force, file for file
    gentune("export", root, "--study", "gan", "--out", str(b), "--quiet")
    old = json.loads((b / "bundle.json").read_text())
    gentune("export", root, "--study", "ddpm", "--out", str(b), "--force", "--quiet")
    assert sorted(os.listdir(b)) == ["bundle.json", "model.safetensors"]
    assert json.loads((b / "bundle.json").read_text())["family"] == "ddpm" != old["family"]
    (b / "mine.txt").write_text("keep me")  # ... but not when the user put a file beside it
    before = tree_sum(tmp_path)
    refused(run("export", root, "--study", "gan", "--out", str(b), "--force"), "export", "mine.txt")
    assert tree_sum(tmp_path) == before

    f = tmp_path / "afile"  # --out naming a file, with or without --force
    f.write_text("x")
    before = tree_sum(tmp_path)
    for extra in ((), ("--force",)):
        refused(run("export", root, "--study", "gan", "--out", str(f), *extra), "export", str(f), "is a file")
    refused(run("export", root, "--study", "gan", "--out", str(f / "sub")), "export", str(f), "is a file")
    assert tree_sum(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --- 2. generate refuses what it cannot sample, before sampling -----------------------------------

GENERATE_REFUSALS = [
    ("ddpm", ["--n", "0"], ["--n", ">= 1", "0"]),
    ("gan", ["--n", "-5"], ["--n", "-5"]),
    ("ddpm", ["--n", "10001"], ["--n 10001", "10000", "--seed"]),
    ("ddpm", ["--guidance", "nan"], ["--guidance", "finite", "nan"]),
    ("ddpm", ["--guidance", "inf"], ["--guidance", "inf"]),
    ("ddpm", ["--guidance", "-1"], ["--guidance", "-1"]),
    ("ddpm", ["--digit", "12"], ["--digit", "0-9"]),
    ("gan", ["--digit", "3"], ["--digit", "DDPM", "gan bundle"]),
    ("gan", ["--guidance", "1"], ["--guidance", "DDPM"]),
]


@pytest.mark.parametrize("family,args,names", GENERATE_REFUSALS, ids=[" ".join(a) for _, a, _ in GENERATE_REFUSALS])
def test_generate_refuses_values_it_cannot_sample(bundles, tmp_path, family, args, names):
    png = tmp_path / "x.png"
    refused(run("generate", str(bundles[family]), "--out", str(png), *args), "generate", *names)
    assert not png.exists()


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_generate_refuses_an_out_it_cannot_write_before_sampling(bundles, tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    (tmp_path / "afile").write_text("x")
    before = tree_sum(tmp_path)
    cases = [(folder, ("is a folder",)), (tmp_path / "x.jpg", (".png",)), (tmp_path / "noext", (".png",)),
             (tmp_path / "afile" / "x.png", ("afile", "is a file"))]
    for out, names in cases:
        t0 = time.monotonic()
        # 10000 digits would take hours on a CPU: a refusal in seconds shows nothing was sampled first
        refused(run("generate", str(bundles["ddpm"]), "--n", "10000", "--out", str(out)), "generate", str(out), *names)
        assert time.monotonic() - t0 < 60
    assert tree_sum(tmp_path) == before


def test_generate_says_how_long_before_sampling(bundles, tmp_path):
    png = tmp_path / "sub" / "d.png"  # a missing parent folder is made
    p = gentune("generate", str(bundles["ddpm"]), "--n", "3", "--out", str(png))
    first = p.stderr.strip().splitlines()[0]
    assert first.startswith("gentune: sampling 3 digit(s)") and "grid " in first and "about " in first, p.stderr
    assert png.is_file()


# --- 3. broken or foreign tracking stores: one line -------------------------------------------------

def test_compare_with_a_tracking_uri_that_is_no_uri(smoke_sweep, tmp_path):
    root = str(smoke_sweep["root"])
    before = tree_sum(smoke_sweep["root"])
    refused(run("compare", root, "--tracking-uri", "foo"), "compare", "--tracking-uri", "'foo'", "sqlite:///")
    refused(run("compare", root, "--tracking-uri", f"sqlite:///{tmp_path}/none.db"), "compare", "none.db", "does not exist")
    refused(run("export", root, "--study", "gan", "--out", str(tmp_path / "b"), "--tracking-uri", "foo"), "export", "'foo'")
    assert not (tmp_path / "none.db").exists() and not (REPO / "foo").exists() and not (tmp_path / "b").exists()
    assert tree_sum(smoke_sweep["root"]) == before


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty-sqlite"])
def test_damaged_store_under_compare_and_export(copied, tmp_path, damage):
    db = copied / "mlflow.db"
    if damage == "truncated":
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        db.write_bytes(b"not a database\n" * 100)
    else:  # a SQLite file, but not MLflow's
        db.unlink()
        sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()
    before = tree_sum(copied)
    out = tmp_path / "bundle"
    refused(run("compare", str(copied)), "compare", str(db))
    refused(run("export", str(copied), "--study", "gan", "--out", str(out)), "export", str(db))
    refused(run("report", str(copied), "--out", str(tmp_path / "r")), "report", str(db))
    assert not out.exists() and not (tmp_path / "r").exists()
    assert tree_sum(copied) == before


# --- 4. ui ports --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,names", [(["--port", "70000"], ["--port", "70000", "65535"]),
                                        (["--port", "-1"], ["--port", "-1"]),
                                        (["--workers", "0"], ["--workers"]),
                                        (["--timeout", "nan"], ["--timeout"])])
def test_ui_refuses_impossible_options(smoke_sweep, args, names):
    refused(run("ui", str(smoke_sweep["root"]), *args, timeout=120), "ui", *names)


# --- 5. FID weights that are not a checkpoint ---------------------------------------------------------

@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_fid_weights_that_are_not_a_checkpoint(tmp_path):
    import torch
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (60 * i, 10, 200)).save(imgs / f"{i}.png")
    text = tmp_path / "weights.pth"
    text.write_text("these are my notes, not weights\n")
    objects = tmp_path / "objects.pth"
    torch.save({"net": torch.nn.Linear(2, 2)}, objects)  # a pickled module, not a state dict
    for w, why in ((text, "not a PyTorch checkpoint"), (objects, "pickled Python objects")):
        p = run("fid", str(imgs), str(imgs), "--weights", str(w), "--device", "cpu", timeout=300)
        refused(p, "fid", str(w), why)
        assert "weights_only" not in p.stderr  # gentune never suggests loading untrusted pickles


# --- 6. a copied sweep folder reads and writes its own store ------------------------------------------

def test_tracking_uri_of_a_copied_folder(tmp_path):
    from analysis.sweepdata import tracking_uri_of

    orig, copy = tmp_path / "orig", tmp_path / "copy"
    for d in (orig, copy):
        d.mkdir()
        (d / "mlflow.db").write_bytes(b"")
    own = f"sqlite:///{copy.resolve() / 'mlflow.db'}"
    old = {"tracking_uri": f"sqlite:///{orig / 'mlflow.db'}"}  # an older sweep.json, without local_store
    assert tracking_uri_of(copy, old) == own  # it names a file mlflow.db, and the folder has one
    assert tracking_uri_of(copy, {**old, "local_store": True}) == own
    assert tracking_uri_of(copy, {**old, "local_store": False}) == old["tracking_uri"]
    assert tracking_uri_of(copy, {"tracking_uri": "http://127.0.0.1:5000"}) == "http://127.0.0.1:5000"
    other = {"tracking_uri": f"sqlite:///{tmp_path / 'shared.db'}"}  # a store the sweep was pointed at
    assert tracking_uri_of(copy, other) == other["tracking_uri"]
    (copy / "mlflow.db").unlink()  # a recorded mlflow.db, but none in the folder: the recorded one
    assert tracking_uri_of(copy, old) == old["tracking_uri"]
    assert tracking_uri_of(copy, {**old, "local_store": True}) == own  # (readers then say it does not exist)


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_copied_sweep_folder_is_self_contained(smoke_sweep, copied, tmp_path):
    orig = smoke_sweep["root"]
    answers = {fmt: gentune("compare", str(orig), "--format", fmt).stdout for fmt in ("md", "csv")}
    before = tree_sum(orig)

    for fmt in ("md", "csv"):  # the copy answers as the original does
        assert gentune("compare", str(copied), "--format", fmt).stdout == answers[fmt]
    # Proof that the copy reads its own store: change it and see the change in its answer.
    con = sqlite3.connect(copied / "mlflow.db")
    con.execute("UPDATE tags SET value = 'edited-in-copy' WHERE key = 'gentune.stop_reason'")
    con.commit()
    con.close()
    assert "edited-in-copy" in gentune("compare", str(copied)).stdout

    r = tmp_path / "report"  # (one GAN trial: no DDPM sampling; every study's plots are still logged)
    gan = next(row.split(",")[1] for row in answers["csv"].splitlines()[1:] if row.startswith("gan,"))
    p = gentune("report", str(copied), "--out", str(r), "--trial", gan, "--device", "cpu", timeout=1200)
    assert "copied or moved" in p.stderr
    b = tmp_path / "bundle"
    gentune("export", str(copied), "--study", "dann", "--out", str(b), "--register", "misuse-copy", "--quiet")
    assert tree_sum(orig) == before, "the original sweep folder changed"
    logged = list((copied / "mlartifacts").rglob("report/report.md"))
    assert logged, "the report was not logged into the copy's own mlartifacts/"
    assert list((copied / "mlartifacts").rglob("bundle/bundle.json"))
    con = sqlite3.connect(copied / "mlflow.db")
    locs = [row[0] for row in con.execute("SELECT artifact_uri FROM runs")]
    con.close()
    own = (copied.resolve() / "mlartifacts").as_uri() + "/"
    assert locs and all(u.startswith(own) for u in locs), locs[:3]


def test_copy_whose_runs_write_elsewhere_is_refused(copied, tmp_path):
    """A run whose artifacts live outside the folder (not a copy's mlartifacts/): refuse, change nothing."""
    con = sqlite3.connect(copied / "mlflow.db")
    con.execute("UPDATE runs SET artifact_uri = 'file:///somewhere/else/artifacts' WHERE rowid = "
                "(SELECT min(rowid) FROM runs)")
    con.commit()
    con.close()
    before = tree_sum(copied)
    refused(run("export", str(copied), "--study", "dann", "--out", str(tmp_path / "b"), "--register", "x"),
            "export", "/somewhere/else", "not writing there")
    assert tree_sum(copied) == before and not (tmp_path / "b").exists()


# --- 7. outputs that are the wrong kind of path -------------------------------------------------------

def test_outputs_of_the_wrong_kind(smoke_sweep, tmp_path):
    root = str(smoke_sweep["root"])
    folder = tmp_path / "folder"
    folder.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    before = tree_sum(tmp_path)
    refused(run("compare", root, "--out", str(folder)), "compare", str(folder), "is a folder")
    refused(run("compare", root, "--out", str(afile / "t.md")), "compare", str(afile), "is a file")
    refused(run("report", root, "--out", str(afile)), "report", str(afile), "is a file")
    assert tree_sum(tmp_path) == before
