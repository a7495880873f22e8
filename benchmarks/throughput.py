"""Throughput of gentune's training paths against reference-style implementations (benchmarks.reference).

    python -m benchmarks.throughput [--device cpu|cuda] [--family gan-a,gan-b,ddpm,dann,data,fid]
                                    [--steps N] [--repeats R] [--quick] [--results benchmarks/RESULTS.md]
    python -m benchmarks.throughput --profile gan-a,gan-b      # per-op profile of one gentune GAN step, fp32 vs bf16
    python -m benchmarks.throughput --prepare-cache --cache-dir DIR   # demo data only, to carry to a bare GPU machine

On a GPU, the one prepared check is `python -m benchmarks.gpu_check` (its docstring has the device
call): it runs these workloads through Bench, the packing, real training runs and the profile.
Standalone, `python -m benchmarks.throughput --device cuda --results benchmarks/RESULTS.md` takes
about 4-5 minutes on an H100 (--quick for less). It needs torch, torchvision and Pillow; the fid
rows also pytorch-fid (skipped without it; without scipy only gentune's side of the FID row is
timed); the demo data needs scikit-learn and scikit-image unless --cache-dir names a cache built
with --prepare-cache.

One process, the same data and step counts for both sides. Every measurement follows a warm-up;
the two sides alternate order from repeat to repeat (ABBA...), and the printed numbers are medians:
the ratio is the median of the per-repeat ratios gentune / reference (> 1: gentune is faster).

Workloads (img/s counts real images through the network; DANN counts source + target images):
- data: one epoch of normalized 64x64 face batches on the training device. Reference: the DCGAN
  tutorial's ImageFolder + DataLoader(num_workers=2) over the demo faces written as JPEG files
  (a new iterator per epoch, so workers start each epoch as in the tutorial). gentune: the uint8
  cache on the device, indexed by a permutation. The demo has 100 faces; the set is tiled to
  --faces images (distinct files) so an epoch holds several batches.
- gan-a / gan-b: whole training steps including data (reference: the tutorial's loop fed by its
  DataLoader; gentune: GANTrainer.train_epoch on its cache). gan-a also reports the step alone
  (both fed the same in-memory batch).
- ddpm: training steps (TeaPearce's loop, in-memory DataLoader), and guided sampling of
  --samples images (TeaPearce's sample() against gentune's GuidedSampler, CUDA graph on CUDA;
  the graph's capture happens in the warm-up and is reported apart); on CUDA also the graph against
  the eager sampler from the same seed, bf16 and fp32, against GRAPH_TOLERANCE.
- dann: training steps (a plain zip-of-DataLoaders loop against DANNTrainer.train_epoch).
- fid: Inception features of the generated images alone, then features and Frechet distance
  against cached real statistics (pytorch-fid's way: batches of 50, scipy sqrtm; gentune:
  trainables.metrics.fid). Without the Inception weights file the network is randomly initialised:
  a timing, not an FID.
On CUDA also: peak GPU memory of one trial of each family and aggregate throughput of 1, 2 and 4
trials packed on the GPU, each trial its own process (--pack).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("data", "gan-a", "gan-b", "ddpm", "dann", "fid")


# ----------------------------------------------------------------------------- sizes


@dataclass
class Sizes:
    repeats: int
    gan_batch: int
    gan_steps: int
    gan_files: int  # faces (tiled demo faces) for the GAN rows
    data_batch: int
    data_files: int
    ddpm_batch: int
    ddpm_steps: int
    ddpm_T: int  # sampling steps
    samples: int  # guided samples (a multiple of 10)
    dann_batch: int
    dann_steps: int
    fid_n: int
    pack_seconds: float = 8.0


def sizes_for(device: torch.device, quick: bool) -> Sizes:
    if device.type == "cuda":
        if quick:
            return Sizes(2, 256, 10, 256 * 8, 128, 2000, 128, 10, 500, 100, 256, 20, 1000, 5.0)
        return Sizes(3, 256, 20, 256 * 12, 128, 3000, 128, 30, 500, 100, 256, 40, 1000, 8.0)
    if quick:  # smoke test: seconds, not a measurement
        return Sizes(1, 4, 1, 16, 16, 48, 4, 1, 3, 10, 8, 1, 4)
    return Sizes(5, 32, 3, 32 * 8, 128, 1000, 16, 2, 10, 10, 64, 4, 50)


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Row:
    family: str
    what: str
    batch: int
    ref: list[float] = field(default_factory=list)  # img/s per repeat
    gen: list[float] = field(default_factory=list)
    note: str = ""
    ref_label: str = "reference"

    @property
    def ratios(self) -> list[float]:
        return [g / r for g, r in zip(self.gen, self.ref)]


def compare(row: Row, ref: Callable[[], int], gen: Callable[[], int], repeats: int, device: torch.device,
            warmup: bool = True) -> Row:
    """Warm both up, then `repeats` paired timings, order alternating. Each callable returns images done."""
    cuda = device.type == "cuda"

    def run(name: str, fn: Callable[[], int]) -> int:
        if cuda:  # the references never turn cuDNN autotuning on; gentune's trainers do
            torch.backends.cudnn.benchmark = name == "gen"
        return fn()

    if warmup:
        run("ref", ref)
        run("gen", gen)
    for r in range(repeats):
        pair: dict[str, float] = {}
        order = (("ref", ref), ("gen", gen)) if r % 2 == 0 else (("gen", gen), ("ref", ref))
        for name, fn in order:
            sync(device)
            t0 = time.perf_counter()
            n = run(name, fn)
            sync(device)
            pair[name] = n / (time.perf_counter() - t0)
        row.ref.append(pair["ref"])
        row.gen.append(pair["gen"])
    return row


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ----------------------------------------------------------------------------- workloads


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.sz = sizes_for(self.device, args.quick)
        if args.steps:
            self.sz.gan_steps = self.sz.ddpm_steps = self.sz.dann_steps = args.steps
        if args.repeats:
            self.sz.repeats = args.repeats
        if args.batch:
            self.sz.gan_batch = self.sz.ddpm_batch = self.sz.dann_batch = args.batch
        self.tmp = Path(tempfile.mkdtemp(prefix="gentune-bench-"))
        self.cache_dir = args.cache_dir or ""
        self.rows: list[Row] = []
        self.extra: list[str] = []
        self._faces: torch.Tensor | None = None

    # -- shared data

    def faces(self, n: int) -> torch.Tensor:
        """The demo faces at 64x64 (uint8, CPU), tiled to n images."""
        if self._faces is None:
            from trainables.config import DataConfig
            from trainables.data import load_split

            self._faces = load_split(DataConfig(), "train", 64, "faces", self.cache_dir, quiet=True).images
        f = self._faces
        return f.repeat((n + len(f) - 1) // len(f), 1, 1, 1)[:n].contiguous()

    def jpeg_root(self, n: int) -> Path:
        root = self.tmp / f"jpeg-{n}"
        if not root.exists():
            from benchmarks.reference import write_jpegs

            write_jpegs(self.faces(n), root)
        return root

    def imageset(self, images: torch.Tensor):
        from trainables.data import ImageSet

        return ImageSet(images.to(self.device), None, "bench", "bench-faces")

    def base_cfg(self) -> dict:
        return {"device": self.device.type, "cache_dir": self.cache_dir, "seed": 0}

    # -- data

    def run_data(self) -> None:
        from benchmarks.reference import tutorial_epoch, tutorial_loader
        from trainables.data import batches

        sz, dev = self.sz, self.device
        loader = tutorial_loader(self.jpeg_root(sz.data_files), sz.data_batch, 64, workers=2)
        ds = self.imageset(self.faces(sz.data_files))
        channels_last = dev.type == "cuda"  # what the trainers' auto setting does

        def gen() -> int:
            n = 0
            for idx in batches(len(ds), sz.data_batch, 0, dev):
                x = ds.batch(idx)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                n += x.shape[0]
            return n

        row = Row("data", f"1 epoch of normalized 64x64 batches, {sz.data_files} faces", sz.data_batch,
                  note="reference: ImageFolder(JPEG)+DataLoader(2 workers), new workers each epoch")
        self.rows.append(compare(row, lambda: tutorial_epoch(loader, dev), gen, max(sz.repeats, 5), dev))
        # the one-time cost gentune pays per trial instead: reading the cache file and moving it to the device
        from trainables.config import DataConfig
        from trainables.data import load_split

        sync(dev)
        t0 = time.perf_counter()
        load_split(DataConfig(), "train", 64, "faces", self.cache_dir, quiet=True).to(dev)
        sync(dev)
        self.extra.append(f"data: gentune's once-per-trial cache load (100 demo faces) took {time.perf_counter() - t0:.3f} s")

    # -- GAN

    def gan_trainer(self, model: str, steps: int):
        from trainables.config import GANConfig
        from trainables.gan import GANTrainer

        kw = dict(model=model, batch_size=self.sz.gan_batch, steps_per_epoch=steps, fid="off", **self.base_cfg())
        if model == "B":  # model B: soft labels (real capped at 1.0: BCE rejects targets > 1), D on SGD(1e-3, 0.5)
            kw.update(d_optimizer="sgd", lr_d=1e-3, d_momentum=0.5, real_label_lo=0.7, real_label_hi=1.0,
                      fake_label_lo=0.0, fake_label_hi=0.33)
        tr = GANTrainer(GANConfig(**kw), quiet=True)
        tr.train_set = self.imageset(self.faces(self.sz.gan_files))
        return tr

    def run_gan(self, model: str) -> None:
        from benchmarks.reference import (
            GANState,
            endless,
            tutorial_gan_step,
            tutorial_loader,
        )
        from models.gan import build_gan

        sz, dev = self.sz, self.device
        torch.manual_seed(0)
        st = GANState(*build_gan(model), dev, model)
        it = endless(tutorial_loader(self.jpeg_root(sz.gan_files), sz.gan_batch, 64, workers=2))
        tr = self.gan_trainer(model, sz.gan_steps)
        epoch = [0]

        def ref() -> int:
            return sum(tutorial_gan_step(st, next(it)) for _ in range(sz.gan_steps))

        def gen() -> int:
            epoch[0] += 1
            tr.train_epoch(epoch[0])
            return sz.gan_steps * sz.gan_batch

        fam = f"gan-{model.lower()}"
        row = Row(fam, f"training step incl. data ({sz.gan_steps} steps)", sz.gan_batch,
                  note=f"amp={'bf16' if dev.type == 'cuda' else 'off'} for gentune; reference fp32")
        self.rows.append(compare(row, ref, gen, sz.repeats, dev))
        if model == "A":  # the step alone: both fed the same batch already on the device
            x = self.faces(sz.gan_batch).to(dev).float().div_(127.5).sub_(1.0)
            xg = tr.prep(x)

            def ref_step() -> int:
                return sum(tutorial_gan_step(st, (x,)) for _ in range(sz.gan_steps))

            def gen_step() -> int:
                for _ in range(sz.gan_steps):
                    out = tr.step(xg)
                out[0].item()
                return sz.gan_steps * sz.gan_batch

            row = Row(fam, f"training step alone, same batch ({sz.gan_steps} steps)", sz.gan_batch)
            self.rows.append(compare(row, ref_step, gen_step, sz.repeats, dev))

    # -- DDPM

    def run_ddpm(self) -> None:
        from benchmarks.reference import TeaPearceDDPM, endless, teapearce_train_step
        from models.ddpm import ContextUnet, GuidedSampler, NoiseSchedule
        from trainables.config import DDPMConfig
        from trainables.ddpm import DDPMTrainer

        sz, dev = self.sz, self.device
        tr = DDPMTrainer(DDPMConfig(batch_size=sz.ddpm_batch, steps_per_epoch=sz.ddpm_steps, **self.base_cfg()), quiet=True)
        s = NoiseSchedule(tr.cfg.T, device=dev)
        torch.manual_seed(0)
        ref_model = TeaPearceDDPM(ContextUnet(3, tr.cfg.n_feat, 10), s.sqrtab, s.sqrtmab, s.oneover_sqrta,
                                  s.mab_over_sqrtmab, s.sqrt_beta_t, tr.cfg.T).to(dev)
        optim = torch.optim.Adam(ref_model.parameters(), lr=1e-4)
        ts = tr.train_set
        data = torch.utils.data.TensorDataset(ts.images.cpu().float() / 255.0, ts.labels.cpu())
        it = endless(torch.utils.data.DataLoader(data, batch_size=sz.ddpm_batch, shuffle=True))
        ema = [None]
        epoch = [0]

        def ref() -> int:
            ref_model.train()
            return sum(teapearce_train_step(ref_model, optim, next(it), dev, ema) for _ in range(sz.ddpm_steps))

        def gen() -> int:
            epoch[0] += 1
            tr.train_epoch(1)
            return sz.ddpm_steps * sz.ddpm_batch

        row = Row("ddpm", f"training step ({sz.ddpm_steps} steps, T={tr.cfg.T})", sz.ddpm_batch)
        self.rows.append(compare(row, ref, gen, sz.repeats, dev))

        # guided sampling: both with the same schedule length
        T = sz.ddpm_T
        s2 = NoiseSchedule(T, device=dev)
        ref_sampler = TeaPearceDDPM(ref_model.nn_model, s2.sqrtab, s2.sqrtmab, s2.oneover_sqrta, s2.mab_over_sqrtmab,
                                    s2.sqrt_beta_t, T).to(dev).eval()
        tr.schedule = s2
        labels = torch.arange(10, device=dev).repeat(sz.samples // 10)
        sampler = GuidedSampler(tr.model, s2)

        def ref_sample() -> int:
            ref_sampler.sample(sz.samples, (3, 28, 28), dev, guide_w=1.0)
            return sz.samples

        def gen_sample() -> int:
            tr.sample(labels, 1.0, seed=1, sampler=sampler)
            return sz.samples

        sync(dev)
        t0 = time.perf_counter()
        gen_sample()  # the warm-up: on CUDA this captures the graph
        sync(dev)
        first = time.perf_counter() - t0
        row = Row("ddpm", f"guided sampling, {sz.samples} samples, T={T}, w=1", sz.samples,
                  note=f"gentune's first call (graph capture on CUDA) {first:.2f} s")
        ref_sample()
        self.rows.append(compare(row, ref_sample, gen_sample, max(2, sz.repeats - 2), dev, warmup=False))
        secs = [sz.samples / g for g in row.gen]
        self.extra.append(f"ddpm: {sz.samples} guided samples at T={T}: gentune {med(secs):.3f} s (median), "
                          f"reference {med([sz.samples / r for r in row.ref]):.3f} s")
        if dev.type == "cuda":  # the graph and the eager path must agree
            self.extra.append(graph_vs_eager(tr.model, s2, labels, sampler))

    # -- DANN

    def run_dann(self) -> None:
        from benchmarks.reference import DANNState, dann_step, endless
        from models.dann import DANN
        from trainables.config import DANNConfig
        from trainables.dann import DANNTrainer

        sz, dev = self.sz, self.device
        tr = DANNTrainer(DANNConfig(batch_size=sz.dann_batch, steps_per_epoch=sz.dann_steps, **self.base_cfg()), quiet=True)
        torch.manual_seed(0)
        st = DANNState(DANN(), dev)

        def loader(s):
            d = torch.utils.data.TensorDataset(s.images.cpu().float().div(127.5).sub(1.0), s.labels.cpu())
            return endless(torch.utils.data.DataLoader(d, batch_size=sz.dann_batch, shuffle=True, drop_last=True))

        src, tgt = loader(tr.src), loader(tr.tgt)

        def ref() -> int:
            return sum(dann_step(st, next(src), next(tgt)) for _ in range(sz.dann_steps))

        def gen() -> int:
            tr.train_epoch(1)
            return sz.dann_steps * 2 * sz.dann_batch

        row = Row("dann", f"training step, source+target images ({sz.dann_steps} steps)", sz.dann_batch)
        self.rows.append(compare(row, ref, gen, sz.repeats, dev))

    # -- FID

    def run_fid(self) -> None:
        try:
            from trainables.metrics import fid as F
        except ImportError as e:
            self.extra.append(f"fid: skipped ({e})")
            return
        try:
            import scipy.linalg  # noqa: F401  (the reference's sqrtm)
            have_scipy = True
        except ImportError:
            have_scipy = False
        from benchmarks.reference import pytorch_fid_activations, pytorch_fid_score

        sz, dev = self.sz, self.device
        weights = F.find_weights()
        dims = 64 if self.args.quick else 2048  # --quick: the first block only, a smoke run
        model = F.build_inception(dims, weights, dev) if weights else F.build_inception(dims, device=dev, random_init=True)
        g = torch.Generator().manual_seed(0)
        fake = torch.randint(0, 256, (sz.fid_n, 3, 64, 64), dtype=torch.uint8, generator=g)
        fake_dev = fake.to(dev)
        mu, sigma = F.stats(F.inception_features(model, fake_dev, device=dev, quiet=True))  # stands for the cached real stats

        def gen() -> int:
            m2, s2 = F.stats(F.inception_features(model, fake_dev, device=dev, quiet=True))
            F.frechet_distance(m2, s2, mu, sigma)
            return sz.fid_n

        def ref() -> int:
            pytorch_fid_score(model, fake, mu, sigma, dev)
            return sz.fid_n

        def gen_features() -> int:
            F.inception_features(model, fake_dev, device=dev, quiet=True)
            return sz.fid_n

        def ref_features() -> int:
            pytorch_fid_activations(model, fake, dev)
            return sz.fid_n

        note = "" if weights else " (random-init Inception: timing only)"
        reps = max(2, sz.repeats - 2)
        # the features alone (the <= 1 s target on a GPU): Inception on fid_n 64x64 images resized to 299
        row = Row("fid", f"Inception features of {sz.fid_n} 64x64 samples{note}", sz.fid_n, ref_label="pytorch-fid style")
        self.rows.append(compare(row, ref_features, gen_features, reps, dev))
        self.extra.append(f"fid: Inception features of {sz.fid_n} 64x64 samples: gentune {med([sz.fid_n / x for x in row.gen]):.3f} s, "
                          f"pytorch-fid style {med([sz.fid_n / x for x in row.ref]):.3f} s (median)")
        what = f"FID of {sz.fid_n} samples vs cached real stats{note}"
        if not have_scipy:  # no reference sqrtm here: gentune's features + Frechet distance timed alone
            times = []
            for _ in range(reps + 1):
                sync(dev)
                t0 = time.perf_counter()
                gen()
                sync(dev)
                times.append(time.perf_counter() - t0)
            self.extra.append(f"fid: {what}: gentune {med(times[1:]):.3f} s (median); reference skipped (no scipy)")
            return
        row = Row("fid", what, sz.fid_n)
        self.rows.append(compare(row, ref, gen, reps, dev))
        self.extra.append(f"fid: {sz.fid_n} samples: gentune {med([sz.fid_n / x for x in row.gen]):.3f} s, "
                          f"pytorch-fid style {med([sz.fid_n / x for x in row.ref]):.3f} s (median)")

    # -- packing and memory (CUDA): one process per trial

    def run_pack(self, families: list[str], counts: list[int]) -> None:
        cuda = self.device.type == "cuda"
        total = torch.cuda.get_device_properties(self.device).total_memory / 2**20 if cuda else 0.0
        for fam in families:
            base = None
            for k in counts:
                res = launch_workers(fam, k, self.args, self.sz)
                if res is None or "error" in res[0]:
                    why = res[0]["error"] if res else "see stderr"
                    self.extra.append(f"pack {fam} x{k}: a worker failed ({why})")
                    continue
                agg = sum(r["img_s"] for r in res)
                peak = max(r["peak_mb"] for r in res)
                if k == 1:
                    base = agg
                if k == 1 and cuda:
                    self.extra.append(f"memory {fam}: peak {peak:.0f} MiB allocated, {max(r['reserved_mb'] for r in res):.0f} MiB "
                                      f"reserved per trial (of {total:.0f} MiB; by memory {int(total // max(peak, 1))} would fit)")
                scale = f", {agg / base:.2f}x one trial" if base else ""
                each = ", ".join(f"{r['img_s']:,.0f}" for r in res)
                peaks = ", ".join(f"{r['peak_mb']:.0f}" for r in res)
                mem = f"; peak MiB allocated per trial {peaks}" if cuda else ""
                self.extra.append(f"pack {fam} x{k}: aggregate {agg:,.0f} img/s (per trial {each}){scale}{mem}")

    # -- output

    def table(self) -> list[str]:
        lines = ["| family | workload | batch | reference img/s | gentune img/s | ratio (median) | ratio range | repeats |",
                 "|---|---|---:|---:|---:|---:|---|---:|"]
        for r in self.rows:
            rr = r.ratios
            lines.append(f"| {r.family} | {r.what} | {r.batch} | {med(r.ref):,.1f} | {med(r.gen):,.1f} | "
                         f"{med(rr):.2f} | {min(rr):.2f}-{max(rr):.2f} | {len(rr)} |")
        return lines


# tests/test_benchmarks.py::test_cuda_graph_sampler_matches_eager holds the same bounds
GRAPH_TOLERANCE = {"bf16": 2e-2, "fp32": 1e-3}  # max |graph - eager| / max |eager|


def graph_vs_eager(model, schedule, labels: torch.Tensor, graphed) -> str:
    """Same seed through the eager sampler and the CUDA-graph sampler, under bf16 autocast (as trials
    sample) and in fp32: max |difference| and whether it is within GRAPH_TOLERANCE."""
    from models.ddpm import GuidedSampler

    dev = labels.device
    was = model.training
    model.eval()
    parts = []
    try:
        for name, amp in (("bf16", True), ("fp32", False)):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                a, _ = GuidedSampler(model, schedule, cuda_graph=False).sample(labels, 1.0, generator=torch.Generator(dev).manual_seed(5))
                b, _ = graphed.sample(labels, 1.0, generator=torch.Generator(dev).manual_seed(5))
            diff = (a.float() - b.float()).abs().max().item()
            rel = diff / max(a.float().abs().max().item(), 1e-6)
            ok = "within" if rel <= GRAPH_TOLERANCE[name] else "OUTSIDE"
            parts.append(f"{name} max |diff| = {diff:.2e} (relative {rel:.1e}, {ok} tolerance {GRAPH_TOLERANCE[name]:g})")
    finally:
        model.train(was)
    return f"ddpm: CUDA graph vs eager sampler, {len(labels)} samples, T={schedule.T}, w=1, same seed: " + "; ".join(parts)


def launch_workers(family: str, k: int, args, sz: Sizes) -> list[dict]:
    """k gentune trials of `family` as separate processes, started together after a file barrier: one
    result dict per trial, or [{"error": ...}] when a worker failed (its stderr's tail goes to stderr)."""
    barrier = Path(tempfile.mkdtemp(prefix="gentune-pack-"))
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--worker", family, "--device", args.device, "--barrier", str(barrier),
           "--k", str(k), "--seconds", str(sz.pack_seconds)]
    if args.quick:
        cmd.append("--quick")
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    errs = [barrier / f"stderr{i}.txt" for i in range(k)]  # files, not pipes: a full pipe would stall a worker
    procs = []
    for i in range(k):
        with errs[i].open("w") as err:
            procs.append(subprocess.Popen([*cmd, "--idx", str(i)], cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True))
    out = []
    for i, p in enumerate(procs):
        stdout, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            tail = errs[i].read_text().strip().splitlines()[-20:]
            print(f"pack worker {family} {i + 1}/{k} exited {p.returncode}:\n" + "\n".join(tail), file=sys.stderr)
            for q in procs:
                q.kill()
            for q in procs:
                q.wait()
            last = next((ln for ln in reversed(tail) if ln.strip()), "")
            return [{"error": f"exit {p.returncode}: {last[:200]}"}]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def worker(args) -> None:
    """One packed trial: build gentune's trainer, warm up, wait at the barrier, train for --seconds."""
    b = Bench(args)
    sz, dev = b.sz, b.device
    cuda = dev.type == "cuda"  # on the CPU (a smoke test of this path) there is no peak memory to read
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    chunk = 10 if not args.quick else 2
    if args.worker in ("gan-a", "gan-b"):
        tr = b.gan_trainer(args.worker[-1].upper(), chunk)
        per = chunk * sz.gan_batch
    elif args.worker == "ddpm":
        from trainables.config import DDPMConfig
        from trainables.ddpm import DDPMTrainer

        tr = DDPMTrainer(DDPMConfig(batch_size=sz.ddpm_batch, steps_per_epoch=chunk, **b.base_cfg()), quiet=True)
        per = chunk * sz.ddpm_batch
    else:
        from trainables.config import DANNConfig
        from trainables.dann import DANNTrainer

        tr = DANNTrainer(DANNConfig(batch_size=sz.dann_batch, steps_per_epoch=chunk, **b.base_cfg()), quiet=True)
        per = chunk * 2 * sz.dann_batch
    tr.train_epoch(1)
    tr.train_epoch(1)
    if args.worker == "ddpm":  # its evaluation samples 100 digits with a CUDA graph: part of a trial's peak
        labels = torch.arange(10, device=dev).repeat_interleave(10)
        tr.sample(labels, 1.0, seed=0)
    sync(dev)
    Path(args.barrier, f"ready{args.idx}").touch()
    deadline = time.time() + 300
    while len(list(Path(args.barrier).glob("ready*"))) < args.k and time.time() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < args.seconds:
        tr.train_epoch(1)  # ends with a host read: the work is done when it returns
        n += per
    elapsed = time.perf_counter() - t0
    print(json.dumps({"img_s": n / elapsed, "peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else 0.0,
                      "reserved_mb": torch.cuda.max_memory_reserved(dev) / 2**20 if cuda else 0.0}))


