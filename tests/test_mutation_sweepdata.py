"""The best-trial choice (analysis/sweepdata.py), pinned where mutation testing found it loose (docs/mutation.md).

A Sweep is built here without a store: its cached trials, studies and tags are set by hand, so each test states
the trials and the expected pick side by side (the expected best is read off the values written here, never
computed by the function under test). tests/test_best_trial.py checks the same choice on a real MLflow store.
"""
from __future__ import annotations

import math

import pytest

from analysis.sweepdata import Study, Sweep, Trial, better, parse_param


def trial(tid: str, value: float | None, status: str = "FINISHED", study: str = "s", start: int = 0, **params) -> Trial:
    metrics = {} if value is None else {"m": value}
    return Trial(f"run-{tid}", tid, study, "dann", status, "", params, metrics, "", start)


def sweep(trials: list[Trial], mode: str = "max", tagged: str = "", history: dict | None = None,
          rank_by: str = "last") -> Sweep:
    sw = Sweep.__new__(Sweep)
    sw.name = "s"
    sw.__dict__.update(all_trials=trials, studies={"s": Study("s", "dann", "m", mode, "p", rank_by=rank_by)},
                       best_tags={"s": tagged})
    sw._history = dict(history or {})
    return sw


def test_better() -> None:
    assert better(1.0, 2.0, "min") and not better(2.0, 1.0, "min") and not better(1.0, 1.0, "min")
    assert better(2.0, 1.0, "max") and not better(1.0, 2.0, "max") and not better(1.0, 1.0, "max")
    assert better(-3.0, -2.0, "min") and better(0.0, -1e-9, "max")


def test_trial_value_is_a_finite_float_or_none() -> None:
    assert trial("a", None).value("m") is None
    for bad in (math.nan, math.inf, -math.inf):
        assert trial("a", bad).value("m") is None
    v = trial("a", 0.0).value("m")
    assert v == 0.0 and type(v) is float
    assert type(Trial("r", "t", "s", "dann", "FINISHED", "", {}, {"m": 3}, "").value("m")) is float
    assert trial("a", -2.5).value("m") == -2.5 and trial("a", 1.0).value("other") is None


def test_finished_keeps_finished_trials_with_a_finite_metric_of_the_study() -> None:
    ts = [trial("a", 0.5), trial("b", 0.6, "FAILED"), trial("c", 0.7, "KILLED"), trial("d", 0.8, "RUNNING"),
          trial("e", None), trial("f", math.nan), trial("g", 0.9, study="other"), trial("h", 0.0)]
    assert [t.trial_id for t in sweep(ts).finished("s", "m")] == ["a", "h"]


@pytest.mark.parametrize("mode, want", [("max", "c"), ("min", "a")])
def test_best_trial_is_the_best_finished_value(mode, want) -> None:
    ts = [trial("a", 0.2), trial("b", 0.5), trial("c", 0.9), trial("d", 0.95, "FAILED"), trial("e", 0.01, "KILLED")]
    assert sweep(ts, mode).best_trial("s").trial_id == want
    # given explicitly, the other direction
    other = "min" if mode == "max" else "max"
    assert sweep(ts, mode).best_trial("s", "m", other).trial_id == ("a" if mode == "max" else "c")


def test_best_trial_of_no_finished_trial_is_none() -> None:
    assert sweep([trial("a", 0.3, "FAILED"), trial("b", None)]).best_trial("s") is None
    assert sweep([]).best_trial("s") is None


def test_best_trial_where_filters_on_params() -> None:
    ts = [trial("a", 0.9, mode="dann"), trial("b", 0.7, mode="source-only"), trial("c", 0.8, mode="source-only"),
          trial("d", 0.95)]
    sw = sweep(ts)
    assert sw.best_trial("s", where={"mode": "source-only"}).trial_id == "c"
    assert sw.best_trial("s", where={"mode": "dann"}).trial_id == "a"
    assert sw.best_trial("s", where={"mode": "target-only"}) is None
    assert sw.best_trial("s", where={}).trial_id == "d"


def test_a_tie_goes_to_the_tagged_trial_else_the_first() -> None:
    ts = [trial("a", 0.3), trial("b", 0.7), trial("c", 0.7), trial("d", 0.7), trial("e", 0.5)]
    assert sweep(ts).best_trial("s").trial_id == "b"  # untagged: the first of the tie
    assert sweep(ts, tagged="c").best_trial("s").trial_id == "c"
    assert sweep(ts, tagged="d").best_trial("s").trial_id == "d"
    assert sweep(ts, tagged="a").best_trial("s").trial_id == "b"  # the tag names a trial that is not tied best
    # another metric or mode than the study's: the sweep's tag was about the study's own, so it is not used
    assert sweep(ts, tagged="c").best_trial("s", "m", "max").trial_id == "c"
    assert sweep(ts, "min", tagged="c").best_trial("s", "m", "max").trial_id == "b"
    assert sweep(ts, tagged="c").best_trial("s", "m", "min").trial_id == "a"


