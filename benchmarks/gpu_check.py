"""The one prepared GPU check (issue 13): every GPU measurement in one run of under 8 minutes.

Two steps, because the GPU machine is bare (torch, torchvision, numpy, Pillow; no ray, mlflow, yaml,
scikit-learn or scikit-image to count on; no internet; no ../shared):

1. Here, on a CPU machine with the venv and ../shared/datasets:

       .venv/bin/python -m benchmarks.gpu_check --prepare            # -> build/gpu_check (about 20 MiB)

   builds, under build/gpu_check/ (git-ignored: it travels with `carry`):
   - cache/   gentune's uint8 dataset cache of the demo data the throughput workloads read
              (what `python -m benchmarks.throughput --prepare-cache` writes);
   - report/  the report's folder layout, `digits/{mnistm,usps}/data/*.png` + `train.csv`/`val.csv`,
              from ../shared/datasets: the 3,000 MNIST-M test PNGs (first 80 % train, last 20 % val)
              and the 2,007 USPS test digits of `usps.t.bz2` (same split);
   - site/    pure-Python copies of the packages gentune needs beyond torch (pyyaml for `gentune
              train`'s spec, pytorch-fid's Inception definition), appended to sys.path and
              PYTHONPATH, so an installed copy on the GPU machine wins over them;
   - manifest.json (what is there, the commit it was prepared at).

2. On the GPU machine (the `device` tool), the exact call a session with a GPU should make
   (about 7-8 minutes of the command; 15 minutes of device time in all, start-up included):

       run(command="PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --device cuda --data build/gpu_check --out $OUT 2>&1",
           carry=["build/gpu_check"], timeout_s=560)

   The run starts no new work after --budget seconds (default 420 on CUDA; a subprocess already
   running gets --grace 90 s more, then is stopped: 510 s at most, inside timeout_s) and writes what
   it has after every workload, so a cut-off run still returns its numbers. A rerun of only what failed:
   `--phases train` (or bench, pack, profile) and `--families gan-b,fid`, with a smaller timeout_s.
   It writes under $OUT: gpu_check.md (a section ready for benchmarks/RESULTS.md: tables, the
   targets met or not), gpu_check.json, gpu_check.log (everything, subprocesses included),
   train_metrics.jsonl, ddpm_samples.png and profile.txt. Append gpu_check.md to
   benchmarks/RESULTS.md and copy its rows into the README's speed table.

What it measures (the throughput part is benchmarks.throughput's Bench, in this process):
- bench: gentune vs benchmarks/reference.py, same data and step counts, alternating paired repeats,
  median ratios: the data path; GAN A and GAN B training at batch 256 including data (A also the step
  alone); DDPM training at batch 128, 100 guided samples at T = 500 (first call = CUDA-graph capture,
  reported apart) and the CUDA-graph sampler against the eager one from the same seed, bf16 and fp32,
  max |difference| against the stated tolerance; DANN at 256 + 256; FID: Inception features of 1,000
  64x64 images alone, and features + Frechet distance (random-init Inception when no weights file:
  a timing, not an FID).
- train: `gentune train` (python -m search.cli train, no Ray) of search/specs/dann.yaml on the
  report-layout folders, MNIST-M -> USPS, 2,000 steps at batch 256, mode source-only and dann; and
  of search/specs/ddpm.yaml on the MNIST-M images (T = 500, 3,000 steps at batch 128, the spec's
  noise schedule; --ddpm-set schedule=linear for the report's exact one) judged by the digit
  evaluator at w = 0, 1, 2: target / source / domain accuracies, evaluator accuracies, wall times,
  training img/s and peak memory. The specs are used without their search space (`gentune train`
  ignores it), so that --set of a searched key meets no search domain.
- pack: peak GPU memory of one trial of each family (gan-a, gan-b, ddpm, dann) and 1, 2 and 4 DANN
  trials packed on the GPU, each its own process, with each trial's img/s and peak memory; beside
  the GPU fractions search/specs/*.yaml ask for.
- profile: `benchmarks.throughput --profile gan-a,gan-b` (fp32 vs bf16 step, top ops, per-layer
  times: why bf16 gives GAN B little), only when --budget has room left.

CPU dry run (tiny sizes, a check that everything runs, not a measurement):

    .venv/bin/python -m benchmarks.gpu_check --prepare
    .venv/bin/python -m benchmarks.gpu_check --device cpu --tiny --out runs/gpu_check-cpu

tests/test_gpu_check.py runs the dry run with every package but torch, torchvision, numpy, Pillow
and the carried site/ blocked, as on the GPU machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "build" / "gpu_check"
SHARED = Path(os.environ.get("GENTUNE_SHARED_DATASETS") or REPO.parent / "shared" / "datasets")
# pure-Python packages copied into site/ (top-level import names); compiled parts are left out
CARRIED = ("yaml", "pytorch_fid")
PHASES = ("bench", "train", "pack", "profile")
FAMILIES = ("gan-a", "gan-b", "ddpm", "dann", "fid", "data")
MANIFEST = "manifest.json"
VAL_SHARE = 0.2  # last 20 % of each shared split is the report layout's val.csv


# ============================================================================= prepare (CPU)


def _write_split_csvs(dom: Path, names: list[str], labels: list[int]) -> tuple[int, int]:
    n_val = max(1, int(round(len(names) * VAL_SHARE)))
    cut = len(names) - n_val
    for split, sl in (("train", slice(0, cut)), ("val", slice(cut, None))):
        rows = ["image_name,label"] + [f"{n},{y}" for n, y in zip(names[sl], labels[sl])]
        (dom / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return cut, n_val


def build_report_layout(shared: Path, root: Path, limit: int = 0) -> dict:
    """`root/digits/{mnistm,usps}/data/*.png` + train.csv/val.csv from ../shared/datasets: the MNIST-M
    test subset's PNG files as they are, the USPS test file's digits written as grey PNGs."""
    from PIL import Image

    from trainables import formats

    info = {}
    mm = shared / "mnist_m"
    lab = mm / "mnist_m_test_labels.txt"
    if not lab.is_file():
        raise SystemExit(f"gpu_check --prepare: {lab} not found (MNIST-M test subset in ../shared/datasets)")
    pairs = [ln.split() for ln in lab.read_text().splitlines() if ln.strip()]
    pairs = pairs[:limit] if limit else pairs
    dom = root / "digits" / "mnistm"
    (dom / "data").mkdir(parents=True)
    for name, _ in pairs:
        shutil.copyfile(mm / "mnist_m_test" / name, dom / "data" / name)
    ntr, nva = _write_split_csvs(dom, [p[0] for p in pairs], [int(p[1]) for p in pairs])
    info["mnistm"] = {"from": str(lab.parent), "train": ntr, "val": nva}

    images, labels = formats.read_usps(shared / "usps", "test")  # (N,16,16,3) grey replicated
    if limit:
        images, labels = images[:limit], labels[:limit]
    dom = root / "digits" / "usps"
    (dom / "data").mkdir(parents=True)
    names = []
    for i, im in enumerate(images):
        names.append(f"{i:05d}.png")
        Image.fromarray(im[..., 0]).save(dom / "data" / names[-1])
    ntr, nva = _write_split_csvs(dom, names, [int(y) for y in labels])
    info["usps"] = {"from": str(shared / "usps" / "usps.t.bz2"), "train": ntr, "val": nva}
    for d in ("mnistm", "usps"):  # read back exactly as the trainers will
        for split in ("train", "val"):
            x, y = formats.read_report_digits(root, d, split)
            assert len(x) == info[d][split] and y.min() >= 0 and y.max() <= 9
    return info


def copy_site(site: Path) -> dict:
    """Copy the pure-Python parts of CARRIED packages from this interpreter into site/."""
    import importlib.util

    site.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in CARRIED:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"gpu_check --prepare: package {name} is not installed here (run scripts/setup.sh)")
        src = Path(list(spec.submodule_search_locations)[0])
        shutil.copytree(src, site / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
        mod = __import__(name)
        out[name] = getattr(mod, "__version__", "?")
    return out


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def prepare(data: Path, shared: Path, limit: int = 0) -> Path:
    from benchmarks.throughput import commit, prepare_cache

    data = data.resolve()
    if data.exists():
        if not (data / MANIFEST).exists() and any(data.iterdir()):
            raise SystemExit(f"gpu_check --prepare: {data} exists and is not a gpu_check folder; pick another")
        shutil.rmtree(data)
    data.mkdir(parents=True)
    t0 = time.perf_counter()
    prepare_cache(str(data / "cache"))
    report = build_report_layout(shared, data / "report", limit)
    site = copy_site(data / "site")
    manifest = {
        "prepared": dt.datetime.now().isoformat(timespec="seconds"), "commit": commit(),
        "shared": str(shared), "limit": limit, "report": report, "site": site,
        "mib": {p.name: round(folder_mib(p), 2) for p in sorted(data.iterdir()) if p.is_dir()},
    }
    (data / MANIFEST).write_text(json.dumps(manifest, indent=1))
    total = folder_mib(data)
    print(f"gpu_check: prepared {data} in {time.perf_counter() - t0:.0f} s, {total:.1f} MiB "
          f"({', '.join(f'{k} {v} MiB' for k, v in manifest['mib'].items())}); report layout "
          + ", ".join(f"{d} {v['train']}+{v['val']}" for d, v in report.items()))
    if total > 60:
        print("gpu_check: warning: over 60 MiB; `carry` takes 64 MiB in all, the working tree included", file=sys.stderr)
    return data


# ============================================================================= run


class Run:
    """One GPU check: phases in order, each one's results written out as soon as it ends."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t_start = time.perf_counter()
        self.data = Path(args.data).resolve()
        manifest = self.data / MANIFEST
        if not manifest.is_file():
            raise SystemExit(f"gpu_check: {manifest} not found: run `python -m benchmarks.gpu_check --prepare "
                             f"{args.data}` on a machine with ../shared/datasets first, and carry that folder")
        self.manifest = json.loads(manifest.read_text())
        self.out = Path(args.out or os.environ.get("OUT") or REPO / "runs" / "gpu_check").resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gentune-gpucheck-"))
        # a working copy of the cache: what the run decodes (report layout, evaluators) stays out of data/
        self.cache = self.work / "cache"
        shutil.copytree(self.data / "cache", self.cache)
        self.site = self.data / "site"
        sys.path.append(str(self.site))  # appended: a copy installed on this machine wins
        self.env = {**os.environ, "GENTUNE_CACHE": str(self.cache), "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(self.site)) if p)}
        if args.device == "cpu":  # one thread per process: tiny ops on a busy small machine
            self.env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        os.environ.update(self.env)  # benchmarks.throughput's packing workers inherit this process's environment
        self.logf = (self.out / "gpu_check.log").open("a")
        self.budget = args.budget if args.budget is not None else (420.0 if args.device == "cuda" else 0.0)
        self.res: dict = {"env": {}, "rows": [], "extra": [], "train": [], "pack": [], "errors": [], "skipped": [],
                          "phases": {}, "targets": []}
        self.bench = None

    # -- bookkeeping

    def log(self, msg: str, echo: bool = True) -> None:
        if echo:
            print(msg, flush=True)
        self.logf.write(msg + "\n")
        self.logf.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def left(self) -> float:
        return float("inf") if not self.budget else self.budget - self.elapsed()

    def hard_left(self) -> float:
        """Seconds a subprocess started now may run: the budget plus its grace (work started before the
        budget ends may finish within the grace)."""
        return float("inf") if not self.budget else self.budget + self.args.grace - self.elapsed()

    def room(self, what: str, need: float) -> bool:
        if self.left() >= need:
            return True
        self.res["skipped"].append(f"{what} (budget: {self.left():.0f} s left of {self.budget:.0f}, needs about {need:.0f} s)")
        self.log(f"gpu_check: skipping {what}: {self.left():.0f} s of the budget left")
        return False

    def error(self, what: str, e: BaseException) -> None:
        self.res["errors"].append(f"{what}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
        self.log(f"gpu_check: {what} FAILED: {type(e).__name__}: {e}")
        self.log(traceback.format_exc(), echo=False)

    # -- environment

    def describe(self) -> None:
        import importlib.util

        import torch

        from benchmarks.throughput import commit, describe

        dev = torch.device(self.args.device)
        here = commit()
        env = self.res["env"]
        env["device"] = describe(dev)
        env["commit"] = here if not here.startswith("unknown") else f"{self.manifest.get('commit', 'unknown')} (at --prepare)"
        env["torch"] = torch.__version__
        env["python"] = sys.version.split()[0]
        env["date"] = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        env["command"] = "python -m benchmarks.gpu_check " + " ".join(self.args.argv)
        if dev.type == "cuda":
            p = torch.cuda.get_device_properties(dev)
            env["gpu_memory_mib"] = round(p.total_memory / 2**20)
            env["cuda"] = torch.version.cuda
        pk = {}
        for name in (*CARRIED, "scipy", "sklearn", "skimage", "ray", "mlflow"):
            spec = importlib.util.find_spec(name)
            pk[name] = "absent" if spec is None else ("carried site/" if str(self.site) in str(spec.origin) else "installed")
        env["packages"] = pk
        self.log(f"# gentune GPU check: {env['device']}; commit {env['commit']}; {env['date']}; python {env['python']}")
        self.log(f"# packages: {', '.join(f'{k} {v}' for k, v in pk.items())}; budget {self.budget:.0f} s")

    # -- phase: bench (benchmarks.throughput's workloads, in this process)

    def make_bench(self):
        import torch

        from benchmarks import throughput as tp

        if self.bench is None:
            argv = ["--device", self.args.device, "--cache-dir", str(self.cache)]
            if self.args.tiny:
                argv.append("--quick")
            b = tp.Bench(tp.parse(argv))
            if self.args.tiny:
                b.sz.pack_seconds = 1.0
            self.bench = b
            if b.device.type == "cuda":
                torch.backends.cudnn.benchmark = True
        return self.bench

    def phase_bench(self) -> None:
        from benchmarks.throughput import med

        b = self.make_bench()
        runs = {"data": b.run_data, "gan-a": lambda: b.run_gan("A"), "gan-b": lambda: b.run_gan("B"), "ddpm": b.run_ddpm,
                "dann": b.run_dann, "fid": b.run_fid}
        need = {"data": 25, "gan-a": 30, "gan-b": 30, "ddpm": 50, "dann": 15, "fid": 20}
        for fam in self.args.families.split(","):
            if not fam or not self.room(f"bench {fam}", need[fam] if self.budget else 0):
                continue
            t0 = time.perf_counter()
            n_rows, n_extra = len(b.rows), len(b.extra)
            try:
                runs[fam]()
            except Exception as e:  # one workload failing must not cost the others
                self.error(f"bench {fam}", e)
            for r in b.rows[n_rows:]:
                rr = r.ratios
                self.log(f"{r.family:6s} {r.what} (batch {r.batch}): reference {med(r.ref):,.1f} img/s, gentune "
                         f"{med(r.gen):,.1f} img/s, ratio {med(rr):.2f} ({min(rr):.2f}-{max(rr):.2f}, {len(rr)} repeats)")
            for e in b.extra[n_extra:]:
                self.log(e)
            self.log(f"  ({fam} took {time.perf_counter() - t0:.0f} s)")
            self.collect_bench()
            self.write()

    def collect_bench(self) -> None:
        from benchmarks.throughput import med

        b = self.bench
        self.res["rows"] = [{"family": r.family, "what": r.what, "batch": r.batch, "ref_img_s": med(r.ref),
                             "gentune_img_s": med(r.gen), "ratio": med(r.ratios), "ratios": r.ratios} for r in b.rows]
        self.res["extra"] = [e for e in b.extra if not e.startswith(("pack ", "memory "))]
        self.res["pack"] = [e for e in b.extra if e.startswith(("pack ", "memory "))]

    # -- phase: pack (one process per trial)

    def phase_pack(self) -> None:
        import torch

        b = self.make_bench()
        if b.device.type == "cuda":
            torch.cuda.empty_cache()  # this process's cached blocks are not the workers' to count
        mem = [f for f in ("gan-a", "gan-b", "ddpm") if f in self.args.mem.split(",")]
        counts = [1, 2, 4] if not self.args.tiny else [1, 2]
        if self.args.device == "cpu" and not self.args.tiny:
            mem = []
        n0 = len(b.extra)
        if self.room("pack dann", 25 * len(counts) if self.budget else 0):
            try:
                b.run_pack(["dann"], counts)
            except Exception as e:
                self.error("pack dann", e)
        seconds = b.sz.pack_seconds
        b.sz.pack_seconds = min(seconds, 3.0)  # one trial's peak memory needs no long timing
        for f in mem:
            if self.args.device != "cuda":
                break  # peak memory is a CUDA reading; the CPU dry run checks the packing path only
            if self.room(f"memory {f}", 20 if self.budget else 0):
                try:
                    b.run_pack([f], [1])
                except Exception as e:
                    self.error(f"memory {f}", e)
        b.sz.pack_seconds = seconds
        for e in b.extra[n0:]:
            self.log(e)
            if "a worker failed" in e:
                self.res["errors"].append(e)
        self.log(f"search/specs GPU fractions per trial: {spec_fractions()}")
        self.collect_bench()
        self.write()

    # -- phase: train (gentune train, no Ray)

    def train_runs(self) -> list[tuple[str, str, list[str], int, float]]:
        """(name, spec, --set overrides, timeout cap in s, minimum budget to start)."""
        a = self.args
        root = str(self.data / "report")
        common = [f"cache_dir={self.cache}", f"device={a.device}", "seed=0"]
        ep = 10 if not a.tiny else 2
        dann_data = [f"source.source=report", f"source.root={root}", "source.domain=mnistm",
                     "target.source=report", f"target.root={root}", "target.domain=usps"]
        ddpm_data = ["data.source=report", f"data.root={root}", "data.domain=mnistm"]
        if a.tiny:
            dann = ["batch_size=32", f"steps_per_epoch={a.dann_steps // ep}", "eval_every=1", "source.limit=200", "target.limit=200"]
            ddpm = ["batch_size=16", f"steps_per_epoch={a.ddpm_steps // ep}", "eval_every=1", "n_feat=16", "T=50",
                    "n_per_digit=2", "data.limit=200"]
        else:
            dann = ["batch_size=256", f"steps_per_epoch={a.dann_steps // ep}", "eval_every=5"]
            ddpm = ["batch_size=128", f"steps_per_epoch={a.ddpm_steps // ep}", "eval_every=5", "T=500", "n_per_digit=10"]
        dann_spec, ddpm_spec = (str(self.fixed_spec(f)) for f in ("dann", "ddpm"))
        runs = []
        for mode in ("source-only", "dann"):
            runs.append(("dann" if mode == "dann" else f"dann-{mode}", dann_spec,
                         [*common, f"epochs={ep}", f"mode={mode}", *dann_data, *dann, *a.dann_set], 120, 30))
        runs.append(("ddpm", ddpm_spec, [*common, f"epochs={ep}", "guidance=[0.0, 1.0, 2.0]", *ddpm_data, *ddpm, *a.ddpm_set],
                     a.ddpm_cap, 45))
        return runs

    def fixed_spec(self, family: str) -> Path:
        """search/specs/<family>.yaml without its search space (`gentune train` uses the fixed config only),
        so that --set of a searched key (T) meets no search domain or start_from entry naming it."""
        import yaml

        raw = yaml.safe_load((REPO / "search" / "specs" / f"{family}.yaml").read_text())
        for key in ("search", "start_from"):
            raw.pop(key, None)
        path = self.work / "specs" / f"{family}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# search/specs/{family}.yaml without search/start_from (gpu_check)\n" + yaml.safe_dump(raw, sort_keys=False))
        return path

    def phase_train(self) -> None:
        import torch

        if self.args.device == "cuda":
            torch.cuda.empty_cache()
        metrics_out = self.out / "train_metrics.jsonl"
        for name, spec, sets, cap, need in self.train_runs():
            if not self.room(f"train {name}", need if self.budget else 0):
                continue
            rdir = self.work / "train" / name
            cmd = [sys.executable, "-m", "search.cli", "train", spec, "--out", str(rdir)]
            for s in sets:
                cmd += ["--set", s]
            timeout = min(cap, self.hard_left())
            self.log(f"gpu_check: gentune train {name} (timeout {timeout:.0f} s): {' '.join(cmd[2:])}", echo=False)
            t0 = time.perf_counter()
            status = "finished"
            try:
                p = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   timeout=timeout, check=False)
                text = p.stdout
                if p.returncode != 0:
                    status = f"exit {p.returncode}"
            except subprocess.TimeoutExpired as e:
                text = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
                status = f"timed out at {timeout:.0f} s"
            wall = time.perf_counter() - t0
            self.log(text, echo=False)
            r = summarize_train(name, rdir, wall, status, self.args.device)
            if status != "finished":
                self.res["errors"].append(f"train {name}: {status}: " + " | ".join(text.strip().splitlines()[-3:]))
                self.log("\n".join(text.strip().splitlines()[-15:]))
            self.res["train"].append(r)
            self.log(format_train_line(r))
            with metrics_out.open("a") as f:
                for m in r.pop("history", []):
                    f.write(json.dumps({"run": name, **m}) + "\n")
            if name == "ddpm" and r.get("grid"):
                shutil.copyfile(r["grid"], self.out / "ddpm_samples.png")
            self.write()

    # -- phase: profile (GAN A vs B, fp32 vs bf16)

    def phase_profile(self) -> None:
        if not self.room("profile gan-a,gan-b", 45 if self.budget else 0):
            return
        cmd = [sys.executable, "-m", "benchmarks.throughput", "--profile", "gan-a,gan-b", "--device", self.args.device,
               "--cache-dir", str(self.cache), "--rows", "12"]
        if self.args.tiny:
            cmd += ["--quick", "--batch", "4"]
        if self.args.device == "cpu":  # bf16 on a CPU is an emulation, ten times slower: fp32 only there
            cmd += ["--profile-amp", "off"]
        timeout = min(300.0, self.hard_left())
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=timeout, check=False)
            text, status = p.stdout, ("" if p.returncode == 0 else f" (exit {p.returncode})")
        except subprocess.TimeoutExpired as e:
            text = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            status = f" (timed out at {timeout:.0f} s)"
        (self.out / "profile.txt").write_text(text)
        self.log(text, echo=False)
        heads = [ln.strip() for ln in text.splitlines() if ln.startswith("== ")]
        self.res["profile"] = heads
        for h in heads:
            self.log(h)
        if status:
            self.res["errors"].append("profile" + status)
        self.log(f"  (profile took {time.perf_counter() - t0:.0f} s{status})")
        self.write()

    # -- output

    def write(self) -> None:
        self.res["targets"] = targets(self.res, self.args.device)
        self.res["wall_s"] = round(self.elapsed(), 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.res, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(markdown(self.res))

    def main(self) -> int:
        self.describe()
        for ph in self.args.phases.split(","):
            if not ph:
                continue
            t0 = time.perf_counter()
            self.log(f"\n## phase {ph} (at {self.elapsed():.0f} s)")
            try:
                getattr(self, f"phase_{ph}")()
            except Exception as e:
                self.error(f"phase {ph}", e)
            self.res["phases"][ph] = round(time.perf_counter() - t0, 1)
        self.write()
        self.log("\n" + (self.out / "gpu_check.md").read_text())
        self.log(f"# gpu_check: wrote {', '.join(sorted(p.name for p in self.out.iterdir()))} under {self.out}")
        if self.bench is not None:
            shutil.rmtree(self.bench.tmp, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)
        return 1 if self.res["errors"] else 0


def summarize_train(name: str, rdir: Path, wall: float, status: str, device: str) -> dict:
    """The last evaluated epoch of a gentune train run, from its metrics.jsonl."""
    hist = []
    path = rdir / "metrics.jsonl"
    if path.is_file():
        hist = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    r: dict = {"run": name, "status": status, "wall_s": round(wall, 1), "epochs": len(hist), "history": hist}
    cfg = {}
    ck = rdir / "checkpoint.pt"
    if ck.is_file():
        import torch

        cfg = torch.load(ck, map_location="cpu", weights_only=True).get("config", {})
    r["config"] = {k: v for k, v in cfg.items() if not k.endswith(".root") and k != "cache_dir"}
    bs, spe = int(cfg.get("batch_size", 0)), int(cfg.get("steps_per_epoch", 0))
    r["steps"], r["batch"] = spe * len(hist), bs
    per_step = bs * (2 if cfg.get("mode") == "dann" else 1)
    evals = [m for m in hist if any(k in m for k in ("target_acc", "acc"))]
    r["train_s"] = round(sum(float(m.get("epoch_time_s", 0)) for m in hist), 1)
    # training speed from the epochs without an evaluation (their time is training alone), else from all
    plain = [m for m in hist if m not in evals] or hist
    plain_s = sum(float(m.get("epoch_time_s", 0)) for m in plain)
    r["img_s"] = per_step * spe * len(plain) / plain_s if plain_s else 0.0
    if evals:
        last = evals[-1]
        keep = ("epoch", "target_acc", "source_acc", "domain_acc", "evaluator_val_acc", "acc", "best_w", "loss", "loss_cls")
        r["final"] = {k: last[k] for k in last if k in keep or k.startswith("acc_w")}
    r["peak_mem_mb"] = max((float(m.get("peak_mem_mb", 0)) for m in hist), default=0.0)
    grids = sorted((rdir / "samples").glob("*.png")) if (rdir / "samples").is_dir() else []
    r["grid"] = str(grids[-1]) if grids else ""
    return r


def format_train_line(r: dict) -> str:
    f = r.get("final", {})
    accs = ", ".join(f"{k} {v:.4f}" for k, v in f.items() if k.endswith("acc") or k.startswith("acc_w"))
    return (f"train {r['run']}: {r['status']}; {r['steps']} steps x batch {r['batch']} in {r['wall_s']:.0f} s wall "
            f"({r['train_s']:.0f} s in epochs, {r['img_s']:,.0f} img/s); {accs or 'no evaluation'}")


def spec_fractions() -> str:
    out = []
    for fam in ("gan", "ddpm", "dann"):
        m = re.search(r"gpu:\s*([0-9.]+)", (REPO / "search" / "specs" / f"{fam}.yaml").read_text())
        out.append(f"{fam} {m.group(1) if m else '?'}")
    return ", ".join(out)


# ----------------------------------------------------------------------------- targets and the report


def _row(res: dict, family: str, start: str) -> dict | None:
    for r in res["rows"]:
        if r["family"] == family and r["what"].startswith(start):
            return r
    return None


def targets(res: dict, device: str) -> list[str]:
    """The issue's targets, each with what was measured (targets are for an H100/H200)."""
    out = []

    def t(name: str, value: float | None, fmt: str, ok: bool | None) -> None:
        if value is None:
            out.append(f"{name}: not measured")
        else:
            out.append(f"{name}: {format(value, fmt)} -> {'met' if ok else 'NOT met'}")

    r = _row(res, "gan-a", "training step incl")
    t("GAN A >= 25,000 img/s (batch 256, incl. data)", r and r["gentune_img_s"], ",.0f", r and r["gentune_img_s"] >= 25000)
    r = _row(res, "gan-b", "training step incl")
    t("GAN B >= 1.5x its fp32 eager reference", r and r["ratio"], ".2f", r and r["ratio"] >= 1.5)
    r = _row(res, "ddpm", "guided sampling")
    secs = r and r["batch"] / r["gentune_img_s"]
    t("DDPM 100 guided samples at T=500 <= 1.5 s", secs, ".3f", secs is not None and secs <= 1.5)
    r = _row(res, "dann", "training step")
    t("DANN >= 65,000 img/s (256 + 256)", r and r["gentune_img_s"], ",.0f", r and r["gentune_img_s"] >= 65000)
    x2 = None
    for e in res["pack"]:
        m = re.match(r"pack dann x2: .*?, ([0-9.]+)x one trial", e)
        if m:
            x2 = float(m.group(1))
    t("2 DANN trials packed >= 1.8x one", x2, ".2f", x2 is not None and x2 >= 1.8)
    r = _row(res, "fid", "Inception features")
    secs = r and r["batch"] / r["gentune_img_s"]
    t("FID features of 1,000 64x64 images <= 1 s", secs, ".3f", secs is not None and secs <= 1.0)
    for e in res["extra"]:
        if "CUDA graph vs eager" in e:
            out.append("CUDA-graph sampler equals eager: " + ("within tolerance" if "OUTSIDE" not in e else "OUTSIDE tolerance"))
    if device != "cuda":
        out = [f"{o} (CPU dry run: the targets are GPU targets)" for o in out]
    return out


def markdown(res: dict) -> str:
    env = res["env"]
    lines = [f"## {env.get('date', '')} - GPU check - {env.get('device', '')} - commit {env.get('commit', '')}", "",
             f"`{env.get('command', '')}` (wall {res.get('wall_s', 0):.0f} s; phases "
             + ", ".join(f"{k} {v:.0f} s" for k, v in res["phases"].items()) + ")", ""]
    if res["rows"]:
        lines += ["Throughput, gentune vs benchmarks/reference.py in the same process (medians of paired repeats):", "",
                  "| family | workload | batch | reference img/s | gentune img/s | ratio (median) | ratio range | repeats |",
                  "|---|---|---:|---:|---:|---:|---|---:|"]
        for r in res["rows"]:
            rr = r["ratios"]
            lines.append(f"| {r['family']} | {r['what']} | {r['batch']} | {r['ref_img_s']:,.1f} | {r['gentune_img_s']:,.1f} | "
                         f"{r['ratio']:.2f} | {min(rr):.2f}-{max(rr):.2f} | {len(rr)} |")
        lines.append("")
    lines += [f"- {e}" for e in res["extra"]]
    if res["pack"]:
        lines += ["", "Packing and memory (each trial its own process; gentune's trainers):", ""]
        lines += [f"- {e}" for e in res["pack"]]
        lines.append(f"- search/specs GPU fractions per trial now: {spec_fractions()}")
    if res["train"]:
        lines += ["", "Real training, `gentune train` (no Ray) on report-layout folders from ../shared/datasets "
                  "(MNIST-M test subset and USPS test file, 80/20 train/val):", "",
                  "| run | status | steps x batch | target acc | source acc | domain acc | wall s | s in epochs | train img/s (epochs without eval) | peak MiB |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        f4 = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        for r in res["train"]:
            if r["run"].startswith("dann"):
                f = r.get("final", {})
                lines.append(f"| {r['run']} | {r['status']} | {r['steps']} x {r['batch']} | {f4(f.get('target_acc'))} | "
                             f"{f4(f.get('source_acc'))} | {f4(f.get('domain_acc'))} | {r['wall_s']:.0f} | {r['train_s']:.0f} | "
                             f"{r['img_s']:,.0f} | {r['peak_mem_mb']:.0f} |")
        for r in res["train"]:
            if r["run"] == "ddpm":
                f, c = r.get("final", {}), r.get("config", {})
                ws = sorted((k for k in f if k.startswith("acc_w")), key=lambda k: float(k[5:]))
                lines += ["", f"DDPM (T={c.get('T', '?')}, schedule {c.get('schedule', 'linear')}, n_feat "
                          f"{c.get('n_feat', '?')}, {r['steps']} steps x batch {r['batch']}, {r['status']}): digit evaluator "
                          f"val acc {f4(f.get('evaluator_val_acc'))}; accuracy of generated digits by the evaluator "
                          + ", ".join(f"w={k[5:]}: {f[k]:.4f}" for k in ws)
                          + f"; wall {r['wall_s']:.0f} s ({r['train_s']:.0f} s in epochs, {r['img_s']:,.0f} img/s training), "
                          f"peak {r['peak_mem_mb']:.0f} MiB"]
    if res.get("profile"):
        lines += ["", "GAN step profile (profile.txt has the op tables and per-layer times):", ""]
        lines += [f"- {h.strip('= ')}" for h in res["profile"]]
    lines += ["", "Targets (H100/H200):", ""] + [f"- {t}" for t in res["targets"]]
    if res["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {s}" for s in res["skipped"]]
    if res["errors"]:
        lines += ["", "Errors (gpu_check.log has the tracebacks):", ""] + [f"- {e}" for e in res["errors"]]
    pk = env.get("packages")
    if pk:
        lines += ["", "Packages: " + ", ".join(f"{k} {v}" for k, v in pk.items())]
    return "\n".join(lines) + "\n"


# ============================================================================= command line


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", nargs="?", const=str(DEFAULT_DATA), default=None, metavar="DIR",
                   help=f"build the folder to carry (default {DEFAULT_DATA.relative_to(REPO)}) from --shared, then stop")
    p.add_argument("--shared", default=str(SHARED), help="--prepare: the shared datasets folder")
    p.add_argument("--limit", type=int, default=0, help="--prepare: only the first N images of each shared split (tests)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the prepared folder")
    p.add_argument("--out", default="", help="results folder (default $OUT, else runs/gpu_check)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes everywhere: a dry run, not a measurement")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds after which no new work starts (default 420 on CUDA, none on CPU; 0 = none)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, in order, of: {', '.join(PHASES)}")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"bench workloads, of: {', '.join(FAMILIES)}")
    p.add_argument("--mem", default="gan-a,gan-b,ddpm", help="pack: families whose one-trial peak memory to measure (dann always)")
    p.add_argument("--dann-steps", type=int, default=0, help="train: DANN steps (default 2000; --tiny 4)")
    p.add_argument("--ddpm-steps", type=int, default=0, help="train: DDPM steps (default 3000; --tiny 4)")
    p.add_argument("--dann-set", action="append", default=[], metavar="KEY=VALUE",
                   help="train: one more `gentune train --set` for both DANN runs (repeatable; wins over the defaults)")
    p.add_argument("--ddpm-set", action="append", default=[], metavar="KEY=VALUE",
                   help="train: one more --set for the DDPM run, e.g. schedule=linear (the report's exact schedule at T=500)")
    p.add_argument("--ddpm-cap", type=float, default=180.0, help="train: seconds the DDPM run may take at most")
    p.add_argument("--grace", type=float, default=90.0,
                   help="seconds past --budget that a subprocess started before it may run (then it is stopped)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in this process (default: 1 on CPU)")
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    for key, allowed in (("phases", PHASES), ("families", FAMILIES)):
        bad = [x for x in getattr(a, key).split(",") if x and x not in allowed]
        if bad:
            p.error(f"--{key}: unknown {bad[0]!r}; expected some of {', '.join(allowed)}")
    a.dann_steps = a.dann_steps or (4 if a.tiny else 2000)
    a.ddpm_steps = a.ddpm_steps or (4 if a.tiny else 3000)
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.prepare is not None:
        prepare(Path(args.prepare), Path(args.shared), args.limit)
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but CUDA is not available here (a CPU dry run: --device cpu --tiny)")
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    return Run(args).main()


if __name__ == "__main__":
    sys.exit(main())
