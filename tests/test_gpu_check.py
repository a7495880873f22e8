"""benchmarks.gpu_check, the one prepared GPU check, on the CPU: its prepare step builds the folder to
carry from ../shared/datasets, and everything it runs imports and runs on a machine with torch,
torchvision, numpy and Pillow alone plus that folder's site/ (the bare GPU machine, emulated here by
a sitecustomize that takes the venv's other packages off sys.path). Not a measurement."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.conftest import shared_datasets

REPO = Path(__file__).resolve().parents[1]

# top-level names (lowercase, before any '-' or '.') of the venv entries the GPU machine has too: torch,
# torchvision, numpy, Pillow and what they pull in
BARE_ALLOW = {"torch", "torchvision", "torchgen", "functorch", "numpy", "pil", "pillow", "typing_extensions", "sympy",
              "isympy", "mpmath", "networkx", "filelock", "jinja2", "markupsafe", "fsspec", "triton", "nvidia", "nvidia_cublas",
              "cuda", "cuda_bindings", "cuda_pathfinder", "cuda_toolkit", "setuptools", "pkg_resources", "_distutils_hack",
              "packaging"}

SITECUSTOMIZE = textwrap.dedent('''
    """Emulated bare GPU machine: the venv's site-packages leave sys.path; only GPUCHECK_BARE (links to
    torch, torchvision, numpy, Pillow and their dependencies) stays."""
    import os
    import sys

    _pure = {os.path.realpath(p) for p in os.environ["GPUCHECK_VENV_SITE"].split(os.pathsep)}
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") not in _pure] + [os.environ["GPUCHECK_BARE"]]
''')


def bare_env(tmp: Path) -> dict[str, str]:
    """Environment for a subprocess that sees what a bare GPU machine has (and its subprocesses too)."""
    paths = sysconfig.get_paths()
    venv_sites = sorted({paths["purelib"], paths["platlib"]})
    bare = tmp / "bare-site"
    if not bare.exists():
        bare.mkdir(parents=True)
        for site in venv_sites:
            for entry in Path(site).iterdir():
                name = entry.name.lower()
                for sep in ("-", "."):
                    name = name.split(sep)[0]
                if name in BARE_ALLOW and not (bare / entry.name).exists():
                    (bare / entry.name).symlink_to(entry)
        hook = tmp / "bare-hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": str(tmp / "bare-hook"), "GPUCHECK_BARE": str(bare),
            "GPUCHECK_VENV_SITE": os.pathsep.join(venv_sites), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_py(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """`python -m benchmarks.gpu_check --prepare DIR --limit 300` (a few hundred images per domain)."""
    shared = shared_datasets()
    if not (shared / "mnist_m" / "mnist_m_test_labels.txt").is_file() or not (shared / "usps" / "usps.t.bz2").is_file():
        pytest.skip(f"needs the shared MNIST-M and USPS files under {shared}")
    data = tmp_path_factory.mktemp("gpucheck") / "data"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENTUNE_CACHE": str(data.parent / "unused-cache")}
    p = run_py(["-m", "benchmarks.gpu_check", "--prepare", str(data), "--shared", str(shared), "--limit", "300"], env, 300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "gpu_check: prepared" in p.stdout
    return data


def test_prepare_builds_the_report_layout_and_the_carried_folder(prepared):
    from trainables import formats

    m = json.loads((prepared / "manifest.json").read_text())
    assert m["report"]["mnistm"] == {"from": m["report"]["mnistm"]["from"], "train": 240, "val": 60}
    for dom in ("mnistm", "usps"):
        x, y = formats.read_report_digits(prepared / "report", dom, "train")
        xv, _ = formats.read_report_digits(prepared / "report", dom, "val")
        assert x.dtype.name == "uint8" and x.shape[-1] == 3 and len(x) + len(xv) == 300
        assert set(y.tolist()) <= set(range(10))
    for pkg in ("yaml", "pytorch_fid"):
        assert (prepared / "site" / pkg / "__init__.py").is_file()
        assert not list((prepared / "site" / pkg).glob("*.so"))  # pure Python only: any interpreter version
    assert list((prepared / "cache" / "datasets").glob("demo-*-64-*.pt"))  # the throughput workloads' data
    total = sum(f.stat().st_size for f in prepared.rglob("*") if f.is_file())
    assert total < 40 * 2**20


def test_everything_imports_on_a_bare_machine(prepared, tmp_path):
    """With torch/torchvision/numpy/Pillow and the carried site/ only, every module the GPU check runs imports,
    and the other packages really are gone."""
    env = bare_env(tmp_path)
    env["PYTHONPATH"] += os.pathsep + str(prepared / "site")
    code = textwrap.dedent('''
        import importlib
        for gone in ("scipy", "sklearn", "skimage", "ray", "mlflow", "optuna", "safetensors", "pandas"):
            try:
                importlib.import_module(gone)
            except ImportError:
                continue
            raise SystemExit(f"{gone} is importable: the emulation leaks")
        import yaml, pytorch_fid
        assert "site" in yaml.__file__ and "site" in pytorch_fid.__file__, (yaml.__file__, pytorch_fid.__file__)
        for mod in ("benchmarks.gpu_check", "benchmarks.throughput", "benchmarks.reference", "search.cli", "search.spec",
                    "trainables.gan", "trainables.ddpm", "trainables.dann", "trainables.evaluator", "trainables.standalone",
                    "trainables.metrics.fid", "torchvision.datasets"):
            importlib.import_module(mod)
        from search.cli import build_parser
        build_parser()
        print("imports ok")
    ''')
    p = run_py(["-c", code], env, 120)
    assert p.returncode == 0 and "imports ok" in p.stdout, p.stdout[-2000:] + p.stderr[-3000:]


def test_cli_refuses_a_missing_prepared_folder(tmp_path):
    p = run_py(["-m", "benchmarks.gpu_check", "--device", "cpu", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)],
               {**os.environ, "OMP_NUM_THREADS": "1"}, 120)
    assert p.returncode != 0 and "--prepare" in p.stderr


@pytest.mark.slow
def test_cpu_dry_run_on_a_bare_machine(prepared, tmp_path):
    """The whole check with --device cpu --tiny where only torch/torchvision/numpy/Pillow and site/ exist:
    every phase runs, and gpu_check.md holds the throughput table, packing, the three training runs'
    accuracies and the targets."""
    out = tmp_path / "out"
    p = run_py(["-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--data", str(prepared), "--out", str(out)],
               bare_env(tmp_path), 900)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-3000:]
    md = (out / "gpu_check.md").read_text()
    res = json.loads((out / "gpu_check.json").read_text())
    assert not res["errors"] and not res["skipped"], res["errors"] + res["skipped"]
    fams = {r["family"] for r in res["rows"]}
    assert fams == {"data", "gan-a", "gan-b", "ddpm", "dann", "fid"}, fams
    assert any("Inception features" in r["what"] for r in res["rows"])
    assert any(e.startswith("pack dann x2: aggregate") for e in res["pack"]), res["pack"]
    runs = {r["run"]: r for r in res["train"]}
    assert set(runs) == {"dann-source-only", "dann", "ddpm"}
    for name in ("dann-source-only", "dann"):
        # the reported accuracy is the run's own last evaluation (its metrics.jsonl, copied to train_metrics.jsonl)
        lines = [json.loads(x) for x in (out / "train_metrics.jsonl").read_text().splitlines() if x.strip()]
        evals = [m for m in lines if m["run"] == name and "target_acc" in m]
        assert runs[name]["status"] == "finished" and evals, runs[name]
        acc = runs[name]["final"]["target_acc"]
        assert acc == evals[-1]["target_acc"] and runs[name]["final"]["epoch"] == evals[-1]["epoch"]
        assert f"| {name} | finished | " in md and f"| {acc:.4f} |" in md
    dd = runs["ddpm"]["final"]
    assert {"acc_w0", "acc_w1", "acc_w2", "evaluator_val_acc"} <= set(dd), dd
    assert res["profile"] and "| dann-source-only | finished |" in md and "Targets (H100/H200):" in md
    for name in ("gpu_check.log", "train_metrics.jsonl", "ddpm_samples.png", "profile.txt"):
        assert (out / name).is_file(), name
    assert len(list(out.iterdir())) <= 8  # the device tool returns at most 8 files


def test_targets_and_markdown_read_gpu_shaped_results():
    """The GPU-only lines (graph vs eager, packing with per-trial memory, memory per family) are read
    into the targets and the markdown section, met and not met."""
    from benchmarks.gpu_check import markdown, targets

    def row(family, what, batch, ref, gen):
        return {"family": family, "what": what, "batch": batch, "ref_img_s": ref, "gentune_img_s": gen,
                "ratio": gen / ref, "ratios": [gen / ref]}

    res = {"env": {"device": "NVIDIA H200 (torch x)", "commit": "abc", "date": "d", "command": "c"}, "phases": {"bench": 1.0},
           "rows": [row("gan-a", "training step incl. data (20 steps)", 256, 1100.0, 30000.0),
                    row("gan-b", "training step incl. data (20 steps)", 256, 9000.0, 9500.0),
                    row("ddpm", "guided sampling, 100 samples, T=500, w=1", 100, 14.5, 80.0),
                    row("dann", "training step, source+target images (40 steps)", 256, 20000.0, 70000.0),
                    row("fid", "Inception features of 1000 64x64 samples", 1000, 900.0, 1500.0)],
           "extra": ["ddpm: CUDA graph vs eager sampler, 100 samples, T=500, w=1, same seed: bf16 max |diff| = 1.0e-02 "
                     "(relative 5.0e-03, within tolerance 0.02); fp32 max |diff| = 1.0e-05 (relative 1.0e-05, within tolerance 0.001)"],
           "pack": ["memory dann: peak 300 MiB allocated, 400 MiB reserved per trial (of 143000 MiB; by memory 476 would fit)",
                    "pack dann x1: aggregate 70,000 img/s (per trial 70,000), 1.00x one trial; peak MiB allocated per trial 300",
                    "pack dann x2: aggregate 120,000 img/s (per trial 60,000, 60,000), 1.71x one trial; peak MiB allocated per trial 300, 301"],
           "train": [], "errors": [], "skipped": [], "wall_s": 10.0}
    res["targets"] = t = targets(res, "cuda")
    text = "\n".join(t)
    assert "GAN A >= 25,000 img/s (batch 256, incl. data): 30,000 -> met" in text
    assert "GAN B >= 1.5x its fp32 eager reference: 1.06 -> NOT met" in text
    assert "DDPM 100 guided samples at T=500 <= 1.5 s: 1.250 -> met" in text
    assert "2 DANN trials packed >= 1.8x one: 1.71 -> NOT met" in text
    assert "FID features of 1,000 64x64 images <= 1 s: 0.667 -> met" in text
    assert "CUDA-graph sampler equals eager: within tolerance" in text
    md = markdown(res)
    assert "| gan-a | training step incl. data (20 steps) | 256 | 1,100.0 | 30,000.0 | 27.27 |" in md
    assert "peak MiB allocated per trial 300, 301" in md and "search/specs GPU fractions per trial now: gan" in md
