"""Property-based tests (hypothesis) of the structured inputs and pure computations (issue 26, item 4):
spec `--set` parsing (round-trips, refusals), config coercion (from_flat / to_flat), the Pareto front and
its knee against brute force, and the noise schedules (abar monotone, sqrt(abar_T) within the bound the
config enforces for every T it accepts). Example counts are modest so the file runs in seconds."""
from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from analysis.sweepdata import knee, pareto_front
from models.ddpm import NoiseSchedule
from search.spec import SWEEP_KEYS, apply_overrides, parse_spec
from trainables.config import (MAX_SIGNAL_AT_T, DANNConfig, DDPMConfig, GANConfig, flat_keys, from_flat,
                               to_flat)
from trainables.errors import SpecError
from tests.test_best_trial import brute_front

# Deterministic by default (the same examples every run, so the default test set never flakes); set
# GENTUNE_HYPOTHESIS_EXPLORE=N to draw N times as many fresh random examples (e.g. before a release).
EXPLORE = int(os.environ.get("GENTUNE_HYPOTHESIS_EXPLORE", "0") or 0)


def examples(n: int) -> settings:
    return settings(max_examples=n * max(EXPLORE, 1), deadline=None, derandomize=not EXPLORE, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


FEW = examples(60)

# --- valid values of GANConfig keys (each key's own range) -------------------------------------------------

prob = st.floats(0.0, 1.0, allow_nan=False)
lr = st.floats(1e-6, 0.5, allow_nan=False)
GAN_VALUES = {
    "lr_g": lr, "lr_d": lr, "beta1": st.floats(0.0, 0.999), "beta2": st.floats(0.0, 0.9999),
    "model": st.sampled_from(["A", "B"]), "width": st.integers(1, 64).map(lambda k: 4 * k),
    "d_optimizer": st.sampled_from(["adam", "sgd"]), "label_flip": prob, "n_eval": st.integers(2, 5000),
    "fid": st.sampled_from(["auto", "off"]), "fid_dims": st.sampled_from([64, 192, 768, 2048]),
    "patience": st.integers(1, 50), "seed": st.integers(-(2**31), 2**31), "batch_size": st.integers(1, 4096),
    "epochs": st.integers(1, 10_000), "steps_per_epoch": st.integers(0, 1000), "d_won_fake": prob,
    "d_won_loss": st.floats(0.0, 10.0), "r1_gamma": st.floats(0.0, 100.0), "r1_every": st.integers(1, 64),
    "instance_noise": st.floats(0.0, 2.0), "collapse_diversity": st.floats(0.0, 10.0), "rules_after": st.integers(0, 100),
    "augment": st.sampled_from(["none", "diffaugment"]),
    "augment_policy": st.permutations(["color", "translation", "cutout"]).flatmap(
        lambda p: st.integers(1, 3).map(lambda n: ",".join(p[:n]))),
    "device": st.sampled_from(["auto", "cpu", "cuda"]), "amp": st.sampled_from(["auto", "on", "off"]),
    "cache_dir": st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=12),
    "data.source": st.sampled_from(["demo", "report", "mnist", "celeba", "folder"]), "data.limit": st.integers(0, 10**6),
}


@st.composite
def gan_flat(draw) -> dict:
    """A valid flat GAN config: some keys drawn from GAN_VALUES, label ranges drawn as ordered pairs."""
    keys = draw(st.lists(st.sampled_from(sorted(GAN_VALUES)), unique=True, max_size=10))
    flat = {k: draw(GAN_VALUES[k]) for k in keys}
    if draw(st.booleans()):
        for side in ("real", "fake"):
            lo, hi = sorted(draw(st.lists(st.floats(-0.5, 1.5), min_size=2, max_size=2)))
            flat[f"{side}_label_lo"], flat[f"{side}_label_hi"] = lo, hi
    return flat


