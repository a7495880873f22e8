"""Frozen, strictly parsed configs of the three families.

A trial's config arrives flat ({"lr_g": 1e-4, "data.domain": "usps"}); `from_flat` builds the
dataclass, refusing unknown keys (listing the valid ones) and values of the wrong type.
"""
from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from trainables.errors import SpecError

Auto = Literal["auto", "on", "off"]
AUGMENT_OPS = ("color", "translation", "cutout")  # models.augment's ops, in the order they are applied
DataSource = Literal["demo", "report", "mnist", "mnistm", "svhn", "usps", "celeba", "folder"]


@dataclass(frozen=True)
class DataConfig:
    """Where a dataset comes from. `domain` names the digit domain (mnistm, usps, svhn) for
    `demo` and `report` sources; `limit` > 0 keeps only the first N images of each split."""

    source: DataSource = "demo"
    root: str = ""
    domain: str = ""
    limit: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Keys shared by every family."""

    seed: int = 0
    epochs: int = 1
    batch_size: int = 128
    eval_every: int = 1  # epochs between metric evaluations (the last epoch is always evaluated)
    steps_per_epoch: int = 0  # 0: one pass over the training split
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Auto = "auto"  # bf16 autocast; auto = on for CUDA, off on CPU
    channels_last: Auto = "auto"
    cache_dir: str = ""  # dataset/evaluator/FID-statistics cache; "" = $GENTUNE_CACHE or ~/.cache/gentune


@dataclass(frozen=True)
class GANConfig(TrainConfig):
    model: Literal["A", "B"] = "A"
    width: int = 64  # DCGAN's ngf = ndf (the report's 64); narrower trains faster on a CPU
    epochs: int = 600
    batch_size: int = 256
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    d_optimizer: Literal["adam", "sgd"] = "adam"
    d_momentum: float = 0.5
    # soft and noisy labels: targets drawn uniformly from [lo, hi] each step (model A: hard 1 / 0)
    real_label_lo: float = 1.0
    real_label_hi: float = 1.0
    fake_label_lo: float = 0.0
    fake_label_hi: float = 0.0
    label_flip: float = 0.0  # probability of swapping a real and a fake target
    n_eval: int = 1000  # generated images per evaluation (face rate, FID as the report's grader: 1000; diversity)
    fid: Auto = "auto"  # auto: compute FID when Inception weights are found
    fid_weights: str = ""
    fid_dims: int = 2048
    # small-data regularisers (all off by default: the report's models train as the report trained them)
    augment: Literal["none", "diffaugment"] = "none"  # DiffAugment on every batch D sees, real and fake, D and G step
    augment_policy: str = "color,translation,cutout"  # any of color, translation, cutout (comma-separated)
    r1_gamma: float = 0.0  # R1 penalty gamma/2 * |grad_x D(x_real)|^2 on D's logits; 0 = off
    r1_every: int = 16  # lazy R1: every r1_every D steps, scaled by r1_every (StyleGAN2)
    g_ema: float = 0.0  # > 0: sample (evaluate, export) from an exponential moving average of G's weights, this decay
    instance_noise: float = 0.0  # sigma of N(0, sigma^2) added to D's inputs at step 0, linearly to 0 at the last step
    # stop rules, each for `patience` evaluations in a row. "discriminator won": D tells fakes apart
    # (mean D(G(z)) over the epoch below d_won_fake) with a low D loss (below d_won_loss), from the first
    # evaluation on; calibrated on quickstart runs (README, benchmarks/RESULTS.md)
    d_won_fake: float = 0.1
    d_won_loss: float = 0.3
    collapse_diversity: float = 0.05  # sample diversity relative to real images' diversity
    patience: int = 2
    rules_after: int = 10  # epochs before the collapse rule applies (an untrained G is all alike)
    data: DataConfig = field(default_factory=DataConfig)


@dataclass(frozen=True)
class DDPMConfig(TrainConfig):
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-4
    lr_decay: bool = True  # linear decay to 0 over the epochs (the reference code)
    n_feat: int = 128
    T: int = 500
    # noise schedule (models.ddpm.NoiseSchedule): "scaled" keeps every T ending in noise; "linear" with
    # the report's ends at T = 500 is the report's exact schedule (search/specs/seed.yaml)
    schedule: Literal["scaled", "linear", "cosine"] = "scaled"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    drop_prob: float = 0.1
    ema_decay: float = 0.0  # > 0: sample from an exponential moving average of the weights (0: the report's, none)
    guidance: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)  # w values evaluated on each checkpoint
    n_per_digit: int = 10
    data: DataConfig = field(default_factory=lambda: DataConfig(domain="mnistm"))


@dataclass(frozen=True)
class DANNConfig(TrainConfig):
    mode: Literal["source-only", "dann", "target-only"] = "dann"
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    lamb: float = 0.3
    lambda_schedule: Literal["fixed", "ramp"] = "fixed"
    source: DataConfig = field(default_factory=lambda: DataConfig(domain="mnistm"))
    target: DataConfig = field(default_factory=lambda: DataConfig(domain="usps"))


def flat_keys(cls: type) -> list[str]:
    """Every valid flat key of a config class, nested ones dotted."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out += [f"{f.name}.{k}" for k in flat_keys(t)]
        else:
            out.append(f.name)
    return out


