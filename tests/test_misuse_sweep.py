"""Misuse of `gentune sweep` (issue 12, the driver's side): each through the real CLI where it is cheap,
checking the exit code, the one line, and that nothing outside the named output changed."""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest

from trainables.errors import SpecError
from search.spec import load_spec, parse_spec
from tests.conftest import SPECS, gentune

SMALL = """\
name: small
resources: {cpu: 1, gpu: 0}
family: dann
config: {epochs: 2, steps_per_epoch: 1, batch_size: 16}
search:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
budget: {trials: 2}
"""


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def one_line_error(p, needle: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    errs = [x for x in p.stderr.splitlines() if x.startswith("gentune sweep: error:")]
    assert len(errs) == 1 and needle in errs[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr


def sweep_json(spec: Path) -> dict:
    """sweep.json as the driver writes it for `spec` (no trials run yet)."""
    return {"name": "small", "tracking_uri": "", "local_store": True, "experiment_id": "1", "studies": ["dann"],
            "spec": load_spec(spec).source, "smoke": False}


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


@pytest.mark.parametrize("text,needle", [
    (SMALL.replace("name: small", "name: ../../x"), "name: '../../x' is not a plain name"),
    (SMALL.replace("name: small", "name: \"a'b\""), "is not a plain name"),
    (SMALL.replace("budget: {trials: 2}", "budget: {trials: 2.5}"), "budget.trials: expected an integer, got 2.5"),
    (SMALL + "concurrency: 0.5\n", "concurrency: expected an integer, got 0.5"),
    (SMALL + "max_failures: -1\n", "max_failures: -1 is out of range"),
    (SMALL.replace("config: {epochs: 2,", "config: {epochs: 2, epochs: 3,"), "key 'epochs' is given twice"),
    (SMALL + "config: {lr: 5.0}\n", "key 'config' is given twice"),
])
def test_bad_specs_are_refused_before_ray(text, needle, tmp_path) -> None:
    storage = tmp_path / "s"
    p = gentune("sweep", str(write(tmp_path, text)), "--storage", str(storage), check=False)
    one_line_error(p, needle)
    assert not storage.exists() or not any(storage.iterdir())


def test_bad_cli_arguments_are_one_line(tmp_path) -> None:
    spec = write(tmp_path, SMALL)
    one_line_error(gentune("sweep", str(spec), "--name", "", "--storage", str(tmp_path / "s"), check=False), "--name: '' is not a plain name")
    one_line_error(gentune("sweep", str(spec), "--name", "../up", "--storage", str(tmp_path / "s"), check=False), "not a plain name")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    one_line_error(gentune("sweep", str(binary), check=False), "not a text file")
    afile = tmp_path / "storage-file"
    afile.write_text("not a folder")
    before = afile.read_bytes()
    p = gentune("sweep", str(spec), "--storage", str(afile), "--smoke", check=False)
    one_line_error(p, "")
    assert afile.read_bytes() == before


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_resume_needs_an_existing_sweep_with_the_same_spec(tmp_path) -> None:
    spec = write(tmp_path, SMALL)
    storage = tmp_path / "s"
    one_line_error(gentune("sweep", str(spec), "--storage", str(storage), "--name", "smal", "--resume", check=False),
                   "--resume: there is no sweep in")
    assert not (storage / "smal").exists()
    # a sweep folder as the driver leaves it (sweep.json holds the spec it ran)
    root = storage / "small"
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps(sweep_json(spec)))
    before = tree_digest(root)
    p = gentune("sweep", str(spec), "--storage", str(storage), "--resume", "--set", "lr=0.5", check=False)
    one_line_error(p, "--resume: the spec differs from the one small ran with in --set lr")
    p = gentune("sweep", str(spec), "--storage", str(storage), "--resume", "--smoke", check=False)
    one_line_error(p, "--smoke")
    assert tree_digest(root) == before


def test_a_second_driver_on_the_same_folder_is_refused(tmp_path, cache_dir) -> None:
    from trainables.lease import Lease
    from trainables.storage import Folder

    spec = write(tmp_path, SMALL)
    root = tmp_path / "s" / "small"
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps(sweep_json(spec)))
    lock = Lease.acquire(Folder(str(root)))  # as a running `gentune sweep` holds it
    try:
        p = gentune("sweep", str(spec), "--storage", str(tmp_path / "s"), "--resume", check=False)
        one_line_error(p, f"is in use by another gentune sweep: pid {os.getpid()} on host {socket.gethostname()} since ")
    finally:
        lock.release()


def test_relative_paths_mean_what_they_mean_next_to_the_spec(tmp_path, monkeypatch) -> None:
    data = tmp_path / "project" / "data" / "good"
    data.mkdir(parents=True)
    spec = write(tmp_path / "project", "family: gan\nconfig: {data: {source: folder, root: data/good}, cache_dir: cache}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    st = load_spec(spec).studies[0]
    assert st.config["data.root"] == str(data) and st.config["cache_dir"] == str(tmp_path / "project" / "cache")
    # --set paths are relative to where the command is typed
    (elsewhere / "other").mkdir()
    st = load_spec(spec, ["data.root=other"]).studies[0]
    assert st.config["data.root"] == str(elsewhere / "other")
    with pytest.raises(SpecError, match="dataset folder .*missing does not exist"):
        load_spec(spec, ["data.root=missing"])


def test_yaml_switches_and_multi_family_sets() -> None:
    st = load_spec(SPECS / "gan.yaml", ["fid=off"]).studies[0]  # YAML reads a bare off as False
    assert st.config["fid"] == "off" and st.metric == "face_score"
    spec = load_spec(SPECS / "quickstart.yaml", ["n_eval=16", "n_per_digit=1"])  # each key goes where it exists
    fams = {s.name: s for s in spec.studies}
    assert fams["gan"].config["n_eval"] == 16 and fams["ddpm"].config["n_per_digit"] == 1
    with pytest.raises(SpecError, match="--set n_evl: unknown config key"):
        load_spec(SPECS / "quickstart.yaml", ["n_evl=16"])


def test_plain_names_are_checked_in_studies_too() -> None:
    with pytest.raises(SpecError, match=r"studies\[0\].name: 'a/b' is not a plain name"):
        parse_spec({"name": "x", "studies": [{"name": "a/b", "family": "dann"}]})