@FEW
@given(gan_flat())
def test_config_from_flat_keeps_every_valid_value_and_round_trips(flat) -> None:
    cfg = from_flat(GANConfig, flat)
    back = to_flat(cfg)
    assert {k: back[k] for k in flat} == flat
    assert set(back) == set(flat_keys(GANConfig))
    assert from_flat(GANConfig, back) == cfg


@FEW
@given(gan_flat())
def test_config_numbers_given_as_strings_coerce_to_the_same_config(flat) -> None:
    """YAML 1.1 reads 1e-4 as a string: a number written as text parses to the same value."""
    as_text = {k: (repr(v) if isinstance(v, float) else str(v)) if isinstance(v, (int, float)) else v for k, v in flat.items()}
    assert from_flat(GANConfig, as_text) == from_flat(GANConfig, flat)


INT_KEYS = [k for k, v in to_flat(GANConfig()).items() if type(v) is int]
FLOAT_KEYS = [k for k, v in to_flat(GANConfig()).items() if type(v) is float]
LITERAL_KEYS = ["model", "d_optimizer", "augment", "device", "data.source"]
junk_text = st.text(st.characters(codec="ascii", categories=["L"]), min_size=1, max_size=8)


@FEW
@given(st.data())
def test_config_refuses_a_wrong_type_naming_the_key(data) -> None:
    kind = data.draw(st.sampled_from(["int", "float", "literal", "str"]))
    if kind == "int":
        key = data.draw(st.sampled_from(INT_KEYS))
        bad = data.draw(st.one_of(st.floats(allow_nan=False).filter(lambda x: not float(x).is_integer() if math.isfinite(x) else True),
                                  st.booleans(), junk_text.filter(lambda s: s.lower() not in ("true", "false")), st.lists(st.integers(), max_size=2)))
    elif kind == "float":
        key = data.draw(st.sampled_from(FLOAT_KEYS))
        bad = data.draw(st.one_of(st.booleans(), junk_text.filter(lambda s: s.lower() not in ("inf", "nan", "infinity")),
                                  st.lists(st.floats(), max_size=2)))
    elif kind == "literal":
        key = data.draw(st.sampled_from(LITERAL_KEYS))
        bad = data.draw(junk_text.filter(lambda s: s not in ("A", "B", "adam", "sgd", "none", "auto", "cpu", "cuda", "demo",
                                                            "report", "mnist", "mnistm", "svhn", "usps", "celeba", "folder")))
    else:
        key = data.draw(st.sampled_from(["augment_policy", "fid_weights", "cache_dir", "data.root", "data.domain"]))
        bad = data.draw(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans()))
    with pytest.raises(SpecError) as e:
        from_flat(GANConfig, {key: bad})
    assert str(e.value).startswith(f"{key}: "), (key, bad, str(e.value))


@FEW
@given(st.from_regex(r"[a-z][a-z_]{0,10}(\.[a-z_]{1,8})?", fullmatch=True))
def test_config_refuses_an_unknown_key_naming_it(key) -> None:
    for cls in (GANConfig, DDPMConfig, DANNConfig):
        if key in flat_keys(cls):
            continue
        with pytest.raises(SpecError, match=f"unknown config key '{key}'"):
            from_flat(cls, {key: 1})


# --- spec --set ------------------------------------------------------------------------------------------

GAN_SPEC = {"family": "gan", "config": {"epochs": 6, "eval_every": 1},
            "search": {"lr_g": {"loguniform": [1e-5, 1e-3]}, "lr_d": {"loguniform": [1e-5, 1e-3]}}}
SET_KEYS = ["lr_g", "lr_d", "beta1", "model", "width", "d_optimizer", "label_flip", "n_eval", "fid", "patience", "seed",
            "batch_size", "steps_per_epoch", "r1_gamma", "augment_policy", "data.limit"]


