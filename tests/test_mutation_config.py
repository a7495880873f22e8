"""Config coercion (trainables/config.py), pinned where mutation testing found it loose (docs/mutation.md).

Each expected value is written out here from the rule it checks (YAML 1.1 reads on/off as booleans and 1e-4 as
a string; an integer key takes 3.0 but not 3.5; ...), never computed by from_flat or _coerce themselves.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from trainables.config import (DANNConfig, DataConfig, DDPMConfig, GANConfig, _coerce, augment_policy,
                               check_schedule, flat_keys, from_flat, to_flat)
from trainables.errors import SpecError


def refused(fn, match: str):
    with pytest.raises(SpecError) as e:
        fn()
    assert str(e.value) == match, str(e.value)


# --- _coerce, one type at a time --------------------------------------------------------------------------


def test_literal_takes_yaml_booleans_as_on_off_only_where_on_off_are_choices() -> None:
    auto = Literal["auto", "on", "off"]
    assert _coerce("amp", True, auto) == "on" and _coerce("amp", False, auto) == "off"
    assert _coerce("amp", "auto", auto) == "auto"
    assert _coerce("x", True, Literal["on", "off"]) == "on"  # on/off may be all the choices
    refused(lambda: _coerce("device", True, Literal["auto", "cpu", "cuda"]),
            "device: True is not one of 'auto', 'cpu', 'cuda'")
    refused(lambda: _coerce("model", "C", Literal["A", "B"]), "model: 'C' is not one of 'A', 'B'")
    refused(lambda: _coerce("x", True, Literal["on", "auto"]), "x: True is not one of 'on', 'auto'")  # off missing


def test_union_takes_the_first_arm_that_fits() -> None:
    assert _coerce("k", "x", int | str) == "x"
    assert _coerce("k", "12", int | str) == 12  # int is tried first
    assert _coerce("k", 2, float | int) == 2.0 and type(_coerce("k", 2, float | int)) is float
    refused(lambda: _coerce("k", 3.5, int | bool), "k: 3.5 does not match int | bool")
    with pytest.raises(TypeError, match=r"^unsupported config type <class 'bytes'> for k$"):  # names the key
        _coerce("k", "x", int | bytes)


def test_tuple_of_floats_from_a_list_or_one_value() -> None:
    t = tuple[float, ...]
    assert _coerce("guidance", [0, "0.5", 2], t) == (0.0, 0.5, 2.0)
    assert _coerce("guidance", (1,), t) == (1.0,)
    assert _coerce("guidance", 3, t) == (3.0,)
    assert _coerce("guidance", [], t) == ()
    refused(lambda: _coerce("guidance", [1, "x"], t), "guidance: expected a number, got 'x'")


def test_bool() -> None:
    assert _coerce("b", True, bool) is True and _coerce("b", False, bool) is False
    assert _coerce("b", "TRUE", bool) is True and _coerce("b", "False", bool) is False
    for bad in ("yes", 1, 0, None, "on"):
        refused(lambda: _coerce("b", bad, bool), f"b: expected true or false, got {bad!r}")


def test_int() -> None:
    assert _coerce("n", 3, int) == 3
    v = _coerce("n", 3.0, int)
    assert v == 3 and type(v) is int
    assert _coerce("n", "12", int) == 12 and _coerce("n", "-4", int) == -4
    for bad in (True, False, 3.5, "3.0", "1e3", "x", None, [1]):
        refused(lambda: _coerce("n", bad, int), f"n: expected an integer, got {bad!r}")


def test_float() -> None:
    v = _coerce("f", 2, float)
    assert v == 2.0 and type(v) is float
    assert _coerce("f", "1e-4", float) == 1e-4 and _coerce("f", 0.5, float) == 0.5
    for bad in (True, False, "fast", None, [1.0]):
        refused(lambda: _coerce("f", bad, float), f"f: expected a number, got {bad!r}")


def test_str() -> None:
    assert _coerce("s", "", str) == "" and _coerce("s", "abc", str) == "abc"
    for bad in (3, None, True, ["a"]):
        refused(lambda: _coerce("s", bad, str), f"s: expected a string, got {bad!r}")


def test_an_unsupported_type_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match=r"^unsupported config type <class 'bytes'> for k$"):
        _coerce("k", b"x", bytes)


# --- flat keys, from_flat, to_flat -------------------------------------------------------------------------


def test_flat_keys_are_the_fields_in_order_with_nested_ones_dotted() -> None:
    assert flat_keys(DataConfig) == ["source", "root", "domain", "limit"]
    keys = flat_keys(DANNConfig)
    assert keys[:9] == ["seed", "epochs", "batch_size", "eval_every", "steps_per_epoch", "device", "amp",
                        "channels_last", "cache_dir"]
    assert keys[-8:] == ["source.source", "source.root", "source.domain", "source.limit",
                         "target.source", "target.root", "target.domain", "target.limit"]


def test_to_flat_dots_nested_keys_and_lists_tuples() -> None:
    flat = to_flat(DDPMConfig())
    assert flat["guidance"] == [0.0, 0.5, 1.0, 2.0] and type(flat["guidance"]) is list
    assert flat["data.domain"] == "mnistm" and flat["data.source"] == "demo" and "data" not in flat
    assert list(flat) == flat_keys(DDPMConfig)


def test_from_flat_keeps_each_nested_default_and_changes_only_what_is_given() -> None:
    cfg = from_flat(DANNConfig, {"target.limit": 7, "source.source": "report", "lr": "2e-3"})
    assert cfg.source == DataConfig("report", "", "mnistm", 0)  # the source's own default domain stays
    assert cfg.target == DataConfig("demo", "", "usps", 7)
    assert cfg.lr == 2e-3 and cfg.lamb == 0.3
    assert from_flat(DDPMConfig, {}).data == DataConfig(domain="mnistm")
    assert from_flat(DDPMConfig, {"guidance": [1, 2]}).guidance == (1.0, 2.0)


def test_from_flat_names_the_first_unknown_key_with_its_prefix() -> None:
    valid = ", ".join(flat_keys(DDPMConfig))
    refused(lambda: from_flat(DDPMConfig, {"zeta": 1, "alpha": 2}), f"unknown config key 'alpha'; valid keys: {valid}")
    refused(lambda: from_flat(DDPMConfig, {"data.colour": 1}), f"unknown config key 'data.colour'; valid keys: {valid}")
    refused(lambda: from_flat(DDPMConfig, {"data.limit": "x"}), "data.limit: expected an integer, got 'x'")
    refused(lambda: from_flat(DANNConfig, {"target.source": "tape"}),
            "target.source: 'tape' is not one of 'demo', 'report', 'mnist', 'mnistm', 'svhn', 'usps', 'celeba', 'folder'")


def test_from_flat_checks_ranges() -> None:
    refused(lambda: from_flat(GANConfig, {"lr_g": 0}), "lr_g: 0.0 is invalid; expected a learning rate > 0")
    refused(lambda: from_flat(DDPMConfig, {"data.limit": -1}), "limit: -1 is invalid; expected an integer >= 0")


# --- augment policy and the noise-schedule check -----------------------------------------------------------


def test_augment_policy() -> None:
    on = {"augment": "diffaugment"}
    assert augment_policy(from_flat(GANConfig, {**on, "augment_policy": " cutout , color"})) == ("cutout", "color")
    assert augment_policy(from_flat(GANConfig, on)) == ("color", "translation", "cutout")
    assert augment_policy(from_flat(GANConfig, {"augment_policy": "color"})) == ()  # augment none: no ops
    msg = ("augment_policy: {!r} is invalid; expected a comma-separated subset of color, translation, cutout "
           "(each once)")
    for bad in ("color,colour", "color,color", "", "color,"):
        refused(lambda: from_flat(GANConfig, {**on, "augment_policy": bad}), msg.format(bad))
    refused(lambda: from_flat(GANConfig, {"augment_policy": "blur"}), msg.format("blur"))  # checked with augment none too


def test_check_schedule_names_the_keys_and_the_fix() -> None:
    refused(lambda: from_flat(DDPMConfig, {"T": 16}),
            "schedule=scaled, T=16, beta_start=0.0001, beta_end=0.02: invalid noise schedule (scaled schedule: "
            "beta_end * 1000 / T = 1.25 >= 1 at T = 16); use a larger T or schedule cosine")
    # the report's linear betas at T = 40 leave sqrt(abar_T) = 0.81 of the image (README, models/ddpm.py)
    with pytest.raises(SpecError) as e:
        from_flat(DDPMConfig, {"T": 40, "schedule": "linear"})
    assert str(e.value).startswith("schedule=linear, T=40, beta_start=0.0001, beta_end=0.02: sqrt(abar_T) = 0.8")
    assert str(e.value).endswith(" of the image is left at t = T (> 0.1), so sampling would start from noise the "
                                 "model never saw; use schedule scaled or cosine, or a larger T or beta_end")
    check_schedule(DDPMConfig(T=500, schedule="linear"))  # the report's: fine
    check_schedule(DDPMConfig(T=10, schedule="cosine"))


def test_check_schedule_allows_a_signal_exactly_at_the_limit(monkeypatch) -> None:
    """The rule refuses sqrt(abar_T) *above* MAX_SIGNAL_AT_T ('> 0.1' in its message); a schedule whose signal at
    t = T is the limit itself passes. The limit is moved to one schedule's own value to reach the boundary."""
    import trainables.config as config
    from models.ddpm import NoiseSchedule

    at = NoiseSchedule(300, 1e-4, 0.02, "linear").signal_at_T  # about 0.12: above the real limit of 0.1
    with pytest.raises(SpecError):
        check_schedule(DDPMConfig(T=300, schedule="linear"))
    monkeypatch.setattr(config, "MAX_SIGNAL_AT_T", at)
    check_schedule(DDPMConfig(T=300, schedule="linear"))  # equal: allowed
    monkeypatch.setattr(config, "MAX_SIGNAL_AT_T", at * (1 - 1e-12))
    with pytest.raises(SpecError):
        check_schedule(DDPMConfig(T=300, schedule="linear"))


@dataclasses.dataclass
class _Outer:
    """A config whose nested part has no default (no default_factory): from_flat builds DataConfig()'s defaults."""
    data: DataConfig
    epochs: int = 1
    batch_size: int = 1
    eval_every: int = 1
    steps_per_epoch: int = 0


def test_from_flat_builds_a_nested_config_without_a_default_factory_from_its_class() -> None:
    assert from_flat(_Outer, {"data.limit": 7, "epochs": 2}) == _Outer(DataConfig(limit=7), epochs=2)
    assert from_flat(_Outer, {}) == _Outer(DataConfig())
