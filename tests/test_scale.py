"""benchmarks.scale: its ratios and overheads are the quotients of the timings it prints, checked by recomputing
them from the printed numbers (a real run at a tiny size) and from fake timings (no Ray)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

NUM = r"(-?\d+\.\d+)"


@pytest.fixture
def scale_module():
    """benchmarks.scale imported here (it registers the `scale` family), and the family gone afterwards."""
    from benchmarks import scale
    from trainables.families import FAMILIES

    try:
        yield scale
    finally:
        FAMILIES.pop("scale", None)


def test_rows_are_computed_from_the_wall_times(scale_module):
    """make_row on made-up wall times: ideal = ceil(N / c) * E * work, overhead = (wall - ideal) / (N * E), the
    ratios gentune / plain of wall and of overhead, the marginal overhead between two N, the estimate for the next."""
    s = scale_module
    r1 = s.make_row(10, 3, 0.1, 2, {"wall": 9.0}, {"wall": 12.0}, None)
    assert r1["ideal"] == pytest.approx(5 * 3 * 0.1)
    assert r1["plain_overhead"] == pytest.approx((9.0 - 1.5) / 30)
    assert r1["gentune_overhead"] == pytest.approx((12.0 - 1.5) / 30)
    assert r1["ratio_wall"] == pytest.approx(12.0 / 9.0)
    assert r1["ratio_overhead"] == pytest.approx(10.5 / 7.5)
    assert "plain_marginal" not in r1
    r2 = s.make_row(31, 3, 0.1, 2, {"wall": 30.0}, {"wall": 50.0}, r1)
    assert r2["ideal"] == pytest.approx(16 * 3 * 0.1)  # 31 trials on 2 slots: 16 rounds
    assert r2["plain_marginal"] == pytest.approx(((30.0 - 9.0) - (4.8 - 1.5)) / 63)
    assert r2["gentune_marginal"] == pytest.approx(((50.0 - 12.0) - (4.8 - 1.5)) / 63)
    ideal = math.ceil(100 / 2) * 3 * 0.1
    assert s.estimate_s(r2, 100, 3, 0.1, 2) == pytest.approx(2 * ideal + (r2["plain_marginal"] + r2["gentune_marginal"]) * 300)
    text = s.table([r1, r2])
    assert "| 10 | 3 | " in text and f"| {r2['ratio_wall']:.3f} |" in text and f"{r2['gentune_marginal']:.4f} |" in text


@pytest.mark.slow
@pytest.mark.ray
def test_quick_run_prints_ratios_of_its_printed_timings(tmp_path, cache_dir):
    """`python -m benchmarks.scale --quick` (4 trials of 2 results, both sides, `gentune status` timed): every
    trial reported every result, and the printed overheads and ratios follow from the printed wall times."""
    out = tmp_path / "scale.json"
    p = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--quick", "--cli", "status", "--json", str(out)],
                       cwd=REPO, env={**os.environ, "GENTUNE_CACHE": str(cache_dir)}, capture_output=True, text=True,
                       timeout=600, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = re.search(r"^N 4: results plain (\d+) gentune (\d+) \(expected (\d+); trial errors plain (\d+) gentune (\d+)\), "
                    rf"ideal {NUM} s$", p.stdout, re.MULTILINE)
    walls = re.search(rf"^N 4: plain wall {NUM} s, overhead {NUM} s/result; gentune wall {NUM} s, overhead {NUM} s/result$",
                      p.stdout, re.MULTILINE)
    ratios = re.search(rf"^N 4: ratio gentune/plain wall {NUM}, overhead {NUM}$", p.stdout, re.MULTILINE)
    assert res and walls and ratios, p.stdout
    n_plain, n_gen, expected, err_plain, err_gen = map(int, res.groups()[:5])
    assert (n_plain, n_gen, expected, err_plain, err_gen) == (8, 8, 8, 0, 0)  # 4 trials x 2 epochs, all reported
    ideal = float(res.group(6))
    assert ideal == pytest.approx(2 * 2 * 0.05)  # ceil(4 / 2) rounds x 2 epochs x 0.05 s
    plain, plain_oh, gen, gen_oh = map(float, walls.groups())
    ratio_wall, ratio_oh = map(float, ratios.groups())
    # from the printed numbers, within their rounding (2 decimals for walls, 4 for overheads, 3 for ratios)
    assert plain_oh == pytest.approx((plain - ideal) / 8, abs=0.005 / 8 + 5e-5)
    assert gen_oh == pytest.approx((gen - ideal) / 8, abs=0.005 / 8 + 5e-5)
    assert ratio_wall == pytest.approx(gen / plain, abs=5e-4 + gen / plain * 0.01 / plain)
    assert ratio_oh == pytest.approx(gen_oh / plain_oh, abs=5e-4 + gen_oh / plain_oh * 2e-4 / plain_oh)
    assert plain > ideal and gen > ideal  # nothing runs faster than its compute
    # the returned numbers are the printed ones, and their ratios exactly their quotients
    data = json.loads(out.read_text())
    row = data["rows"][0]
    assert f"{row['plain']['wall']:.2f}" == walls.group(1) and f"{row['gentune']['wall']:.2f}" == walls.group(3)
    assert row["ratio_wall"] == row["gentune"]["wall"] / row["plain"]["wall"]
    assert row["ratio_overhead"] == row["gentune_overhead"] / row["plain_overhead"]
    assert row["gentune_overhead"] == (row["gentune"]["wall"] - row["ideal"]) / 8
    status = re.search(rf"^cli N 4: gentune status {NUM} s \(exit 0\)$", p.stdout, re.MULTILINE)
    assert status and f"{data['cli']['4']['status']['wall']:.2f}" == status.group(1), p.stdout
    assert "| N | E | results |" in p.stdout and "| gentune status s |" in p.stdout
