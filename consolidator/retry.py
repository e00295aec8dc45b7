"""How a rejected cycle is retried: a pure function from the attempt and the last rejection
to the recipe of the next try.

A cycle the gate rejected for *locality* (unrelated answers changed) is retried gentler: a
lower learning rate and more anchors, the same epochs. A cycle rejected for *efficacy* or
*retention* is retried stronger: more epochs and more replay. Training longer after a locality
rejection would only move the adapter further from the base model.

A candidate trains on top of the current version, so the drift of every version before it stays
in it. With ``consolidation.rebase`` = "on_retry" a retry starts from a fresh adapter and replays
every consolidated item instead: the drift of one training run, not of the lineage's runs added
up (though it still grows with what that run holds: README, Results). It rebases whatever the
last rejection was: a retry on top after a rebase refused for efficacy would carry the lineage's
drift again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reverie.consolidator.config import ConsolidationSettings, TrainSettings

__all__ = ["RetryPlan", "retry_plan"]


@dataclass(frozen=True)
class RetryPlan:
    train: TrainSettings
    replay_ratio: float
    anchor_ratio: float
    rebase: bool = False  # a fresh adapter over every consolidated item (all replayed)


def retry_plan(
    train: TrainSettings,
    consolidation: ConsolidationSettings,
    attempt: int,
    *,
    locality_failed: bool,
) -> RetryPlan:
    """The recipe for try number ``attempt + 1`` (``attempt`` = rejections so far)."""
    c = consolidation
    if attempt <= 0:
        return RetryPlan(train, c.replay_ratio, c.anchor_ratio, rebase=c.rebase == "always")
    rebase = c.rebase != "never"
    if locality_failed:
        gentler = train.model_copy(update={"lr": train.lr * c.retry_lr_factor**attempt})
        return RetryPlan(
            gentler,
            c.replay_ratio,
            c.anchor_ratio * c.retry_replay_factor**attempt,
            rebase=rebase,
        )
    epochs = math.ceil(train.epochs * c.retry_epochs_factor**attempt)
    return RetryPlan(
        train.model_copy(update={"epochs": epochs}),
        c.replay_ratio * c.retry_replay_factor**attempt,
        c.anchor_ratio,
        rebase=rebase,
    )