def test_a_tagged_trial_that_ties_a_later_better_one_is_not_kept() -> None:
    ts = [trial("a", 0.7), trial("b", 0.7), trial("c", 0.9)]
    assert sweep(ts, tagged="b").best_trial("s").trial_id == "c"


def test_best_value_is_the_best_finite_value_of_the_history() -> None:
    t = trial("a", 0.5)
    hist = {("run-a", "m"): [(0, 0.4), (1, math.nan), (2, 0.9), (3, math.inf), (4, 0.6)]}
    sw = sweep([t], history=hist)
    assert sw.best_value(t, "m", "max") == 0.9
    assert sw.best_value(t, "m", "min") == 0.4
    sw = sweep([t], history={("run-a", "m"): [(0, math.nan), (1, -math.inf)]})
    assert sw.best_value(t, "m", "max") is None and sw.best_value(t, "m", "min") is None
    assert sweep([t], history={("run-a", "m"): []}).best_value(t, "m", "min") is None


@pytest.mark.parametrize("text, value", [
    ("True", True), ("False", False), ("true", True), ("false", False), (" True ", True),
    ("3", 3), ("-2", -2), (" 7 ", 7), ("0.5", 0.5), ("1e-4", 1e-4), ("inf", math.inf),
    ("[1, 2]", [1, 2]), ("['a', 'b']", ["a", "b"]), ("[0.0, 0.5]", [0.0, 0.5]), ("[]", []),
    ("[1, 2", "[1, 2"), ("[oops]", "[oops]"), ("1]", "1]"), ("['a'", "['a'"), ("hello", "hello"), ("TRUE", "TRUE"), ("", ""), ("None", "None"),
])
def test_parse_param(text, value) -> None:
    got = parse_param(text)
    assert got == value and type(got) is type(value)


def test_best_epoch_is_the_latest_of_equal_best_values() -> None:
    t = trial("a", 0.5)
    sw = sweep([t], history={("run-a", "m"): [(1, 0.3), (2, 0.8), (3, math.nan), (4, 0.8), (5, 0.1), (6, 0.3)]})
    assert sw.best_epoch(t, "m", "max") == (4, 0.8)  # the checkpoint Tune keeps: of equal scores, the later
    assert sw.best_epoch(t, "m", "min") == (5, 0.1)
    assert sweep([t], history={("run-a", "m"): [(1, math.inf)]}).best_epoch(t, "m", "min") is None


def test_score_is_the_last_or_the_best_epochs_value() -> None:
    t = trial("a", 0.5)
    sw = sweep([t], history={("run-a", "m"): [(1, 0.3), (2, 0.9), (3, 0.5)]})
    assert sw.score(t, "m", "max", "last") == 0.5 and sw.score(t, "m", "max", "best") == 0.9
    assert sw.score(t, "m", "min", "best") == 0.3


def test_best_trial_by_the_best_epoch() -> None:
    ts = [trial("d", 0.95), trial("a", 0.9), trial("b", 0.4), trial("c", 0.8)]
    hist = {("run-a", "m"): [(1, 0.9)], ("run-b", "m"): [(1, 0.99), (2, 0.4)], ("run-c", "m"): [(1, 0.8), (2, 0.85)],
            ("run-d", "m"): []}  # d: finished, but no evaluated epoch to rank by: skipped, the rest still read
    assert sweep(ts, history=hist, rank_by="best").best_trial("s").trial_id == "b"
    # by the best epoch for a min metric: each trial's lowest value (a 0.9, b 0.4, c 0.8), the lowest of those
    assert sweep(ts, "min", history=hist, rank_by="best").best_trial("s").trial_id == "b"
    assert sweep(ts[:2] + ts[3:], "min", history=hist, rank_by="best").best_trial("s").trial_id == "c"
    assert sweep(ts, history=hist).best_trial("s").trial_id == "d"  # by the last value
    assert sweep(ts, history=hist).best_trial("s", rank_by="best").trial_id == "b"
    # the sweep's tag is about the study's own ranking: asked by another, a tie goes to the first
    tie = [trial("a", 0.9), trial("b", 0.9)]
    h = {("run-a", "m"): [(1, 0.9)], ("run-b", "m"): [(1, 0.9)]}
    assert sweep(tie, tagged="b", history=h).best_trial("s").trial_id == "b"
    assert sweep(tie, tagged="b", history=h).best_trial("s", rank_by="best").trial_id == "a"
