"""Sweep specs: YAML -> validated, frozen Spec before Ray starts.

A spec holds one study (family/config/search/metric/...) at its top level, or several under
`studies:` (the quickstart runs one per family). Every key is checked: unknown keys, bad ranges,
wrong types and missing data folders fail here with the key's name, not inside a trial.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis.errors import SpecError
from trainables.config import DataConfig, config_class, flat_keys, from_flat

DOMAIN_KINDS = ("loguniform", "uniform", "int", "choice")
STUDY_KEYS = ("name", "family", "config", "search", "metric", "mode", "budget", "resources", "concurrency", "smoke")
SWEEP_KEYS = ("name", "seed", "storage", "tracking_uri", "experiment", "studies", "max_failures")
BUDGET_KEYS = ("trials", "grace_period", "reduction_factor", "time_budget_s")
RESOURCE_KEYS = ("cpu", "gpu")

# --smoke: any spec shrunk to a run of under a minute per trial on 2 CPU cores with the demo data
SMOKE_CONFIG: dict[str, dict[str, Any]] = {
    "gan": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 16, "n_eval": 32, "fid": "off", "eval_every": 1},
    "ddpm": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 32, "n_feat": 32, "T": 20, "n_per_digit": 2, "eval_every": 1},
    "dann": {"epochs": 2, "steps_per_epoch": 4, "batch_size": 32, "eval_every": 1},
}
SMOKE_DATA = {"gan": ("data",), "ddpm": ("data",), "dann": ("source", "target")}
DEFAULT_METRIC = {"gan": ("face_rate", "max"), "ddpm": ("acc", "max"), "dann": ("target_acc", "max")}


@dataclass(frozen=True)
class Domain:
    key: str
    kind: str
    args: tuple
    when: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Study:
    name: str
    family: str
    config: dict[str, Any]  # flat fixed values
    search: tuple[Domain, ...]
    metric: str
    mode: str
    trials: int
    grace_period: int
    reduction_factor: int
    time_budget_s: float
    cpu: float
    gpu: float
    concurrency: int

    @property
    def epochs(self) -> int:
        return int(from_flat(config_class(self.family), self.config).epochs)


@dataclass(frozen=True)
class Spec:
    name: str
    seed: int
    storage: str
    tracking_uri: str
    experiment: str
    max_failures: int
    studies: tuple[Study, ...]
    source: dict = field(default_factory=dict, compare=False)  # the resolved YAML, saved with the sweep


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_keys(where: str, d: Any, allowed: tuple[str, ...]) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(d).__name__}")
    bad = [k for k in d if k not in allowed]
    if bad:
        shown = [k for k in dict.fromkeys(allowed) if not k.startswith("__")]
        raise SpecError(f"{where}: unknown key {bad[0]!r}; valid keys: {', '.join(shown)}")
    return d


def _num(where: str, v: Any) -> float:
    try:
        if isinstance(v, bool):
            raise ValueError
        x = float(v)
    except (TypeError, ValueError):
        raise SpecError(f"{where}: expected a number, got {v!r}") from None
    if not math.isfinite(x):
        raise SpecError(f"{where}: expected a finite number, got {v!r}")
    return x


def parse_domain(key: str, d: Any, valid: list[str]) -> Domain:
    where = f"search.{key}"
    if key not in valid:
        raise SpecError(f"{where}: {key!r} is not a config key of this family; valid keys: {', '.join(valid)}")
    d = _check_keys(where, d, (*DOMAIN_KINDS, "when"))
    kinds = [k for k in d if k != "when"]
    if len(kinds) != 1:
        raise SpecError(f"{where}: give exactly one of {', '.join(DOMAIN_KINDS)}")
    kind, args = kinds[0], d[kinds[0]]
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpecError(f"{where}.choice: expected a non-empty list")
        args = tuple(args)
    else:
        if not isinstance(args, list) or len(args) != 2:
            raise SpecError(f"{where}.{kind}: expected [low, high]")
        lo, hi = (_num(f"{where}.{kind}", a) for a in args)
        if not lo < hi:
            raise SpecError(f"{where}.{kind}: empty range [{lo}, {hi}]; expected low < high")
        if kind == "loguniform" and lo <= 0:
            raise SpecError(f"{where}.loguniform: low must be > 0, got {lo}")
        if kind == "int":
            if not (float(lo).is_integer() and float(hi).is_integer()):
                raise SpecError(f"{where}.int: bounds must be integers")
            lo, hi = int(lo), int(hi)
        args = (lo, hi)
    when = d.get("when") or {}
    if not isinstance(when, dict):
        raise SpecError(f"{where}.when: expected a mapping of key: value")
    return Domain(key, kind, args, tuple(sorted(when.items())))


def _check_value(family: str, key: str, value: Any, base: dict[str, Any]) -> None:
    """Parse a config with `key=value` so a range end that the trainable would refuse fails now."""
    try:
        from_flat(config_class(family), {**base, key: value})
    except SpecError as e:
        raise SpecError(f"search.{key}: {e}") from None


def _check_data(family: str, cfg) -> None:
    for part in SMOKE_DATA[family]:
        dc: DataConfig = getattr(cfg, part)
        if dc.source != "demo":
            if not dc.root:
                raise SpecError(f"config.{part}.root: data source {dc.source!r} needs the dataset folder")
            if not Path(dc.root).expanduser().exists():
                raise SpecError(f"config.{part}.root: dataset folder {dc.root} does not exist")


def parse_study(raw: dict, defaults: dict, smoke: bool, index: int) -> Study:
    raw = _check_keys(f"studies[{index}]" if index >= 0 else "spec", raw, STUDY_KEYS + ("__set__",) + (() if index >= 0 else SWEEP_KEYS))
    family = raw.get("family")
    if family is None:
        raise SpecError("spec: missing key 'family' (gan, ddpm or dann)")
    cls = config_class(str(family))
    valid = flat_keys(cls)
    config = _flatten(raw.get("config") or {})
    for k in config:
        if k not in valid:
            raise SpecError(f"config.{k}: unknown config key; valid keys: {', '.join(valid)}")
    if smoke:
        config.update(SMOKE_CONFIG[family])
        for part in SMOKE_DATA[family]:
            for k in [k for k in config if k.startswith(part + ".")]:
                del config[k]
        config.update(_flatten(raw.get("smoke") or {}))
    for k, v in (raw.get("__set__") or {}).items():
        if k not in valid:
            raise SpecError(f"--set {k}: unknown config key; valid keys: {', '.join(valid)}")
        config[k] = v
    cfg = from_flat(cls, config)  # types and ranges of the fixed values
    _check_data(family, cfg)
    search_raw = raw.get("search") or {}
    if not isinstance(search_raw, dict):
        raise SpecError("search: expected a mapping of config key: domain")
    domains = tuple(parse_domain(k, v, valid) for k, v in search_raw.items())
    for d in domains:
        for wk, _ in d.when:
            if wk not in valid:
                raise SpecError(f"search.{d.key}.when: {wk!r} is not a config key")
        ends = d.args if d.kind != "int" else (d.args[0], d.args[1])
        for v in ends:
            _check_value(family, d.key, v, config)
    metric, mode = DEFAULT_METRIC[family]
    metric = str(raw.get("metric", metric))
    mode = str(raw.get("mode", mode))
    if mode not in ("min", "max"):
        raise SpecError(f"mode: expected 'min' or 'max', got {mode!r}")
    budget = _check_keys("budget", raw.get("budget"), BUDGET_KEYS)
    res = _check_keys("resources", raw.get("resources") or defaults.get("resources"), RESOURCE_KEYS)
    trials = int(_num("budget.trials", budget.get("trials", 1 if not domains else 8)))
    conc = int(_num("concurrency", raw.get("concurrency", defaults.get("concurrency", 2))))
    gpu = _num("resources.gpu", res.get("gpu", 0))
    cpu = _num("resources.cpu", res.get("cpu", 1))
    grace = int(_num("budget.grace_period", budget.get("grace_period", 1)))
    rf = int(_num("budget.reduction_factor", budget.get("reduction_factor", 3)))
    tb = _num("budget.time_budget_s", budget.get("time_budget_s", 0))
    for name, val, ok in (("budget.trials", trials, trials >= 1), ("concurrency", conc, conc >= 1),
                          ("resources.cpu", cpu, cpu > 0), ("resources.gpu", gpu, gpu >= 0),
                          ("budget.grace_period", grace, grace >= 1), ("budget.reduction_factor", rf, rf >= 2),
                          ("budget.time_budget_s", tb, tb >= 0)):
        if not ok:
            raise SpecError(f"{name}: {val!r} is out of range")
    if smoke:
        trials = min(trials, 2)
    name = str(raw.get("name", family)) if index >= 0 else str(family)  # a top-level `name` names the sweep
    return Study(name, family, config, domains, metric, mode, trials, grace, rf, tb, cpu, gpu, conc)


def load_spec(path: str | Path, overrides: list[str] = (), smoke: bool = False) -> Spec:
    """Read and validate a spec file; `overrides` are `key=value` strings applied to config (or top-level keys)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    raw = copy.deepcopy(raw)
    raw.setdefault("name", path.stem)
    return parse_spec(raw, overrides, smoke)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        val = yaml.safe_load(value)
        if key in SWEEP_KEYS and key != "studies":
            raw[key] = val
            continue
        targets = raw["studies"] if "studies" in raw else [raw]
        for st in targets:
            try:  # a key of the family's config wins (DANN's config has its own `mode`)
                is_config = key in flat_keys(config_class(str(st.get("family"))))
            except SpecError:
                is_config = False
            if not is_config and (key in ("metric", "mode", "concurrency") or key.startswith(("budget.", "resources."))):
                head, _, tail = key.partition(".")
                if tail:
                    st.setdefault(head, {})[tail] = val
                else:
                    st[head] = val
            else:  # config keys win over the spec and over --smoke; a fixed value replaces its search domain
                st.setdefault("__set__", {})[key] = val
                if isinstance(st.get("search"), dict):
                    st["search"].pop(key, None)
    return raw


def parse_spec(raw: dict, overrides: list[str] = (), smoke: bool = False) -> Spec:
    raw = apply_overrides(copy.deepcopy(raw), list(overrides))
    if "studies" in raw:
        top = _check_keys("spec", {k: v for k, v in raw.items()}, SWEEP_KEYS + ("resources", "concurrency"))
        if not isinstance(top["studies"], list) or not top["studies"]:
            raise SpecError("studies: expected a non-empty list of studies")
        studies = tuple(parse_study(s, top, smoke, i) for i, s in enumerate(top["studies"]))
    else:
        studies = (parse_study(raw, {}, smoke, -1),)
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise SpecError(f"studies: names must be unique, got {names}")
    seed = int(_num("seed", raw.get("seed", 0)))
    mf = int(_num("max_failures", raw.get("max_failures", 2)))
    return Spec(
        name=str(raw.get("name", "sweep")), seed=seed, storage=str(raw.get("storage", "runs")),
        tracking_uri=str(raw.get("tracking_uri", "") or ""), experiment=str(raw.get("experiment", "") or ""),
        max_failures=mf, studies=studies, source=raw,
    )
