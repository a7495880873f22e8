"""The model families, each declared once: its config class, trainer, metrics and smoke sizes.

The sweep, the spec parser, export and the trainer factory read this registry. A new family is a
module that calls `register`, named in $GENTUNE_FAMILIES (comma-separated module names, imported after
the three built-in families, in the driver and in every Ray worker, which inherit the variable);
tests/toy_family.py is one. An unknown family is an error naming the known ones.

What a family's bundles make is declared on its trainer class: static `sample_plan` and `sample_images`
(with DEFAULT_N and SAMPLE_OPTIONS) for `gentune generate` and the report's samples (GAN, DDPM), static
`classify_images` for `gentune predict` (DANN); a family without them exports and reports, and says so.
Its own `gentune report` sections are a function named in `report` (analysis/report_sections.py holds
the built-in ones); without one the report gives it the generic study sections.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

from trainables.config import DANNConfig, DDPMConfig, GANConfig, TrainConfig
from trainables.errors import SpecError


@dataclass(frozen=True)
class Family:
    name: str
    config: type[TrainConfig]
    # "module:Class" of its Trainer (trainables.loop.Trainer), imported when a trial starts: parsing a
    # spec or a config does not load torch and the models
    trainer: str
    metrics: dict[str, str]  # what its trials report at evaluation epochs -> the better direction
    default_metric: str  # one of metrics, or "auto" where the family resolves it (the GAN: FID if it can)
    metric_prefixes: tuple[str, ...] = ()  # metrics named per setting (the DDPM's acc_w<w>)
    refused_metrics: dict[str, str] = field(default_factory=dict)  # reported but never to rank on: why
    # the splits its trials read: (config field holding a DataConfig, split, image size, kind)
    data: tuple[tuple[str, str, int, str], ...] = ()
    smoke: dict[str, Any] = field(default_factory=dict)  # --smoke sizes: a run of under a minute on 2 CPU cores
    pbt_mutable: tuple[str, ...] = ()  # keys PBT may change in a running trial (the trainer re-applies them)
    # "module:function" drawing the family's own `gentune report` sections: fn(report) -> [Section], adding
    # the `gentune arch` names it showed to report.arch; imported by the report only. "": generic sections only
    report: str = ""
    # "module:function" of its `gentune summary` rows: fn(sweep, its finished trials) -> [[family, what,
    # trial id, values]]; "": the best trial of each of its studies by the study's metric
    summary: str = ""

    @property
    def data_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(attr for attr, _, _, _ in self.data))


FAMILIES: dict[str, Family] = {}
_plugins_loaded = False


def register(f: Family) -> Family:
    FAMILIES[f.name] = f
    return f


def known() -> dict[str, Family]:
    """Every family: the built-in ones and, on first use, those of the $GENTUNE_FAMILIES modules (imported
    lazily, so that a family module may import any of trainables/)."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        load_plugins()
    return FAMILIES


def family(name: str) -> Family:
    try:
        return known()[name]
    except (KeyError, TypeError):
        raise SpecError(f"unknown family {name!r}; expected one of {', '.join(FAMILIES)}") from None


def config_class(name: str) -> type[TrainConfig]:
    return family(name).config


def hook(name: str, field: str) -> Any:
    """What the family's "module:attribute" entry `field` (trainer, report, summary) names, imported now;
    a path that does not import is one error naming the family. None when the entry is empty."""
    path = getattr(family(name), field)
    if not path:
        return None
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise SpecError(f"family {name}: its {field} {path!r} cannot be loaded ({e})") from None


def trainer_class(name: str) -> type:
    return hook(name, "trainer")


def build_trainer(name: str, cfg: TrainConfig, quiet: bool = False) -> Any:
    return trainer_class(name)(cfg, quiet=quiet)


def prepare(name: str, cfg: TrainConfig, quiet: bool = False) -> None:
    """What a family's trials share, made once in the sweep's driver before they start (not once per
    concurrent trial): its decoded data, and whatever its trainer's `prepare(cfg, quiet)` adds."""
    from trainables.data import load_split

    for attr, split, size, kind in family(name).data:
        load_split(getattr(cfg, attr), split, size, kind, cfg.cache_dir, quiet)
    hook = getattr(trainer_class(name), "prepare", None)
    if hook is not None:
        hook(cfg, quiet)


# metric "auto" (the GAN default): FID where the Inception weights are found, else face_score
# (face rate times diversity, capped at 1), which a collapsed generator cannot win with faces alone
register(Family(
    "gan", GANConfig, "trainables.gan:GANTrainer", {"fid": "min", "face_score": "max", "face_rate": "max", "diversity": "max"}, "auto",
    data=(("data", "train", 64, "faces"),), smoke={"epochs": 2, "steps_per_epoch": 3, "batch_size": 16, "n_eval": 32},
    pbt_mutable=("lr_g", "lr_d", "real_label_lo", "real_label_hi", "fake_label_lo", "fake_label_hi", "label_flip"),
    report="analysis.report_sections:gan",
    summary="analysis.summary:gan",
))
register(Family(
    "ddpm", DDPMConfig, "trainables.ddpm:DDPMTrainer", {"acc": "max"}, "acc", metric_prefixes=("acc_w",),
    data=(("data", "train", 28, "digits"),),
    smoke={"epochs": 2, "steps_per_epoch": 3, "batch_size": 32, "n_feat": 16, "T": 25, "n_per_digit": 2},
    report="analysis.report_sections:ddpm",
    summary="analysis.summary:ddpm",
))
register(Family(  # source_acc and dev_risk (deep embedded validation) select without target labels
    "dann", DANNConfig, "trainables.dann:DANNTrainer", {"target_acc": "max", "source_acc": "max", "dev_risk": "min", "domain_acc": "min"},
    "target_acc",
    data=(("source", "train", 32, "digits"), ("target", "train", 32, "digits"), ("source", "val", 32, "digits"),
          ("target", "val", 32, "digits")),
    refused_metrics={"target_test_acc": "is the held-out half of the target labels, reported but never used to rank "
                     "trials; rank on target_acc (the selection half), source_acc or dev_risk (label-free)"}, smoke={"epochs": 2, "steps_per_epoch": 4, "batch_size": 32},
    report="analysis.report_sections:dann",
    summary="analysis.summary:dann",
))


def load_plugins(names: str | None = None) -> None:
    """Import the family modules named in $GENTUNE_FAMILIES (or `names`); a module that is missing is one error."""
    for name in filter(None, (n.strip() for n in (os.environ.get("GENTUNE_FAMILIES", "") if names is None else names).split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise SpecError(f"GENTUNE_FAMILIES: cannot import family module {name!r} ({e})") from None

