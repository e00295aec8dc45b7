"""The retry recipe: gentler after a locality rejection, stronger after any other."""

from __future__ import annotations

import pytest

from reverie.consolidator.config import ConsolidationSettings, TrainSettings
from reverie.consolidator.retry import retry_plan

TRAIN = TrainSettings(lr=1e-3, epochs=4)
CONS = ConsolidationSettings(
    replay_ratio=0.5,
    anchor_ratio=1.0,
    retry_epochs_factor=1.5,
    retry_replay_factor=2.0,
    retry_lr_factor=0.5,
)


@pytest.mark.parametrize("locality_failed", [False, True])
def test_first_try_is_the_configured_recipe(locality_failed: bool) -> None:
    plan = retry_plan(TRAIN, CONS, 0, locality_failed=locality_failed)
    assert (plan.train, plan.replay_ratio, plan.anchor_ratio) == (TRAIN, 0.5, 1.0)


@pytest.mark.parametrize(("attempt", "lr", "anchors"), [(1, 5e-4, 2.0), (2, 2.5e-4, 4.0)])
def test_after_a_locality_rejection_lr_falls_and_anchors_grow(
    attempt: int, lr: float, anchors: float
) -> None:
    plan = retry_plan(TRAIN, CONS, attempt, locality_failed=True)
    assert plan.train.lr == pytest.approx(lr)
    assert plan.anchor_ratio == anchors
    assert plan.train.epochs == 4 and plan.replay_ratio == 0.5


@pytest.mark.parametrize(("attempt", "epochs", "replay"), [(1, 6, 1.0), (2, 9, 2.0)])
def test_after_another_rejection_training_is_longer_with_more_replay(
    attempt: int, epochs: int, replay: float
) -> None:
    plan = retry_plan(TRAIN, CONS, attempt, locality_failed=False)
    assert plan.train.epochs == epochs and plan.replay_ratio == replay
    assert plan.train.lr == 1e-3 and plan.anchor_ratio == 1.0


def test_the_lr_factor_is_validated() -> None:
    with pytest.raises(ValueError, match="retry_lr_factor"):
        ConsolidationSettings(retry_lr_factor=2.0)


@pytest.mark.parametrize(
    ("rebase", "attempt", "locality_failed", "expected"),
    [
        ("on_retry", 0, False, False),  # a first try builds on the current version
        ("on_retry", 1, True, True),
        ("on_retry", 2, False, True),  # also after a rebase refused for efficacy
        ("never", 2, True, False),
        ("always", 0, False, True),
        ("always", 1, False, True),
    ],
)
def test_a_rebase_is_a_retry_with_on_retry_and_every_cycle_with_always(
    rebase: str, attempt: int, locality_failed: bool, expected: bool
) -> None:
    cons = CONS.model_copy(update={"rebase": rebase})
    assert retry_plan(TRAIN, cons, attempt, locality_failed=locality_failed).rebase is expected


def test_the_rebase_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="rebase"):
        ConsolidationSettings(rebase="sometimes")  # type: ignore[arg-type]


def test_no_rebase_by_default() -> None:
    assert not retry_plan(TRAIN, ConsolidationSettings(), 2, locality_failed=True).rebase
