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

from trainables.errors import SpecError
from trainables.config import DataConfig, flat_keys, from_flat, to_flat
from trainables.families import Family, config_class, known
from trainables.families import family as family_of
from trainables.loop import AGGREGATES

DOMAIN_KINDS = ("loguniform", "uniform", "int", "choice")
STUDY_KEYS = ("name", "family", "config", "search", "start_from", "metric", "mode", "budget", "resources", "concurrency", "smoke")
SWEEP_KEYS = ("name", "seed", "storage", "tracking_uri", "experiment", "studies", "max_failures")
BUDGET_KEYS = ("trials", "scheduler", "searcher", "grace_period", "reduction_factor", "perturbation_interval", "time_budget_s",
               "repeats", "aggregate", "rank_by")
# A trial's value: its best evaluated epoch (whose checkpoint is kept) or its last. Default best: of 84 toy-family
# runs (7 learning rates x 4 widths x 3 seeds, 4 epochs) 30 peaked before their last epoch, by 0.04 accuracy on
# average and 0.175 at most; in gan-seeds.yaml's 6 GAN runs the best epoch was the last, so `best` cost nothing there.
RANK_BY = ("best", "last")
# asha: stop weak trials at evaluated epochs; fifo: every trial runs all its epochs; pbt: population-based
# training (the GAN family): at evaluated epochs the worst trials continue from the best ones' checkpoints
# with perturbed learning rates and label ranges
SCHEDULERS = ("asha", "fifo", "pbt")
SEARCHERS = ("tpe", "random")  # Optuna's TPE (seeded) or its random sampler, both with the `when` conditions
RESOURCE_KEYS = ("cpu", "gpu")

# --smoke: any spec shrunk in sizes only (epochs, steps, batch, evaluation sizes, T, width: each family's
# `smoke` in trainables.families) to a run of under a minute per trial on 2 CPU cores with the demo data.
# eval_every, the search space of every other key, metrics and studies stay as written; a searched size
# is fixed to its smoke value.
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def plain_name(where: str, name: Any) -> str:
    """Sweep and study names become folder names and MLflow tags: letters, digits, '-', '_', '.' only."""
    if not isinstance(name, str) or not name or not set(name) <= NAME_CHARS or name in (".", ".."):
        raise SpecError(f"{where}: {name!r} is not a plain name; use letters, digits, '-', '_' and '.' only")
    return name


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
    auto_metric: bool = False  # metric: auto was resolved (to fid or face_score)
    start_from: tuple[dict[str, Any], ...] = ()  # searched values of the first trials (the report's settings)
    notes: tuple[str, ...] = ()  # what parsing changed, printed when the sweep starts
    scheduler: str = "asha"  # one of SCHEDULERS
    searcher: str = "tpe"  # one of SEARCHERS; "random" is Tune's own sampling under pbt
    perturbation_interval: int = 0  # pbt: epochs between exploit/explore steps (a multiple of eval_every)
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, mode) of each objective; metric/mode are the first
    repeats: int = 1  # seeds per configuration (its seed + 0..repeats-1), judged by their aggregate
    aggregate: str = "mean"  # one of trainables.loop.AGGREGATES
    rank_by: str = "best"  # one of RANK_BY

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


def _int(where: str, v: Any) -> int:
    x = _num(where, v)
    if not float(x).is_integer():
        raise SpecError(f"{where}: expected an integer, got {v!r}")
    return int(x)


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