def as_set_text(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


@FEW
@given(st.lists(st.sampled_from(SET_KEYS), unique=True, min_size=1, max_size=5).flatmap(
    lambda ks: st.fixed_dictionaries({k: GAN_VALUES[k] for k in ks})))
def test_set_round_trips_into_the_study_config_and_replaces_a_searched_key(values) -> None:
    study = parse_spec(GAN_SPEC, [f"{k}={as_set_text(v)}" for k, v in values.items()]).studies[0]
    assert {k: study.config[k] for k in values} == values
    assert {d.key for d in study.search} == {"lr_g", "lr_d"} - set(values)  # a --set key is no longer searched
    assert study.config["epochs"] == 6  # what --set did not name stays as written


@FEW
@given(st.integers(1, 10**6), st.sampled_from(["trials", "grace_period"]))
def test_set_budget_keys_reach_the_budget(n, key) -> None:
    study = parse_spec({**GAN_SPEC, "config": {"epochs": 10**7, "eval_every": 1}}, [f"budget.{key}={n}"]).studies[0]
    assert getattr(study, key) == n


@FEW
@given(st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True), st.integers(0, 9))
def test_set_refuses_an_unknown_key_naming_it(key, v) -> None:
    assume(key not in flat_keys(GANConfig) and key not in SWEEP_KEYS and key not in ("metric", "mode", "concurrency"))
    with pytest.raises(SpecError, match=f"--set {key}: unknown config key"):
        parse_spec(GAN_SPEC, [f"{key}={v}"])


@FEW
@given(st.text(st.characters(codec="ascii", exclude_characters="="), max_size=20))
def test_set_without_equals_sign_is_refused(item) -> None:
    with pytest.raises(SpecError, match="expected key=value"):
        apply_overrides({"family": "gan"}, [item])


@FEW
@given(st.sampled_from(["epochs", "n_eval", "width", "patience", "batch_size"]),
       st.one_of(junk_text.filter(lambda s: s.lower() not in ("true", "false", "yes", "no", "on", "off", "y", "n")),
                 st.integers(-1000, 0)))
def test_set_refuses_a_bad_value_naming_the_key(key, bad) -> None:
    with pytest.raises(SpecError, match=key):
        parse_spec(GAN_SPEC, [f"{key}={bad}"])


# --- Pareto front and knee against brute force -------------------------------------------------------------

def _point_sets(dims: int):
    coord = st.integers(0, 6)  # a small grid: ties and equal points are common
    return st.dictionaries(st.from_regex(r"[a-z]{1,3}", fullmatch=True), st.tuples(*[coord] * dims).map(
        lambda t: tuple(float(x) for x in t)), min_size=1, max_size=12)


@st.composite
def points_and_modes(draw):
    dims = draw(st.integers(2, 3))
    return draw(_point_sets(dims)), tuple(draw(st.lists(st.sampled_from(["min", "max"]), min_size=dims, max_size=dims)))


@examples(100)
@given(points_and_modes())
def test_pareto_front_equals_brute_force(pm) -> None:
    points, modes = pm
    front = pareto_front(points, modes)
    assert set(front) == brute_front(points, modes) and len(front) == len(set(front))
    assert front == [k for k in points if k in set(front)]  # in the points' order


def exact_knee_distances(front: dict[str, tuple[float, ...]], modes: tuple[str, ...]) -> dict[str, Fraction]:
    """Squared distance of each front point to the ideal corner once each objective is min-max scaled over the front
    (0 = its best end), in exact rational arithmetic."""
    keys = list(front)
    out = {k: Fraction(0) for k in keys}
    for i, m in enumerate(modes):
        col = [Fraction(front[k][i]) for k in keys]
        lo, hi = min(col), max(col)
        for k, v in zip(keys, col):
            bad = Fraction(0) if hi == lo else ((v - lo) if m == "min" else (hi - v)) / (hi - lo)
            out[k] += bad * bad
    return out


@examples(100)
@given(points_and_modes())
# b and aaa tie exactly (25/36 + 1/16); in floats aaa came out 1 ulp nearer and won against the tie rule
@example(({"a": (0.0, 0.0, 0.0), "aaa": (2.0, 3.0, 3.0), "ab": (3.0, 1.0, 0.0), "b": (0.0, 3.0, 5.0),
           "aa": (0.0, 4.0, 6.0)}, ("min", "max", "min")))
