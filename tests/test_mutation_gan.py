"""The GAN's label ranges and stop rules, pinned where mutation testing found them loose (docs/mutation.md).

Expected values are written out by hand from the rules as documented (trainables/config.py's GANConfig comments,
GANTrainer.stop_reason's docstring), never computed by the functions under test.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from trainables.gan import GANTrainer, flip, noise_sigma, soft_targets
from trainables.loop import Diverged, check_finite, is_failure


# --- label ranges -------------------------------------------------------------------------------------


def test_soft_targets_are_made_on_the_device_asked_for() -> None:
    t = soft_targets(5, 0.7, 1.2, torch.device("meta"))  # meta: a device other than the CPU default, on any machine
    assert t.device.type == "meta" and t.shape == (5,)


def test_soft_targets_span_exactly_lo_to_hi() -> None:
    torch.manual_seed(0)
    t = soft_targets(20000, 0.7, 1.2, torch.device("cpu"))
    assert 0.7 <= float(t.min()) < 0.701 and 1.199 < float(t.max()) < 1.2
    assert abs(float(t.mean()) - 0.95) < 0.01  # uniform: the middle of the range
    assert torch.equal(soft_targets(3, 0.0, 0.0, torch.device("cpu")), torch.zeros(3))  # hard labels


def test_flip_with_probability_zero_draws_nothing() -> None:
    real, fake = torch.ones(6), torch.zeros(6)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    r, f = flip(real, fake, 0.0)
    assert torch.equal(torch.get_rng_state(), before)  # model A's runs are the same with and without the option
    assert r is real and f is fake


def test_flip_swaps_exactly_where_the_draw_is_below_p(monkeypatch) -> None:
    draws = torch.tensor([0.1, 0.5, 0.49, 0.9])
    monkeypatch.setattr(torch, "rand_like", lambda t: draws.clone())
    r, f = flip(torch.full((4,), 1.0), torch.full((4,), 0.0), 0.5)
    # u < p swaps, so a sample swaps with probability exactly p; u == p (0.5) does not
    assert r.tolist() == [0.0, 1.0, 0.0, 1.0] and f.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_instance_noise_reaches_zero_at_the_last_step_of_a_two_step_run() -> None:
    assert noise_sigma(0.2, 0, 2) == 0.2
    assert noise_sigma(0.2, 1, 2) == 0.0  # step 1 is the last of 2
    assert noise_sigma(0.2, 0, 1) == 0.2  # a one-step run: sigma0, never a division by zero
    assert math.isclose(noise_sigma(0.2, 1, 5), 0.15)  # 0.2 * (1 - 1/4)


# --- stop rules -----------------------------------------------------------------------------------------


def trainer(**cfg) -> GANTrainer:
    """A GANTrainer with only what stop_reason reads: its config's rule keys and the strike counters."""
    t = GANTrainer.__new__(GANTrainer)
    base = {"d_won_fake": 0.1, "d_won_loss": 0.3, "collapse_diversity": 0.05, "patience": 2, "rules_after": 10}
    t.cfg = SimpleNamespace(**{**base, **cfg})
    t.strikes = {"d_wins": 0, "collapse": 0}
    return t


def won(**kw) -> dict:
    return {"epoch": 1, "d_fake": 0.05, "loss_d": 0.2, "diversity": 0.5, **kw}


def test_discriminator_won_needs_patience_evaluations_in_a_row_and_says_why() -> None:
    t = trainer()
    assert t.stop_reason(won()) is None
    assert t.strikes == {"d_wins": 1, "collapse": 0}
    assert t.stop_reason(won(loss_d=0.25, d_fake=0.0625)) == (
        "diverged: discriminator won (D(G(z)) 0.062 < 0.1, D loss 0.250 < 0.3 at 2 evaluations in a row)")
    assert t.strikes == {"d_wins": 2, "collapse": 0}