def _coerce(key: str, value: Any, t: Any) -> Any:
    origin = get_origin(t)
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(get_args(t)):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if value not in get_args(t):
            raise SpecError(f"{key}: {value!r} is not one of {', '.join(map(repr, get_args(t)))}")
        return value
    if origin in (Union, types.UnionType):
        for arm in get_args(t):
            try:
                return _coerce(key, value, arm)
            except SpecError:
                pass
        raise SpecError(f"{key}: {value!r} does not match {t}")
    if origin is tuple:
        (elem, _) = get_args(t)
        seq = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(key, v, elem) for v in seq)
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise SpecError(f"{key}: expected true or false, got {value!r}")
    if t is int:
        if isinstance(value, bool):
            raise SpecError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise SpecError(f"{key}: expected an integer, got {value!r}")
    if t is float:
        if isinstance(value, bool):
            raise SpecError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise SpecError(f"{key}: expected a number, got {value!r}")
    if t is str:
        if isinstance(value, str):
            return value
        raise SpecError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {t} for {key}")


def from_flat(cls: type, flat: dict[str, Any], prefix: str = "") -> Any:
    """Build `cls` from a flat dict; unknown keys and wrong types raise SpecError."""
    valid = flat_keys(cls)
    unknown = sorted(k for k in flat if k not in valid)
    if unknown:
        raise SpecError(f"unknown config key {prefix}{unknown[0]!r}; valid keys: {', '.join(valid)}")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            sub = {k[len(f.name) + 1 :]: v for k, v in flat.items() if k.startswith(f.name + ".")}
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else t()  # type: ignore[misc]
            merged = {**to_flat(default), **sub}
            kwargs[f.name] = from_flat(t, merged, prefix=f"{prefix}{f.name}.")
        elif f.name in flat:
            kwargs[f.name] = _coerce(prefix + f.name, flat[f.name], t)
    cfg = cls(**kwargs)
    validate(cfg)
    return cfg


