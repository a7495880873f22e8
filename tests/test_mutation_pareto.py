"""A stored study's Pareto front (Sweep.pareto), pinned where mutation testing found it loose (docs/mutation.md).

The Sweep is built without a store (its cached trials and studies set by hand); the expected front is read off the
points written here (which trial no other beats in both objectives), never computed by pareto_front.
"""
from __future__ import annotations

from analysis.sweepdata import Study, Sweep, Trial


def trial(tid: str, study: str, acc: float | None, fid: float | None, status: str = "FINISHED") -> Trial:
    metrics = {k: v for k, v in (("acc", acc), ("fid", fid)) if v is not None}
    return Trial(f"run-{tid}", tid, study, "ddpm", status, "", {}, metrics, "")


def test_pareto_takes_the_finished_trials_of_the_study_with_every_objective() -> None:
    objectives = (("acc", "max"), ("fid", "min"))
    sw = Sweep.__new__(Sweep)
    sw.__dict__.update(studies={"mo": Study("mo", "ddpm", "acc", "max", None, objectives=objectives),
                                "other": Study("other", "ddpm", "acc", "max", None, objectives=objectives)},
                       all_trials=[
                           trial("a", "mo", 0.9, 30.0), trial("b", "mo", 0.5, 10.0), trial("c", "mo", 0.4, 20.0),
                           trial("d", "other", 0.95, 5.0),  # another study's: would dominate everything here
                           trial("e", "mo", 0.99, 1.0, "FAILED"), trial("f", "mo", 0.97, 2.0, "KILLED"),
                           trial("g", "mo", None, 0.5),  # no acc: cannot be placed
                           trial("h", "mo", 0.6, None),
                       ])
    # c (0.4, 20) is beaten by b (0.5, 10); a and b trade acc for fid
    assert sw.pareto("mo") == {"a": (0.9, 30.0), "b": (0.5, 10.0)}
    assert sw.pareto("other") == {"d": (0.95, 5.0)}


def test_pareto_front_tells_apart_values_near_the_largest_float() -> None:
    """Only the order of the values counts, never their size: 1e308 beats 1.7e308 (min) and -1.7e308 (max), even
    though twice either would overflow to inf."""
    from analysis.sweepdata import pareto_front

    assert pareto_front({"a": (1.0e308,), "b": (1.7e308,)}, ("min",)) == ["a"]
    assert pareto_front({"a": (-1.0e308,), "b": (-1.7e308,)}, ("max",)) == ["a"]
    assert pareto_front({"a": (1.0e308, -1.0e308), "b": (1.7e308, -1.7e308), "c": (1.7e308, -1.0e308)},
                        ("min", "max")) == ["a"]