# ----------------------------------------------------------------------------- profile (GAN B and bf16)


def profile_gan(args) -> None:
    """One gentune GAN step of model A and B, fp32 and bf16 autocast: time, ops, top ops, spectral norm's share."""
    from torch.profiler import ProfilerActivity, profile

    b = Bench(args)
    dev = b.device
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    for fam in args.profile.split(","):
        model = fam[-1].upper()
        for amp in args.profile_amp.split(","):
            tr = b.gan_trainer(model, 1)
            tr.cfg = dataclasses.replace(tr.cfg, amp=amp)
            x = tr.prep(b.faces(b.sz.gan_batch).to(dev).float().div_(127.5).sub_(1.0))
            for _ in range(2):
                tr.step(x)
            sync(dev)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                tr.step(x)[0].item()
                times.append(time.perf_counter() - t0)
            with profile(activities=acts) as prof:
                tr.step(x)[0].item()
                sync(dev)
            ev = prof.key_averages()
            n_ops = sum(e.count for e in ev if e.key.startswith("aten::"))
            sn_keys = ("aten::mv", "aten::linalg_vector_norm", "aten::vdot", "aten::dot", "aten::clamp_min", "aten::div")
            key_attr = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
            total = sum(getattr(e, key_attr) for e in ev) or 1.0
            sn = sum(getattr(e, key_attr) for e in ev if e.key in sn_keys)
            print(f"\n== {fam} amp={amp} batch={b.sz.gan_batch} on {dev.type}: step {med(times) * 1e3:.1f} ms (median of 3), "
                  f"{n_ops} aten op calls; spectral-norm-type ops (mv/norm/vdot/div/clamp) {100 * sn / total:.1f}% of "
                  f"{'GPU' if dev.type == 'cuda' else 'CPU'} time")
            print(ev.table(sort_by=key_attr, row_limit=args.rows))
            print(f"per-layer forward+backward time, {fam} amp={amp} (ms, median of 5):")
            z = tr.prep(torch.randn(b.sz.gan_batch, 100, 1, 1, device=dev))
            for name, net, inp in (("G", tr.G, z), ("D", tr.D, x)):
                print(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in layer_times(net.main, inp, tr.cfg, dev)))