def to_flat(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update({f"{f.name}.{k}": x for k, x in to_flat(v).items()})
        else:
            out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


MAX_SIGNAL_AT_T = 0.1  # sqrt(abar_T) above this: sampling starts from noise that training never showed the model


def check_schedule(cfg: DDPMConfig) -> None:
    """Refuse a noise schedule that does not end (near) pure noise at t = T, naming the keys."""
    from models.ddpm import NoiseSchedule

    keys = f"schedule={cfg.schedule}, T={cfg.T}, beta_start={cfg.beta_start:g}, beta_end={cfg.beta_end:g}"
    try:
        s = NoiseSchedule(cfg.T, cfg.beta_start, cfg.beta_end, cfg.schedule)
    except ValueError as e:
        raise SpecError(f"{keys}: invalid noise schedule ({e}); use a larger T or schedule cosine") from None
    if s.signal_at_T > MAX_SIGNAL_AT_T:
        raise SpecError(f"{keys}: sqrt(abar_T) = {s.signal_at_T:.3f} of the image is left at t = T (> {MAX_SIGNAL_AT_T}), "
                        "so sampling would start from noise the model never saw; use schedule scaled or cosine, "
                        "or a larger T or beta_end")


def augment_policy(cfg: GANConfig) -> tuple[str, ...]:
    """cfg.augment_policy as a tuple of op names ("color,cutout" -> ("color", "cutout")); () with augment none.
    Refuses a name that is not an op, a repeated one, or an empty policy with augment on."""
    names = tuple(p.strip() for p in cfg.augment_policy.split(","))
    bad = [p for p in names if p not in AUGMENT_OPS]
    if bad or len(set(names)) != len(names):
        raise SpecError(f"augment_policy: {cfg.augment_policy!r} is invalid; expected a comma-separated subset of "
                        f"{', '.join(AUGMENT_OPS)} (each once)")
    return names if cfg.augment == "diffaugment" else ()


def validate(cfg: Any) -> None:
    """Range checks that types cannot express."""

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise SpecError(f"{key}: {getattr(cfg, key)!r} is invalid; expected {what}")

    if isinstance(cfg, DataConfig):
        need(cfg.limit >= 0, "limit", "an integer >= 0")
        return
    need(cfg.epochs >= 1, "epochs", "an integer >= 1")
    need(cfg.batch_size >= 1, "batch_size", "an integer >= 1")
    need(cfg.eval_every >= 1, "eval_every", "an integer >= 1")
    need(cfg.steps_per_epoch >= 0, "steps_per_epoch", "an integer >= 0")
    if isinstance(cfg, GANConfig):
        need(cfg.lr_g > 0, "lr_g", "a learning rate > 0")
        need(cfg.lr_d > 0, "lr_d", "a learning rate > 0")
        need(cfg.width >= 4 and cfg.width % 4 == 0, "width", "a positive multiple of 4 (DCGAN's ngf = ndf)")
        need(cfg.real_label_lo <= cfg.real_label_hi, "real_label_lo", "real_label_lo <= real_label_hi")
        need(cfg.fake_label_lo <= cfg.fake_label_hi, "fake_label_lo", "fake_label_lo <= fake_label_hi")
        need(0 <= cfg.label_flip <= 1, "label_flip", "a probability in [0, 1]")
        need(cfg.n_eval >= 2, "n_eval", "an integer >= 2")
        need(cfg.fid_dims in (64, 192, 768, 2048), "fid_dims", "one of 64, 192, 768, 2048")
        need(cfg.patience >= 1, "patience", "an integer >= 1")
        need(0 <= cfg.d_won_fake <= 1, "d_won_fake", "a probability in [0, 1] (0 turns the rule off)")
        need(cfg.d_won_loss >= 0, "d_won_loss", "a loss >= 0")
        need(0 <= cfg.g_ema < 1, "g_ema", "a decay in [0, 1) (0 = off)")
        need(cfg.r1_gamma >= 0, "r1_gamma", "a penalty weight >= 0 (0 = off)")
        need(cfg.r1_every >= 1, "r1_every", "an integer >= 1")
        need(cfg.instance_noise >= 0, "instance_noise", "a noise sigma >= 0 (0 = off)")
        augment_policy(cfg)
    elif isinstance(cfg, DDPMConfig):
        need(cfg.lr > 0, "lr", "a learning rate > 0")
        need(cfg.T >= 10, "T", "an integer >= 10")
        need(0 < cfg.beta_start < cfg.beta_end < 1, "beta_start", "0 < beta_start < beta_end < 1")
        check_schedule(cfg)
        need(0 <= cfg.drop_prob < 1, "drop_prob", "a probability in [0, 1)")
        need(0 <= cfg.ema_decay < 1, "ema_decay", "a decay in [0, 1)")
        need(len(cfg.guidance) >= 1 and all(w >= 0 for w in cfg.guidance), "guidance", "a list of w >= 0")
        need(cfg.n_per_digit >= 1, "n_per_digit", "an integer >= 1")
        need(cfg.n_feat % 8 == 0 and cfg.n_feat > 0, "n_feat", "a positive multiple of 8 (GroupNorm(8, .))")
    elif isinstance(cfg, DANNConfig):
        need(cfg.lr > 0, "lr", "a learning rate > 0")
        need(cfg.lamb >= 0, "lamb", "lambda >= 0")