def parse_start_from(raw: Any, domains: tuple[Domain, ...], family: str, config: dict) -> tuple[dict, ...]:
    """`start_from:` a list of {searched key: value}, tried first (Optuna's enqueued trials)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
        raise SpecError("start_from: expected a list of mappings {searched key: value}")
    by_key = {d.key: d for d in domains}
    out = []
    for i, point in enumerate(raw):
        for k, v in point.items():
            where = f"start_from[{i}].{k}"
            d = by_key.get(k)
            if d is None:
                raise SpecError(f"{where}: {k!r} is not searched in this study; searched keys: {', '.join(by_key) or 'none'}")
            if d.kind == "choice":
                if v not in d.args:
                    raise SpecError(f"{where}: {v!r} is not one of the choices {list(d.args)}")
            else:
                x = _num(where, v)
                if not d.args[0] <= x <= d.args[1] or (d.kind == "int" and not float(x).is_integer()):
                    raise SpecError(f"{where}: {v!r} is outside the searched range {list(d.args)}")
                v = int(x) if d.kind == "int" else x
            point = {**point, k: v}
        try:
            from_flat(config_class(family), {**config, **point})
        except SpecError as e:
            raise SpecError(f"start_from[{i}]: {e}") from None
        out.append(dict(point))
    return tuple(out)


def _check_data(fam: Family, cfg) -> None:
    for part in fam.data_keys:
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
        raise SpecError(f"spec: missing key 'family' ({', '.join(known())})")
    fam = family_of(str(family))
    cls = fam.config
    valid = flat_keys(cls)
    config = _flatten(raw.get("config") or {})
    for k in config:
        if k not in valid:
            raise SpecError(f"config.{k}: unknown config key; valid keys: {', '.join(valid)}")
    if smoke:
        small = dict(fam.smoke)
        if config.get("schedule") == "linear":  # the report's linear betas need their T to reach noise: T stays
            small.pop("T", None)
        config.update(small)
        for part in fam.data_keys:
            for k in [k for k in config if k.startswith(part + ".")]:
                del config[k]
        config.update(_flatten(raw.get("smoke") or {}))
    set_keys = set(raw.get("__set__") or {})
    for k, v in (raw.get("__set__") or {}).items():
        if k not in valid:
            raise SpecError(f"--set {k}: unknown config key; valid keys: {', '.join(valid)}")
        config[k] = v
    cfg = from_flat(cls, config)  # types and ranges of the fixed values
    parsed = to_flat(cfg)
    config = {k: parsed[k] for k in config}  # as parsed: `fid: off` (YAML's False) is "off", "1e-4" a float
    _check_data(fam, cfg)
    search_raw = raw.get("search") or {}
    if not isinstance(search_raw, dict):
        raise SpecError("search: expected a mapping of config key: domain")
    if smoke:  # a searched size is fixed to its smoke value; every other domain stays as written
        search_raw = {k: v for k, v in search_raw.items() if k not in fam.smoke or k in set_keys}
    domains = tuple(parse_domain(k, v, valid) for k, v in search_raw.items())
    # a key fixed by --set to another value than a domain's `when` asks for: that domain is never sampled,
    # as the user chose (e.g. --set model=A drops model B's label ranges); written in the spec, it is an error
    unmet = [d for d in domains if any(wk in set_keys and parsed[wk] != wv for wk, wv in d.when)]
    domains = tuple(d for d in domains if d not in unmet)
    dropped = [f"search.{d.key} dropped: it is searched when {', '.join(f'{k}={v}' for k, v in d.when)}, and --set "
               f"fixed {', '.join(f'{k}={parsed[k]}' for k, _ in d.when if k in set_keys)}" for d in unmet]
    for i, d in enumerate(domains):
        earlier = {e.key: e for e in domains[:i]}
        for wk, wv in d.when:
            if wk in earlier:
                if earlier[wk].kind == "choice" and wv not in earlier[wk].args:
                    raise SpecError(f"search.{d.key}.when: {wk} is searched over {list(earlier[wk].args)}, never {wv!r}, "
                                    f"so {d.key} would never be sampled")
            elif any(e.key == wk for e in domains[i:]):
                raise SpecError(f"search.{d.key}.when: {wk!r} is searched after {d.key}; list {wk} first")
            elif wk not in valid:
                raise SpecError(f"search.{d.key}.when: {wk!r} is not a config key; valid keys: {', '.join(valid)}")
            else:
                fixed = parsed[wk]
                if fixed != wv:
                    raise SpecError(f"search.{d.key}.when: {wk} is fixed to {fixed!r}, never {wv!r}, "
                                    f"so {d.key} would never be sampled")
        ends = d.args if d.kind != "int" else (d.args[0], d.args[1])
        for v in ends:
            _check_value(family, d.key, v, config)
    starts_raw = raw.get("start_from")
    fixed_now = set_keys | (set(fam.smoke) if smoke else set()) | {d.key for d in unmet}
    if isinstance(starts_raw, list):  # keys fixed by --set or --smoke are no longer searched; a point written
        # for the branch --set ruled out (the model B point under --set model=A: `model` decides a dropped domain) goes
        branch = {wk for d in unmet for wk, _ in d.when}
        starts_raw = [{k: v for k, v in p.items() if k not in fixed_now} if isinstance(p, dict) else p for p in starts_raw
                      if not isinstance(p, dict) or all(k not in branch or v == parsed[k] for k, v in p.items())]
    starts = parse_start_from(starts_raw, domains, family, config)
    objectives, auto = parse_objectives(family, raw, cfg)
    metric, mode = objectives[0]
    budget = _check_keys("budget", raw.get("budget"), BUDGET_KEYS)
    res = _check_keys("resources", raw.get("resources") or defaults.get("resources"), RESOURCE_KEYS)
    trials = _int("budget.trials", budget.get("trials", 1 if not domains else 8))
    conc = _int("concurrency", raw.get("concurrency", defaults.get("concurrency", 2)))
    gpu = _num("resources.gpu", res.get("gpu", 0))
    cpu = _num("resources.cpu", res.get("cpu", 1))
    grace = _int("budget.grace_period", budget.get("grace_period", cfg.eval_every))  # default: the first evaluation
    rf = _int("budget.reduction_factor", budget.get("reduction_factor", 3))
    tb = _num("budget.time_budget_s", budget.get("time_budget_s", 0))
    sched = budget.get("scheduler", "asha" if len(objectives) == 1 else "fifo")
    if sched not in SCHEDULERS:
        raise SpecError(f"budget.scheduler: {sched!r} is not a scheduler; expected one of {', '.join(SCHEDULERS)}")
    searcher = budget.get("searcher", "random" if sched == "pbt" else "tpe")
    if searcher not in SEARCHERS:
        raise SpecError(f"budget.searcher: {searcher!r} is not a searcher; expected one of {', '.join(SEARCHERS)}")
    if len(objectives) > 1 and sched != "fifo":
        raise SpecError(f"budget.scheduler {sched}: it ranks trials on one metric, and this study has "
                        f"{len(objectives)} ({', '.join(m for m, _ in objectives)}); use scheduler fifo (the default then)")
    repeats = _int("budget.repeats", budget.get("repeats", 1))
    aggregate, rank_by = budget.get("aggregate", "mean"), budget.get("rank_by", "best" if len(objectives) == 1 else "last")
    if aggregate not in AGGREGATES:
        raise SpecError(f"budget.aggregate: {aggregate!r} is not an aggregate; expected one of {', '.join(AGGREGATES)}")
    if rank_by not in RANK_BY:
        raise SpecError(f"budget.rank_by: {rank_by!r}; expected one of {', '.join(RANK_BY)}")
    if rank_by == "best" and len(objectives) > 1:
        raise SpecError("budget.rank_by best: a multi-objective study ranks trials by their Pareto front of last values; "
                        "use rank_by: last")
    if repeats > 1 and sched == "pbt":
        raise SpecError("budget.repeats: PBT copies one trial's weights into another; it cannot repeat configurations "
                        "over seeds (use scheduler asha or fifo, or repeats: 1)")
    pi = _int("budget.perturbation_interval", budget.get("perturbation_interval", cfg.eval_every))
    if sched == "pbt":
        check_pbt(family, domains, searcher, pi, cfg)
    elif "perturbation_interval" in budget:
        raise SpecError(f"budget.perturbation_interval is PBT's; scheduler {sched} has none")
    notes = list(dropped)
    if sched != "asha" and ("grace_period" in budget or "reduction_factor" in budget):
        notes.append(f"budget.grace_period/reduction_factor are ASHA's; ignored with scheduler {sched}"
                     + (" (every trial runs to its last epoch)" if sched == "fifo" else ""))
    for name, val, ok in (("budget.trials", trials, trials >= 1), ("concurrency", conc, conc >= 1),
                          ("resources.cpu", cpu, cpu > 0), ("resources.gpu", gpu, gpu >= 0),
                          ("budget.grace_period", grace, grace >= 1), ("budget.reduction_factor", rf, rf >= 2),
                          ("budget.time_budget_s", tb, tb >= 0), ("budget.repeats", repeats, 1 <= repeats <= 100)):
        if not ok:
            raise SpecError(f"{name}: {val!r} is out of range")
    if "eval_every" in {d.key for d in domains} or "epochs" in {d.key for d in domains}:
        raise SpecError("search: epochs and eval_every cannot be searched (ASHA's rungs are epochs that were evaluated)")
    if sched == "asha" and grace < cfg.epochs and grace % cfg.eval_every:
        # ASHA judges trials at its rungs (grace * rf^k epochs): they must be evaluated epochs
        rounded = -(-grace // cfg.eval_every) * cfg.eval_every
        if rounded >= cfg.epochs:
            raise SpecError(f"budget.grace_period: {grace} with eval_every {cfg.eval_every} and epochs {cfg.epochs}: the first "
                            "evaluation after it is the last epoch, so ASHA could never stop a trial early; "
                            f"use a grace period that is a multiple of eval_every below {cfg.epochs}")
        notes.append(f"budget.grace_period {grace} rounded up to {rounded}, the first evaluated epoch (eval_every {cfg.eval_every})")
        grace = rounded
    if smoke:
        gpu = gpu if _cuda_here() else 0.0
        trials = min(trials, 2)
        starts = starts[:trials]
    name = plain_name(f"studies[{index}].name", raw.get("name", family)) if index >= 0 else str(family)  # a top-level `name` names the sweep
    if len(starts) > trials:
        raise SpecError(f"start_from: {len(starts)} configurations but budget.trials is {trials}")
    return Study(name, family, config, domains, metric, mode, trials, grace, rf, tb, cpu, gpu, conc, auto, starts, tuple(notes),
                 sched, searcher, pi if sched == "pbt" else 0, objectives, repeats, aggregate, rank_by)


def parse_objectives(family: str, raw: dict, cfg) -> tuple[tuple[tuple[str, str], ...], bool]:
    """`metric:` one name, or a list of two or more (a multi-objective study: Optuna's multi-objective TPE
    and FIFO; `mode:` then a list of the same length, or each metric's usual direction)."""
    known = family_of(family).metrics
    metric_raw = raw.get("metric", family_of(family).default_metric)
    mode_raw = raw.get("mode")
    many = isinstance(metric_raw, list)
    names = [str(m) for m in metric_raw] if many else [str(metric_raw)]
    if many and (len(names) < 2 or len(set(names)) != len(names)):
        raise SpecError(f"metric: a list needs two or more different metrics, got {metric_raw}")
    if many and mode_raw is not None and (not isinstance(mode_raw, list) or len(mode_raw) != len(names)):
        raise SpecError(f"mode: with {len(names)} metrics, give a list of {len(names)} modes (min or max), or none")
    if not many and isinstance(mode_raw, list):
        raise SpecError("mode: a list of modes needs a list of metrics")
    modes = (mode_raw or [None] * len(names)) if many else [mode_raw]
    out, auto = [], False
    for i, metric in enumerate(names):
        where = f"metric[{i}]" if many else "metric"
        fam = family_of(family)
        if metric in fam.refused_metrics:
            raise SpecError(f"{where}: {metric} {fam.refused_metrics[metric]}")
        if metric != fam.default_metric and metric not in known and not metric.startswith(fam.metric_prefixes or ("\0",)):
            raise SpecError(f"{where}: {family} trials do not report {metric!r}; expected one of "
                            f"{', '.join(dict.fromkeys([fam.default_metric, *known]))}")
        mode = modes[i] if modes[i] is not None and metric != "auto" else None
        if metric == "auto":  # FID where its weights are found (the report's measure), else face_score
            from trainables.fid import fid_weights_for

            metric, auto = ("fid" if fid_weights_for(cfg) else "face_score"), True
        mode = str(mode if mode is not None else known.get(metric, "max"))
        if mode not in ("min", "max"):
            raise SpecError(f"mode: expected 'min' or 'max', got {mode!r}")
        out.append((metric, mode))
    if len({m for m, _ in out}) != len(out):
        raise SpecError(f"metric: {names} name the same metric twice once auto is resolved ({out[0][0]})")
    return tuple(out), auto


def check_pbt(family: str, domains: tuple[Domain, ...], searcher: str, interval: int, cfg) -> None:
    """What scheduler pbt can run: a family whose trainer takes new hyperparameters mid-run, Tune's random
    sampling (PBT picks the next configurations itself), no `when` on a searched key (Tune's sampling has
    no conditions), and perturbations at evaluated epochs."""
    mutable = family_of(family).pbt_mutable
    if not mutable:
        with_pbt = [f.name for f in known().values() if f.pbt_mutable]
        raise SpecError(f"budget.scheduler pbt: only the {', '.join(with_pbt)} family's trainer takes new learning "
                        f"rates mid-run; use asha or fifo for {family}")
    if searcher != "random":
        raise SpecError(f"budget.searcher {searcher} with scheduler pbt: PBT chooses configurations itself (it copies and "
                        "perturbs the best trials); use searcher random, the default with pbt")
    searched = {d.key for d in domains}
    for d in domains:
        for wk, _ in d.when:
            if wk in searched:
                raise SpecError(f"search.{d.key}.when: scheduler pbt samples with Tune's random search, which has no "
                                f"conditions; fix {wk} (e.g. --set {wk}=...) or drop the condition")
    if not any(d.key in mutable and d.kind in ("uniform", "loguniform") for d in domains):
        raise SpecError(f"budget.scheduler pbt: nothing to perturb; search at least one of {', '.join(mutable)} "
                        "with uniform or loguniform")
    if interval < 1 or interval % cfg.eval_every or interval >= cfg.epochs:
        raise SpecError(f"budget.perturbation_interval: {interval} must be a multiple of eval_every ({cfg.eval_every}) "
                        f"below epochs ({cfg.epochs}): PBT compares trials at evaluated epochs")


def _cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping (YAML would keep the last, silently)."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise SpecError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one mapping")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (a sweep spec is YAML text)") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


