"""Spec and --set parsing (search/spec.py), pinned where mutation testing found it loose (docs/mutation.md).

Expected values are written out here from the rule each case states (a `--set` value is YAML, a sweep key names
the sweep, a dotted budget key reaches the budget, ...), never computed by the parser under test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from search.spec import (_check_keys, _check_value, _family_keys, _flatten, _int, _num, _StrictLoader,
                         apply_overrides, parse_domain, parse_spec, plain_name)
from trainables.config import GANConfig, flat_keys
from trainables.errors import SpecError


def refused(fn, match: str):
    with pytest.raises(SpecError) as e:
        fn()
    assert str(e.value) == match, str(e.value)


# --- small helpers -------------------------------------------------------------------------------------------


def test_plain_name() -> None:
    assert plain_name("w", "a-b_c.9") == "a-b_c.9" and plain_name("w", "..x") == "..x"
    every = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
    assert plain_name("w", every) == every  # a name may use every allowed character
    for bad in ("", ".", "..", "a/b", "a b", "ä", 3, None):
        refused(lambda: plain_name("studies[1].name", bad),
                f"studies[1].name: {bad!r} is not a plain name; use letters, digits, '-', '_' and '.' only")


def test_flatten() -> None:
    assert _flatten({"a": 1, "b": {"c": 2, "d": {"e": [3]}}, "f": {}}) == {"a": 1, "b.c": 2, "b.d.e": [3]}
    assert _flatten({"a": {"b": 1}}, "x.") == {"x.a.b": 1}


def test_check_keys() -> None:
    assert _check_keys("w", None, ("a",)) == {}
    d = {"a": 1}
    assert _check_keys("w", d, ("a", "b")) is d
    refused(lambda: _check_keys("budget", [1], ("a",)), "budget: expected a mapping, got list")
    refused(lambda: _check_keys("spec", {"a": 1, "zz": 2, "yy": 3}, ("a", "__set__", "b", "a")),
            "spec: unknown key 'zz'; valid keys: a, b")  # the first unknown key; internal and repeated names hidden


def test_num_and_int() -> None:
    assert _num("k", "1e-3") == 1e-3 and _num("k", 2) == 2.0 and type(_num("k", 2)) is float
    for bad in (True, False, None, "x", [1]):
        refused(lambda: _num("k", bad), f"k: expected a number, got {bad!r}")
    for bad in (float("inf"), float("nan"), "-inf"):
        refused(lambda: _num("k", bad), f"k: expected a finite number, got {bad!r}")
    v = _int("k", 3.0)
    assert v == 3 and type(v) is int and _int("k", "4") == 4
    refused(lambda: _int("k", 2.5), "k: expected an integer, got 2.5")
    refused(lambda: _int("k", True), "k: expected a number, got True")


def test_check_value_and_family_keys() -> None:
    _check_value("dann", "lr", 0.01, {})
    refused(lambda: _check_value("dann", "lr", -1.0, {}), "search.lr: lr: -1.0 is invalid; expected a learning rate > 0")
    refused(lambda: _check_value("dann", "lamb", -1.0, {"lr": 0.01}), "search.lamb: lamb: -1.0 is invalid; expected lambda >= 0")
    assert "lamb" in _family_keys({"family": "dann"}) and "lr_g" in _family_keys({"family": "gan"})
    assert _family_keys({"family": "vae"}) == [] and _family_keys({}) == []


def test_strict_yaml_refuses_a_key_given_twice_naming_its_line() -> None:
    text = "a: 1\nb:\n  c: 2\n  c: 3\n"
    refused(lambda: yaml.load(text, Loader=_StrictLoader), "line 4: key 'c' is given twice in one mapping")
    assert yaml.load("a: {b: [1, {c: 2}]}\nd: 3\n", Loader=_StrictLoader) == {"a": {"b": [1, {"c": 2}]}, "d": 3}


# --- parse_domain --------------------------------------------------------------------------------------------


def test_parse_domain() -> None:
    valid = ["lr", "n", "mode", "x"]
    d = parse_domain("lr", {"loguniform": [1e-4, "1e-2"]}, valid)
    assert (d.key, d.kind, d.args, d.when) == ("lr", "loguniform", (1e-4, 1e-2), ())
    d = parse_domain("n", {"int": [2.0, 8], "when": {"mode": "dann", "x": 1}}, valid)
    assert d.args == (2, 8) and type(d.args[0]) is int and d.when == (("mode", "dann"), ("x", 1))
    assert parse_domain("mode", {"choice": ["a", "b"]}, valid).args == ("a", "b")
    assert parse_domain("x", {"uniform": [-1, 0]}, valid).args == (-1.0, 0.0)
    refused(lambda: parse_domain("y", {"uniform": [0, 1]}, valid),
            "search.y: 'y' is not a config key of this family; valid keys: lr, n, mode, x")
    refused(lambda: parse_domain("x", {"when": {}}, valid), "search.x: give exactly one of loguniform, uniform, int, choice")
    refused(lambda: parse_domain("x", {"uniform": [0, 1], "int": [0, 1]}, valid),
            "search.x: give exactly one of loguniform, uniform, int, choice")
    refused(lambda: parse_domain("x", {"choice": []}, valid), "search.x.choice: expected a non-empty list")
    refused(lambda: parse_domain("x", {"choice": "a"}, valid), "search.x.choice: expected a non-empty list")
    refused(lambda: parse_domain("x", {"uniform": [0, 1, 2]}, valid), "search.x.uniform: expected [low, high]")
    refused(lambda: parse_domain("x", {"uniform": (0, 1)}, valid), "search.x.uniform: expected [low, high]")
    refused(lambda: parse_domain("x", {"uniform": [1, 1]}, valid),
            "search.x.uniform: empty range [1.0, 1.0]; expected low < high")
    refused(lambda: parse_domain("x", {"loguniform": [0, 1]}, valid), "search.x.loguniform: low must be > 0, got 0.0")
    assert parse_domain("x", {"loguniform": [1e-9, 1]}, valid).args == (1e-9, 1.0)
    refused(lambda: parse_domain("x", {"int": [0.5, 3]}, valid), "search.x.int: bounds must be integers")
    refused(lambda: parse_domain("x", {"int": [0, 3.5]}, valid), "search.x.int: bounds must be integers")
    refused(lambda: parse_domain("x", {"uniform": ["a", 1]}, valid), "search.x.uniform: expected a number, got 'a'")
    refused(lambda: parse_domain("x", {"choice": [1], "when": ["mode"]}, valid),
            "search.x.when: expected a mapping of key: value")


# --- --set ---------------------------------------------------------------------------------------------------


def test_set_values_are_yaml_or_the_plain_string() -> None:
    raw = apply_overrides({"family": "gan"}, ["lr_g=3", "model=B", "d_optimizer=", "fid=off", "augment_policy=[a",
                                              "n_eval= 5", "width={a: 1, a: 2}", "seed=  "])
    assert raw["__set__"] == {"lr_g": 3, "model": "B", "d_optimizer": "", "fid": False, "augment_policy": "[a",
                              "n_eval": 5, "width": "{a: 1, a: 2}", "seed": ""}


def test_set_splits_at_the_first_equals_sign_and_needs_one() -> None:
    assert apply_overrides({"family": "gan"}, ["augment_policy=a=b"])["__set__"] == {"augment_policy": "a=b"}
    refused(lambda: apply_overrides({"family": "gan"}, ["lr_g"]), "--set 'lr_g': expected key=value")


def test_set_paths_are_absolute_from_the_current_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = apply_overrides({"family": "ddpm"}, ["data.root=d/x", "cache_dir=~/c", "fid_weights=http://h/w.pt",
                                               "data.domain=d/x", "data.limit=3"])
    assert raw["__set__"] == {"data.root": str((tmp_path / "d/x").resolve()),
                              "cache_dir": str(Path(os.path.expanduser("~/c")).resolve()),
                              "fid_weights": "http://h/w.pt", "data.domain": "d/x", "data.limit": 3}
    assert apply_overrides({"family": "ddpm"}, ["data.root="])["__set__"] == {"data.root": ""}


def test_set_sweep_keys_and_study_keys() -> None:
    raw = apply_overrides({"family": "dann", "search": {"lr": {"uniform": [0.1, 0.2]}, "lamb": {"uniform": [0, 1]}}},
                          ["sweep.seed=7", "seed=3", "name=run1", "storage=/tmp/s", "sweep.max_failures=0",
                           "metric=source_acc", "concurrency=4", "budget.trials=5", "resources.cpu=2", "lr=0.5",
                           "mode=source-only"])
    assert (raw["seed"], raw["name"], raw["storage"], raw["max_failures"]) == (7, "run1", "/tmp/s", 0)
    assert raw["metric"] == "source_acc" and raw["concurrency"] == 4
    assert raw["budget"] == {"trials": 5} and raw["resources"] == {"cpu": 2}
    # seed and DANN's own `mode` are config keys; a fixed config key replaces its search domain
    assert raw["__set__"] == {"seed": 3, "lr": 0.5, "mode": "source-only"}
    assert list(raw["search"]) == ["lamb"]


def test_set_studies_is_never_a_sweep_key() -> None:
    raw = apply_overrides({"family": "gan"}, ["sweep.studies=x", "studies=y", "abcdefseed=1"])
    assert "studies" not in raw and "seed" not in raw
    assert raw["__set__"] == {"sweep.studies": "x", "studies": "y", "abcdefseed": 1}
    refused(lambda: parse_spec({"family": "gan"}, ["sweep.studies=x"]),
            "--set sweep.studies: unknown config key; valid keys: " + ", ".join(flat_keys(GANConfig)))


def test_set_in_a_multi_study_spec_goes_to_the_studies_whose_family_has_the_key() -> None:
    raw = {"studies": [{"family": "gan", "name": "g", "metric": "face_score"}, {"family": "dann", "name": "d"},
                       "not a study"]}
    out = apply_overrides(raw, ["lr_g=0.01", "mode=target-only", "metric=fid", "budget.trials=2", "epochs=3"])
    g, d = out["studies"][0], out["studies"][1]
    assert g["__set__"] == {"lr_g": 0.01, "epochs": 3}  # mode is DANN's config key: only the DANN study takes it
    assert d["__set__"] == {"mode": "target-only", "epochs": 3}
    assert g["metric"] == d["metric"] == "fid" and g["budget"] == d["budget"] == {"trials": 2}
    assert out["studies"][2] == "not a study"
    single = apply_overrides({"family": "gan"}, ["mode=min"])  # GAN has no config `mode`: the study's mode
    assert single["mode"] == "min" and "__set__" not in single


# --- parse_spec ----------------------------------------------------------------------------------------------


def test_parse_spec_defaults() -> None:
    sp = parse_spec({"family": "dann"})
    assert (sp.name, sp.seed, sp.storage, sp.tracking_uri, sp.experiment, sp.max_failures) == ("sweep", 0, "runs", "", "", 2)
    assert [s.name for s in sp.studies] == ["dann"]
    sp = parse_spec({"family": "dann", "name": "n", "seed": 4.0, "storage": "st", "tracking_uri": None,
                     "experiment": "e", "max_failures": 0})
    assert (sp.name, sp.seed, sp.storage, sp.tracking_uri, sp.experiment, sp.max_failures) == ("n", 4, "st", "", "e", 0)
    assert parse_spec({"family": "dann", "tracking_uri": "http://h:5000"}).tracking_uri == "http://h:5000"


def test_parse_spec_does_not_change_its_input_and_keeps_the_resolved_one() -> None:
    raw = {"family": "dann", "search": {"lr": {"uniform": [0.001, 0.01]}}}
    sp = parse_spec(raw, ["lr=0.005"])
    assert raw == {"family": "dann", "search": {"lr": {"uniform": [0.001, 0.01]}}}
    assert sp.source == {"family": "dann", "search": {}, "__set__": {"lr": 0.005}}  # saved with the sweep


def test_parse_spec_of_several_studies() -> None:
    sp = parse_spec({"name": "q", "concurrency": 3, "resources": {"cpu": 2},
                     "studies": [{"family": "gan", "name": "a", "metric": "face_score"}, {"family": "dann", "name": "b"}]})
    assert [s.name for s in sp.studies] == ["a", "b"]
    assert all(s.concurrency == 3 and s.cpu == 2 for s in sp.studies)  # sweep-wide defaults reach every study
    small = parse_spec({"studies": [{"family": "dann", "config": {"epochs": 50}, "budget": {"trials": 9}}]}, smoke=True)
    assert small.studies[0].trials == 2 and small.studies[0].epochs < 50  # --smoke reaches each study
    refused(lambda: parse_spec({"studies": []}), "studies: expected a non-empty list of studies")
    refused(lambda: parse_spec({"studies": {"family": "gan"}}), "studies: expected a non-empty list of studies")
    refused(lambda: parse_spec({"studies": [{"family": "dann"}, {"family": "dann"}]}),
            "studies: names must be unique, got ['dann', 'dann']")
    refused(lambda: parse_spec({"studies": [{"family": "dann"}], "metric": "x"}),
            "spec: unknown key 'metric'; valid keys: name, seed, storage, tracking_uri, experiment, studies, "
            "max_failures, resources, concurrency")


def test_parse_spec_refusals() -> None:
    refused(lambda: parse_spec({"family": "dann", "max_failures": -1}),
            "max_failures: -1 is out of range; expected retries per trial >= 0")
    refused(lambda: parse_spec({"family": "dann", "seed": 1.5}), "seed: expected an integer, got 1.5")
    refused(lambda: parse_spec({"family": "dann", "max_failures": "two"}), "max_failures: expected a number, got 'two'")
    refused(lambda: parse_spec({"family": "dann", "name": "a b"}),
            "name: 'a b' is not a plain name; use letters, digits, '-', '_' and '.' only")


def test_set_a_path_key_is_recognised_by_its_last_part_after_any_number_of_dots(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = apply_overrides({"family": "dann"}, ["a.b.root=d/x", "a.b.c.cache_dir=e", "a.root_x=d/x", "a.b.rooted=d"])
    assert raw["__set__"] == {"a.b.root": str((tmp_path / "d/x").resolve()),
                              "a.b.c.cache_dir": str((tmp_path / "e").resolve()),
                              "a.root_x": "d/x", "a.b.rooted": "d"}  # the last part names no path: as given