def test_knee_is_the_front_point_nearest_the_ideal_with_ties_to_the_better_first_objective(pm) -> None:
    points, modes = pm
    front = {k: points[k] for k in brute_front(points, modes)}
    pick = knee(front, modes)
    d = exact_knee_distances(front, modes)
    best = min(d.values())
    assert pick in front and d[pick] == best, (front, pick, d)
    near = [k for k in front if d[k] == best]  # exact ties (the knee must not let float rounding break them)
    sign = 1.0 if modes[0] == "min" else -1.0
    assert sign * front[pick][0] == min(sign * front[k][0] for k in near)
    assert pick == min(k for k in near if front[k][0] == front[pick][0])  # then the first key in sorted order


# --- noise schedules ----------------------------------------------------------------------------------------

def independent_abar(T: int, beta_start: float, beta_end: float, kind: str) -> np.ndarray:
    """abar_t for t = 0..T from the formulas in NoiseSchedule's docstring, in numpy float64."""
    t = np.arange(T + 1, dtype=np.float64)
    if kind == "cosine":
        f = np.cos((t / T + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = np.concatenate([[0.0], np.minimum(1 - f[1:] / f[:-1], 0.999)])
    else:
        if kind == "scaled":
            beta_start, beta_end = beta_start * 1000 / T, beta_end * 1000 / T
        betas = beta_start + (beta_end - beta_start) * t / T
    return np.cumprod(1 - betas)


betas = st.tuples(st.floats(1e-5, 0.05), st.floats(1e-3, 0.2)).filter(lambda b: b[0] < b[1])


@examples(80)
@given(st.integers(10, 2000), st.sampled_from(["scaled", "linear", "cosine"]), betas)
@example(500, "linear", (1e-4, 0.02))  # the report's schedule: accepted, sqrt(abar_T) = 0.08
@example(400, "linear", (1e-4, 0.02))  # sqrt(abar_T) = 0.13: just above the bound, refused
@example(454, "linear", (1e-4, 0.02))  # the bound's edge: 0.1001, refused ...
@example(455, "linear", (1e-4, 0.02))  # ... and 0.0996, accepted
@example(20, "scaled", (1e-4, 0.02))  # beta_end * 1000 / T = 1: no schedule
def test_every_schedule_the_config_accepts_ends_in_noise_and_abar_decreases(T, kind, b) -> None:
    beta_start, beta_end = b
    try:
        from_flat(DDPMConfig, {"T": T, "schedule": kind, "beta_start": beta_start, "beta_end": beta_end})
    except SpecError as e:  # refused: the refusal names the keys, and the schedule really is invalid or too short
        assert f"schedule={kind}, T={T}" in str(e)
        if kind == "scaled" and beta_end * 1000 / T >= 1:
            return
        assert math.sqrt(independent_abar(T, beta_start, beta_end, kind)[-1]) > MAX_SIGNAL_AT_T - 1e-6, str(e)
        return
    s = NoiseSchedule(T, beta_start, beta_end, kind)
    abar = independent_abar(T, beta_start, beta_end, kind)
    assert math.sqrt(abar[-1]) <= MAX_SIGNAL_AT_T + 1e-6  # the bound check_schedule enforces, computed here
    assert s.signal_at_T == pytest.approx(math.sqrt(abar[-1]), rel=1e-6, abs=1e-9)
    ab = (s.sqrtab.double() ** 2).numpy()
    assert np.all(np.diff(ab) <= 0) and ab[-1] < ab[1] <= 1.0  # monotone (float32 storage may repeat a value)
    assert np.all(np.diff(abar[1:]) < 0)  # strictly, in float64
    np.testing.assert_allclose(ab, abar, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose((s.sqrtab**2 + s.sqrtmab**2).numpy(), 1.0, atol=1e-5)