PATH_KEYS = ("root", "cache_dir", "fid_weights")  # config keys (or their last part) that name files or folders


def resolve_paths(raw: dict, base: Path) -> dict:
    """Relative paths in a spec mean what they mean next to the spec file (Ray runs trials in other folders)."""
    def fix(d: Any) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                if k in PATH_KEYS and isinstance(v, str) and v and "://" not in v:
                    p = Path(v).expanduser()
                    d[k] = str(p if p.is_absolute() else (base / p).resolve())
                else:
                    fix(v)
        elif isinstance(d, list):
            for x in d:
                fix(x)

    for part in [raw, *(raw.get("studies") or [])] if isinstance(raw.get("studies"), list) else [raw]:
        if isinstance(part, dict):
            fix(part.get("config"))
            fix(part.get("smoke"))
    return raw


def load_spec(path: str | Path, overrides: list[str] = (), smoke: bool = False) -> Spec:
    """Read and validate a spec file; `overrides` are `key=value` strings applied to config (or top-level keys).
    Relative paths in the file are taken relative to the file's folder, those in `overrides` to the
    current directory."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist" if not path.exists() else f"spec {path} is not a file")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    raw = resolve_paths(copy.deepcopy(raw), path.resolve().parent)
    raw.setdefault("name", path.stem)
    return parse_spec(raw, overrides, smoke)


def _family_keys(st: dict) -> list[str]:
    try:
        return flat_keys(config_class(str(st.get("family"))))
    except SpecError:
        return []


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            val = yaml.load(value, Loader=_StrictLoader) if value.strip() else ""  # noqa: S506
        except (yaml.YAMLError, SpecError):
            val = value  # not YAML: the plain string
        if key.rsplit(".", 1)[-1] in PATH_KEYS and isinstance(val, str) and val and "://" not in val:
            val = str(Path(val).expanduser().resolve())
        # sweep keys by name, except `seed`, which is also every family's config key: `--set seed=N` seeds the
        # trials (like any config key), `--set sweep.seed=N` the sampler
        if key.startswith("sweep.") and key[6:] in SWEEP_KEYS and key[6:] != "studies":
            raw[key[6:]] = val
            continue
        if key in SWEEP_KEYS and key not in ("studies", "seed"):
            raw[key] = val
            continue
        targets = raw["studies"] if isinstance(raw.get("studies"), list) else [raw]
        targets = [st for st in targets if isinstance(st, dict)]
        config_of = [st for st in targets if key in _family_keys(st)]
        if len(targets) > 1 and config_of:  # a multi-study spec: the studies whose family has the key
            targets = config_of
        for st in targets:
            is_config = st in config_of  # a key of the family's config wins (DANN's config has its own `mode`)
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
    seed = _int("seed", raw.get("seed", 0))
    mf = _int("max_failures", raw.get("max_failures", 2))
    if mf < 0:
        raise SpecError(f"max_failures: {mf} is out of range; expected retries per trial >= 0")
    return Spec(
        name=plain_name("name", raw.get("name", "sweep")), seed=seed, storage=str(raw.get("storage", "runs")),
        tracking_uri=str(raw.get("tracking_uri", "") or ""), experiment=str(raw.get("experiment", "") or ""),
        max_failures=mf, studies=studies, source=raw,
    )