def test_discriminator_won_strikes_reset_on_an_evaluation_that_is_not_won() -> None:
    t = trainer(patience=3)
    assert t.stop_reason(won()) is None and t.stop_reason(won()) is None
    assert t.stop_reason(won(d_fake=0.5)) is None  # D no longer wins: back to zero
    assert t.strikes["d_wins"] == 0
    assert t.stop_reason(won()) is None and t.stop_reason(won()) is None
    assert t.stop_reason(won()).startswith("diverged: discriminator won")


@pytest.mark.parametrize("m, is_won", [
    (won(d_fake=0.1), False),  # at the threshold: not below it
    (won(loss_d=0.3), False),
    (won(d_fake=0.099, loss_d=0.299), True),
    (won(d_fake=0.5), False),  # both conditions must hold
    (won(loss_d=0.5), False),
])
def test_discriminator_won_is_both_strictly_below(m, is_won) -> None:
    t = trainer(patience=1)
    assert (t.stop_reason(m) is not None) == is_won
    assert t.strikes["d_wins"] == int(is_won)


def test_discriminator_won_defaults_for_a_missing_metric() -> None:
    # a missing d_fake or loss_d counts as 1.0: with a loss threshold above 1, a missing loss still counts a strike
    # (patience 2: the strike is counted, the message, which names both values, is not reached)
    t = trainer(d_won_loss=1.5)
    assert t.stop_reason({"epoch": 1, "d_fake": 0.0, "diversity": 1.0}) is None and t.strikes["d_wins"] == 1
    t = trainer(d_won_loss=1.5)
    assert t.stop_reason({"epoch": 1, "loss_d": 0.0, "diversity": 1.0}) is None and t.strikes["d_wins"] == 0
    t = trainer(d_won_fake=1.0)
    assert t.stop_reason({"epoch": 1, "loss_d": 0.0, "diversity": 1.0}) is None and t.strikes["d_wins"] == 0


def test_mode_collapse_applies_only_after_rules_after_epochs_and_needs_patience() -> None:
    t = trainer(rules_after=3)
    low = {"d_fake": 0.5, "loss_d": 1.0, "diversity": 0.01}
    assert t.stop_reason({**low, "epoch": 2}) is None and t.stop_reason({**low, "epoch": 3}) is None
    assert t.strikes == {"d_wins": 0, "collapse": 0}  # epoch 3 is not after rules_after = 3
    assert t.stop_reason({**low, "epoch": 4}) is None
    assert t.strikes == {"d_wins": 0, "collapse": 1}
    assert t.stop_reason({**low, "epoch": 5}) == "mode collapse"
    assert t.strikes == {"d_wins": 0, "collapse": 2}


def test_mode_collapse_strikes_reset_and_the_threshold_is_strict() -> None:
    t = trainer(rules_after=0, patience=2)
    assert t.stop_reason({"epoch": 1, "diversity": 0.01}) is None
    assert t.stop_reason({"epoch": 2, "diversity": 0.05}) is None  # at the threshold: not collapsed
    assert t.strikes["collapse"] == 0
    assert t.stop_reason({"epoch": 3, "diversity": 0.04}) is None
    assert t.stop_reason({"epoch": 4, "diversity": 0.0}) == "mode collapse"


def test_is_failure() -> None:
    assert is_failure("diverged: loss_d is not finite") is True
    assert is_failure("diverged: discriminator won (...)") is True
    assert is_failure("mode collapse") is True
    for reason in (None, "", "completed", "stopped by ASHA", "mode", "Diverged"):
        assert is_failure(reason) is False, reason


def test_check_finite_names_the_first_non_finite_loss() -> None:
    check_finite(a=torch.tensor(1.0), b=torch.tensor(-3.0))  # finite: nothing
    with pytest.raises(Diverged, match=r"^diverged: loss_g is not finite$"):
        check_finite(loss_d=torch.tensor(0.5), loss_g=torch.tensor(float("nan")), loss_x=torch.tensor(float("inf")))
    with pytest.raises(Diverged, match=r"^diverged: loss_d is not finite$"):
        check_finite(loss_d=torch.tensor(float("-inf")), loss_g=torch.tensor(1.0))