def layer_times(seq: torch.nn.Sequential, x: torch.Tensor, cfg, dev: torch.device, reps: int = 5) -> list[tuple[str, float]]:
    """Forward + backward time of each layer of a Sequential on its real input (autocast as in training)."""
    from trainables.device import autocast

    out = []
    for i, layer in enumerate(seq):
        leaf = x.detach().requires_grad_(x.is_floating_point())
        times = []
        for _ in range(reps + 1):
            h = leaf.clone()  # not a leaf: in-place layers (ReLU(True)) may write it
            sync(dev)
            t0 = time.perf_counter()
            with autocast(cfg, dev):
                y = layer(h)
            y.float().sum().backward()
            sync(dev)
            times.append(time.perf_counter() - t0)
        name = type(layer).__name__.replace("Parametrized", "SN-")
        out.append((f"{i}:{name}", med(times[1:]) * 1e3))
        with torch.no_grad(), autocast(cfg, dev):
            x = layer(x)
    return out


# ----------------------------------------------------------------------------- main


def prepare_cache(cache_dir: str) -> None:
    """Decode every demo split the benchmark reads (faces 64px, mnistm 28px, mnistm/usps 32px) into the cache."""
    from trainables.config import DataConfig
    from trainables.data import cache_root, load_split

    for dc, split, size, kind in [(DataConfig(), "train", 64, "faces"), (DataConfig(domain="mnistm"), "train", 28, "digits")] + [
        (DataConfig(domain=d), sp, 32, "digits") for d in ("mnistm", "usps") for sp in ("train", "val")
    ]:
        load_split(dc, split, size, kind, cache_dir, quiet=True)
    print(f"demo data cached under {cache_root(cache_dir) / 'datasets'}")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {name}, {torch.get_num_threads()} threads, {os.cpu_count()} cores (torch {torch.__version__})"


def commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
        return (sha or "unknown") + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--family", default=",".join(FAMILIES), help=f"comma-separated, of: {', '.join(FAMILIES)}")
    p.add_argument("--steps", type=int, default=0, help="training steps per timed repeat (default: per device)")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats per workload (default: per device)")
    p.add_argument("--batch", type=int, default=0, help="batch size of the training rows (default: per device)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's; --quick: 1, as a busy machine stalls multi-threaded tiny ops)")
    p.add_argument("--pack", default="dann", help="CUDA: families to pack 1, 2 and 4 trials of ('' for none)")
    p.add_argument("--mem", default="gan-a,gan-b,ddpm,dann", help="CUDA: families whose one-trial peak memory to measure")
    p.add_argument("--results", default="", help="append the table to this markdown file (e.g. benchmarks/RESULTS.md)")
    p.add_argument("--cache-dir", default="", help="gentune's dataset cache (default: $GENTUNE_CACHE or ~/.cache/gentune)")
    p.add_argument("--prepare-cache", action="store_true",
                   help="only decode the demo data the benchmark uses into --cache-dir (then carry that folder to a "
                        "machine without scikit-learn / scikit-image)")
    p.add_argument("--profile", default="", help="profile gentune's GAN step instead: gan-a,gan-b")
    p.add_argument("--rows", type=int, default=15, help="--profile: top ops shown")
    p.add_argument("--profile-amp", default="off,on", help="--profile: autocast settings to profile (off = fp32, on = bf16)")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--barrier", default="", help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--idx", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=8.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    bad = [f for f in a.family.split(",") if f and f not in FAMILIES]
    if bad:
        p.error(f"unknown family {bad[0]!r}; expected some of {', '.join(FAMILIES)}")
    return a


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    if args.prepare_cache:
        return prepare_cache(args.cache_dir)
    if args.worker:
        return worker(args)
    if args.profile:
        return profile_gan(args)
    b = Bench(args)
    dev = b.device
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"# gentune throughput: {describe(dev)}; commit {commit()}; {dt.date.today().isoformat()}", flush=True)
    start = time.perf_counter()
    fams = [f for f in args.family.split(",") if f]
    for fam in FAMILIES:
        if fam not in fams:
            continue
        t0 = time.perf_counter()
        {"data": b.run_data, "gan-a": lambda: b.run_gan("A"), "gan-b": lambda: b.run_gan("B"), "ddpm": b.run_ddpm,
         "dann": b.run_dann, "fid": b.run_fid}[fam]()
        for r in b.rows:
            if r.family == fam:
                print(f"{fam:6s} {r.what}: reference {med(r.ref):,.1f} img/s, gentune {med(r.gen):,.1f} img/s", flush=True)
                print(f"ratio {fam}: {med(r.ratios):.2f} (gentune / reference, {r.what}; median of {len(r.ratios)} paired "
                      f"repeats, range {min(r.ratios):.2f}-{max(r.ratios):.2f})", flush=True)
        print(f"  ({fam} took {time.perf_counter() - t0:.0f} s)", flush=True)
    if dev.type == "cuda":
        mem = [f for f in args.mem.split(",") if f]
        pack = [f for f in args.pack.split(",") if f]
        for f in mem:
            if f not in pack:
                b.run_pack([f], [1])
        b.run_pack(pack, [1, 2, 4])
    lines = b.table()
    print()
    print("\n".join(lines))
    for e in b.extra:
        print(e)
    print(f"# total {time.perf_counter() - start:.0f} s")
    if args.results:
        path = Path(args.results)
        cmd = "python -m benchmarks.throughput " + " ".join(sys.argv[1:] if argv is None else argv)
        sec = [f"\n## {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} - {describe(dev)} - commit {commit()}\n",
               f"`{cmd}`\n", *lines, "", *[f"- {e}" for e in b.extra], ""]
        with path.open("a") as f:
            f.write("\n".join(sec) + "\n")
        print(f"# table appended to {path}")


if __name__ == "__main__":
    main()
