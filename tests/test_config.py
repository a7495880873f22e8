"""Strict config parsing and spec validation: bad values fail before anything runs, naming the key."""
from __future__ import annotations

import pytest

from trainables.errors import SpecError
from search.spec import load_spec, parse_spec
from trainables.config import DANNConfig, DDPMConfig, GANConfig, from_flat, to_flat
from tests.conftest import SPECS


def test_defaults_are_the_reports() -> None:
    g, d, n = GANConfig(), DDPMConfig(), DANNConfig()
    assert (g.model, g.lr_g, g.lr_d, g.beta1, g.beta2, g.batch_size, g.epochs) == ("A", 1e-4, 1e-4, 0.5, 0.999, 256, 600)
    assert (d.T, d.beta_start, d.beta_end, d.drop_prob, d.lr, d.batch_size, d.n_feat, d.epochs) == (500, 1e-4, 0.02, 0.1, 1e-4, 128, 128, 300)
    assert d.schedule == "scaled"  # the report's exact betas are schedule "linear" (seed.yaml); scaled keeps any T valid
    assert (n.lamb, n.lr, n.batch_size, n.epochs, n.mode) == (0.3, 1e-3, 256, 200, "dann")


def test_from_flat_round_trip_and_yaml_floats() -> None:
    cfg = from_flat(GANConfig, {"lr_g": "2e-4", "data.domain": "x", "model": "B"})
    assert cfg.lr_g == 2e-4 and cfg.data.domain == "x" and cfg.model == "B"
    assert from_flat(GANConfig, to_flat(cfg)) == cfg


@pytest.mark.parametrize("flat, needle", [
    ({"lr": 1e-3}, "unknown config key 'lr'; valid keys: seed"),
    ({"lr_g": "fast"}, "lr_g: expected a number, got 'fast'"),
    ({"epochs": 2.5}, "epochs: expected an integer"),
    ({"model": "C"}, "model: 'C' is not one of 'A', 'B'"),
    ({"lr_g": -1}, "lr_g: -1.0 is invalid; expected a learning rate > 0"),
    ({"real_label_lo": 1.0, "real_label_hi": 0.7}, "real_label_lo"),
    ({"data.colour": 1}, "unknown config key 'data.colour'"),
])
def test_bad_gan_config(flat, needle) -> None:
    with pytest.raises(SpecError) as e:
        from_flat(GANConfig, flat)
    assert needle in str(e.value)


def base(**kw):
    raw = {"family": "dann", "config": {"epochs": 2}, "search": {"lr": {"loguniform": [1e-4, 1e-2]}}}
    raw.update(kw)
    return raw


@pytest.mark.parametrize("raw, needle", [
    (base(serach={}), "unknown key 'serach'"),
    (base(search={"lrr": {"uniform": [0, 1]}}), "search.lrr: 'lrr' is not a config key"),
    (base(search={"lr": {"loguniform": [1e-2, 1e-4]}}), "search.lr.loguniform: empty range"),
    (base(search={"lr": {"uniform": [-1.0, 1e-3]}}), "search.lr: lr: -1.0 is invalid; expected a learning rate > 0"),
    (base(search={"lamb": {"uniform": [0.1]}}), "search.lamb.uniform: expected [low, high]"),
    (base(search={"lr": {"normal": [0, 1]}}), "search.lr: unknown key 'normal'"),
    (base(family="vae"), "unknown family 'vae'"),
    (base(config={"source": {"source": "report", "root": "/nonexistent/x"}}), "config.source.root: dataset folder /nonexistent/x does not exist"),
    (base(mode="best"), "mode: expected 'min' or 'max'"),
    (base(budget={"trials": 0}), "budget.trials: 0 is out of range"),
    (base(config={"epochs": "many"}), "epochs: expected an integer, got 'many'"),
])
def test_bad_specs_name_the_key(raw, needle) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(raw)
    assert needle in str(e.value)


def test_shipped_specs_parse_and_search_what_the_user_named() -> None:
    keys = {name: {d.key for st in load_spec(SPECS / f"{name}.yaml").studies for d in st.search} for name in ("gan", "ddpm", "dann")}
    assert {"lr_g", "lr_d", "model", "real_label_lo", "real_label_hi", "fake_label_hi", "label_flip", "d_optimizer"} <= keys["gan"]
    assert {"lr", "T", "drop_prob"} <= keys["ddpm"]
    assert {"lr", "lamb", "lambda_schedule"} <= keys["dann"]
    # guidance w is evaluated on every checkpoint, never retrained
    assert "guidance" not in keys["ddpm"] and len(load_spec(SPECS / "ddpm.yaml").studies[0].config["guidance"]) >= 3
    seed = load_spec(SPECS / "seed.yaml")
    assert all(not st.search and st.trials == 1 for st in seed.studies)
    b = next(st for st in seed.studies if st.name == "gan-b").config
    assert (b["d_optimizer"], b["lr_d"], b["d_momentum"], b["real_label_lo"], b["real_label_hi"], b["fake_label_hi"]) == ("sgd", 1e-3, 0.5, 0.7, 1.03, 0.33)


def test_conditional_keys_only_for_model_b() -> None:
    import optuna

    from search.searcher import DefineByRun

    st = load_spec(SPECS / "gan.yaml").studies[0]
    f = DefineByRun(st.search, dict(st.config))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"A": 0, "B": 0}
    for _ in range(30):
        t = study.ask()
        cfg = f(t)
        seen[cfg["model"]] += 1
        assert ("real_label_lo" in t.params) == (cfg["model"] == "B")
        study.tell(t, 0.0)
    assert seen["A"] and seen["B"]


def test_set_and_smoke_precedence() -> None:
    spec = load_spec(SPECS / "dann.yaml", ["epochs=3", "lr=0.002"], smoke=True)
    st = spec.studies[0]
    assert st.config["epochs"] == 3 and st.config["lr"] == 0.002  # --set beats --smoke
    assert "lr" not in {d.key for d in st.search}  # a fixed value replaces its search domain
    assert st.config["steps_per_epoch"] == 4 and st.trials <= 2


def test_set_seed_seeds_the_trials_and_sweep_seed_the_sampler() -> None:
    """`seed` is a config key of every family and the sweep's sampler seed: --set seed=N is the config key
    (like every bare --set key), --set sweep.seed=N the sampler's."""
    spec = load_spec(SPECS / "quickstart.yaml", ["seed=7"])
    assert spec.seed == 0 and {st.config["seed"] for st in spec.studies} == {7}
    spec = load_spec(SPECS / "quickstart.yaml", ["sweep.seed=5"])
    assert spec.seed == 5 and all(st.config.get("seed", 0) == 0 for st in spec.studies)
    spec = load_spec(SPECS / "dann.yaml", ["sweep.seed=3", "seed=4", "sweep.name=other"])
    assert (spec.seed, spec.name, spec.studies[0].config["seed"]) == (3, "other", 4)


def test_resolve_device_names_the_setting() -> None:
    import torch

    from trainables.errors import GentuneError
    from trainables.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(GentuneError, match=r"--device 'gpu0' is not a torch device"):
        resolve_device("gpu0", "--device")
    if not torch.cuda.is_available():
        with pytest.raises(GentuneError, match="device cuda:1 was asked for but CUDA is not available"):
            resolve_device("cuda:1")
