"""The throughput benchmark's step profile on a tiny model: FLOPs are counted, time is split into
shares of one profiled step, and the loop's own labels appear."""

from __future__ import annotations

from typing import Any

import pytest

from reverie.benchmarks.throughput import (
    KINDS,
    PRECISION_SCHEMES,
    _kind,
    precision_drift,
    profile_step,
)


def test_profile_step_counts_flops_and_splits_the_time(tiny_base: Any) -> None:
    step = profile_step(tiny_base, 1, "bfloat16", "eager", steps=1)
    assert step["precision"] == "bfloat16" and step["attention"] == "eager"
    assert tiny_base.model.config._attn_implementation == "sdpa"  # as loaded, afterwards
    assert step["tokens"] > 0 and step["gflop_per_token"] > 0 and step["step_seconds"] > 0
    assert 0 <= step["padding_share"] < 0.5  # a length-bucketed batch pads little
    assert set(step["kind_shares"]) == set(KINDS)
    assert sum(step["kind_shares"].values()) == pytest.approx(1.0, abs=0.01)
    assert set(step["label_shares"]) == {"body", "lm_head", "loss", "backward", "optimizer"}


def test_operators_are_grouped_by_kind() -> None:
    assert _kind("aten::mm") == "matmul"
    assert _kind("aten::_softmax") == "attention"
    assert _kind("aten::_to_copy") == "copies"
    assert _kind("aten::silu_backward") == "elementwise"
    assert _kind("aten::embedding") == "other"


def test_precision_drift_compares_every_bfloat16_scheme_with_float32(tiny_base: Any) -> None:
    drift = precision_drift(tiny_base)
    assert set(drift) == set(PRECISION_SCHEMES)
    for scheme in drift.values():
        assert scheme["kl"] >= 0 and -1 <= scheme["adapter_effect_cosine"] <= 1
    # rounding only the weights moves the student least; both roundings more than either
    assert drift["weights_only"]["kl"] <= drift["frozen"]["kl"]
    assert drift["inputs_only"]["kl"] <= drift["frozen"]["kl"]
    assert not any(hasattr(m, "_reverie_low") for m in tiny_base.model.modules())
