"""Prefix adapters on a tiny random Llama: a prefix started from a text answers as the model
with that text before the prompt; rows of one batch carry their own prefix or none; only the
trained part learns; saved and loaded, the same prefix."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from reverie.model.base import lm_parts
from reverie.model.generate import generate_ids
from reverie.model.prefix import (
    KVPrefix,
    PrefixModel,
    adapter_kind,
    install,
    installed,
    prefix_from_ids,
    uninstall,
)

pytestmark = pytest.mark.unit

TEXT = "Mateo keeps bees behind the old mill and sells their honey in town on Fridays."


def _ids(base: Any, text: str) -> list[int]:
    return list(base.tokenizer(text)["input_ids"])


def _logits(model: Any, ids: list[list[int]], mask: torch.Tensor | None = None) -> torch.Tensor:
    body, head = lm_parts(model)
    width = max(map(len, ids))
    batch = torch.tensor([[0] * (width - len(r)) + r for r in ids])
    if mask is None:
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        out = body(input_ids=batch, attention_mask=mask, position_ids=positions)
    return head(out.last_hidden_state)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_installed_without_a_prefix_changes_nothing(tiny_base: Any, attention: str) -> None:
    model = tiny_base.model
    model.set_attn_implementation(attention)
    prompts = [_ids(tiny_base, "Who keeps bees?"), _ids(tiny_base, "Hi")]
    plain = _logits(model, prompts)
    slot = install(model)
    try:
        assert model.config._attn_implementation == f"prefix_{attention}"
        assert slot.active is None
        assert torch.equal(_logits(model, prompts), plain)
    finally:
        uninstall(model)
    assert model.config._attn_implementation == attention


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_prefix_from_a_text_is_that_text_before_it(tiny_base: Any, attention: str) -> None:
    model = tiny_base.model
    model.set_attn_implementation(attention)
    text = _ids(tiny_base, TEXT)
    prompt = _ids(tiny_base, "Who keeps bees? Where?")
    together = _logits(model, [text + prompt])[0, len(text) :]
    wrapped = PrefixModel(model, None)
    try:
        wrapped.start(text, tokens=len(text))
        assert wrapped.prefix is not None and wrapped.prefix.tokens == len(text)
        alone = _logits(wrapped, [prompt])[0]
        torch.testing.assert_close(alone, together, atol=1e-4, rtol=1e-4)
        with wrapped.disable_adapter():
            torch.testing.assert_close(_logits(wrapped, [prompt])[0], _logits(model, [prompt])[0])
    finally:
        wrapped.unload()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_rows_carry_their_own_prefix_or_none(tiny_base: Any, attention: str) -> None:
    model = tiny_base.model
    model.set_attn_implementation(attention)
    slot = install(model)
    try:
        a = prefix_from_ids(model, _ids(tiny_base, TEXT), tokens=12)
        b = prefix_from_ids(model, _ids(tiny_base, "The rent is due on Fridays."), tokens=5)
        prompts = [_ids(tiny_base, "Who keeps bees?"), _ids(tiny_base, "When is rent due?"), [7]]
        rows = [a, None, b]
        alone = []
        for prompt, prefix in zip(prompts, rows, strict=True):
            with slot.using(prefix):
                alone.append(_logits(model, [prompt])[0])
        with slot.using(rows):
            batch = _logits(model, prompts)  # left-padded: each row's real tokens at the end
        for r, prompt in enumerate(prompts):
            torch.testing.assert_close(batch[r, -len(prompt) :], alone[r], atol=1e-4, rtol=1e-4)
        plain = _logits(model, prompts[:1])[0]
        assert not torch.allclose(alone[0], plain, atol=1e-3)  # the prefix did something
        torch.testing.assert_close(alone[1], _logits(model, prompts[1:2])[0])
        with slot.using([a, None]), pytest.raises(ValueError, match="one per row"):
            _logits(model, prompts)
    finally:
        uninstall(model)


def test_generation_with_a_prefix_is_generation_after_its_text(tiny_base: Any) -> None:
    """The cached decoding loop (prefix shared by runs, rows leaving) sees the prefix at every
    step: its tokens are those of the plain model given the text before each prompt."""
    model = tiny_base.model
    text = _ids(tiny_base, TEXT)
    prompts = [_ids(tiny_base, q) for q in ("Who keeps bees?", "Who keeps bees? Where?", "Hi")]
    plain = generate_ids(
        model, [text + p for p in prompts], eos_id=-1, pad_id=tiny_base.pad_id, max_new_tokens=6
    )
    wrapped = PrefixModel(model, None)
    try:
        wrapped.start(text, tokens=len(text))
        ours = generate_ids(wrapped, prompts, eos_id=-1, pad_id=tiny_base.pad_id, max_new_tokens=6)
    finally:
        wrapped.unload()
    assert ours == plain


@pytest.mark.parametrize("extra", [-5, 4])
def test_a_text_is_cut_or_repeated_to_the_prefix_length(tiny_base: Any, extra: int) -> None:
    model = tiny_base.model
    text = _ids(tiny_base, TEXT)
    tokens = len(text) + extra
    prompt = _ids(tiny_base, "Who keeps bees?")
    filled = (text * 2)[:tokens]
    expected = _logits(model, [filled + prompt])[0, tokens:]
    wrapped = PrefixModel(model, None)
    try:
        wrapped.start(text, tokens=tokens)
        torch.testing.assert_close(_logits(wrapped, [prompt])[0], expected, atol=1e-4, rtol=1e-4)
    finally:
        wrapped.unload()


def test_unload_leaves_another_owners_wrapper_installed(tiny_base: Any) -> None:
    model = tiny_base.model
    slot = install(model)  # as the server does before a tenant's prefix model comes and goes
    try:
        PrefixModel(model, None).unload()
        assert installed(model) and install(model) is slot
    finally:
        uninstall(model)
    assert not installed(model)


def test_only_the_trained_tokens_learn_and_the_base_does_not(tiny_base: Any) -> None:
    wrapped = PrefixModel(tiny_base.model, None)
    try:
        wrapped.start(_ids(tiny_base, TEXT), tokens=8, frozen=1)
        trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
        assert trainable == ["prefix.trained"]
        body, head = lm_parts(wrapped)
        ids = torch.tensor([_ids(tiny_base, "Who keeps bees?")])
        loss = head(body(input_ids=ids).last_hidden_state).logsumexp(-1).mean()
        loss.backward()
        assert wrapped.prefix is not None
        grad = wrapped.prefix.trained.grad
        assert grad is not None and grad.abs().sum() > 0
        assert wrapped.prefix.frozen.grad is None
    finally:
        wrapped.unload()


def test_saved_and_loaded_the_same_prefix(tiny_base: Any, tmp_path: Any) -> None:
    wrapped = PrefixModel(tiny_base.model, None)
    try:
        wrapped.start(_ids(tiny_base, TEXT), tokens=6)
        wrapped.save_pretrained(str(tmp_path))
        assert adapter_kind(tmp_path) == "prefix" and adapter_kind(tmp_path.parent) == "lora"
        loaded = KVPrefix.load(tmp_path, tiny_base.model)
        assert wrapped.prefix is not None
        assert torch.equal(loaded.layer(1), wrapped.prefix.layer(1))
    finally:
        wrapped.unload()
    other = KVPrefix(layers=3, kv_heads=2, tokens=6, head_dim=8)
    other.save(tmp_path / "other")
    with pytest.raises(ValueError, match="another base model"):
        KVPrefix.load(tmp_path / "other", tiny_base.model)


def test_a_prefix_needs_a_trained_token() -> None:
    with pytest.raises(ValueError, match="frozen < tokens"):
        KVPrefix(layers=2, kv_heads=2, tokens=1, head_dim=8, frozen=1)
