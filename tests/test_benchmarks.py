"""Smoke test of benchmarks.throughput: it runs end to end with tiny sizes and prints its ratio lines
and table. Not a measurement (the timed comparisons are `python -m benchmarks.throughput`)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_throughput_quick_prints_ratios(tmp_path, cache_dir):
    env = {**os.environ, "GENTUNE_CACHE": str(cache_dir)}
    results = tmp_path / "RESULTS.md"
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.throughput", "--device", "cpu", "--quick", "--family", "data,dann",
         "--results", str(results)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    for fam in ("data", "dann"):
        m = re.search(rf"^ratio {fam}: (\d+\.\d+) \(gentune / reference.*median of (\d+) paired repeats, "
                      rf"range (\d+\.\d+)-(\d+\.\d+)\)", p.stdout, re.MULTILINE)
        t = re.search(rf"^{fam} .*: reference ([\d,.]+) img/s, gentune ([\d,.]+) img/s", p.stdout, re.MULTILINE)
        assert m and t, p.stdout
        ratio, repeats, lo, hi = float(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))
        ref, gen = (float(x.replace(",", "")) for x in t.groups())
        assert lo <= ratio <= hi, m.group(0)
        if repeats == 1:  # one paired repeat (dann under --quick): the ratio is its two printed timings' quotient
            tol = 0.005 + gen / ref * (0.05 / ref + 0.05 / gen) + 1e-9  # printed to 2 and 1 decimals
            assert abs(ratio - gen / ref) <= tol, (t.group(0), m.group(0))
            assert lo == hi == ratio
    assert "| family | workload |" in p.stdout
    text = results.read_text()
    assert "commit" in text and "| data |" in text and "| dann |" in text


def test_ratio_is_each_repeats_gentune_over_reference_rate_and_their_median(monkeypatch):
    """benchmarks.throughput.compare on a fake clock: each repeat's img/s is images / seconds of that call, the
    ratio gentune / reference per repeat, the printed ratio their median and the range their min-max, all
    computed here by hand from the durations."""
    from types import SimpleNamespace

    from benchmarks import throughput as tp

    clock = [0.0]
    monkeypatch.setattr(tp, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def workload(seconds: list[float], images: int):
        it = iter(seconds)

        def run() -> int:
            clock[0] += next(it)
            return images
        return run

    # warm-up call first, then three timed repeats (order ref/gen, gen/ref, ref/gen: each takes its next duration)
    ref = workload([9.0, 2.0, 4.0, 1.0], 10)  # 5, 2.5, 10 img/s
    gen = workload([9.0, 0.5, 2.0, 4.0], 20)  # 40, 10, 5 img/s: median ratio 4, ratio of medians 2
    row = tp.compare(tp.Row("x", "workload", 10), ref, gen, 3, torch.device("cpu"))
    assert row.ref == [5.0, 2.5, 10.0] and row.gen == [40.0, 10.0, 5.0]
    assert row.ratios == [8.0, 4.0, 0.5]
    b = SimpleNamespace(rows=[row])
    assert tp.Bench.table(b)[2] == "| x | workload | 10 | 5.0 | 10.0 | 4.00 | 0.50-8.00 | 3 |"


def test_reference_gan_step_matches_the_tutorial_shapes():
    """The tutorial-style step runs on a tiny batch and records its five statistics."""
    from benchmarks.reference import GANState, tutorial_gan_step
    from models.gan import build_gan

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        st = GANState(*build_gan("A"), torch.device("cpu"), "A")
        n = tutorial_gan_step(st, (torch.rand(2, 3, 64, 64) * 2 - 1,))
    finally:
        torch.set_num_threads(threads)
    assert n == 2 and len(st.stats) == 1 and len(st.stats[0]) == 5


def test_graphed_sampler_step_equals_eager_on_cpu():
    """The CUDA-graph sampler's step, run uncaptured on the CPU, gives the eager sampler's samples exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a busy 2-core machine: one thread avoids stalls at each op
    try:
        _graphed_vs_eager()
    finally:
        torch.set_num_threads(threads)


def _graphed_vs_eager():
    from models.ddpm import DDPM, GuidedSampler, NoiseSchedule

    torch.manual_seed(0)
    m = DDPM(8).eval()
    s = NoiseSchedule(10)
    labels = torch.tensor([3, 1, 4])
    for w in (0.0, 1.0):
        a, ka = GuidedSampler(m, s).sample(labels, w, generator=torch.Generator().manual_seed(3), keep_at=(10, 5, 0))
        b, kb = GuidedSampler(m, s)._sample_graphed(labels, w, torch.Generator().manual_seed(3), (10, 5, 0), (3, 28, 28))
        assert torch.allclose(a, b, atol=1e-6), (w, (a - b).abs().max())
        assert sorted(ka) == sorted(kb) == [0, 5, 10]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_sampler_matches_eager():
    from models.ddpm import DDPM, GuidedSampler, NoiseSchedule

    torch.manual_seed(0)
    dev = torch.device("cuda")
    m = DDPM(32).to(dev).eval()
    s = NoiseSchedule(50, device=dev)
    labels = torch.arange(10, device=dev).repeat(2)
    sampler = GuidedSampler(m, s)
    for amp in (False, True):
        for w in (0.0, 2.0):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                a, _ = GuidedSampler(m, s, cuda_graph=False).sample(labels, w, generator=torch.Generator(dev).manual_seed(1))
                b, _ = sampler.sample(labels, w, generator=torch.Generator(dev).manual_seed(1))
                c, _ = sampler.sample(labels, w, generator=torch.Generator(dev).manual_seed(1))  # replayed graph, again
            assert torch.equal(b, c)
            rel = ((a - b).abs().max() / a.abs().max().clamp_min(1e-6)).item()
            assert rel < (2e-2 if amp else 1e-3), (amp, w, rel)
