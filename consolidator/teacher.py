"""The teacher stage: the model *with* the experience in context answers, and its answers become
the student's targets.

* :func:`teacher_answers` — greedy answers to the transfer candidates (experience in context);
* :func:`accept` — the grounding filter: keep what the teacher answered from the text;
* :class:`AnchorCache` — anchor prompts with the base model's own answers, cached per base model
  and prompt format (trained towards, so unrelated behaviour stays put);
* :func:`teacher_targets` — the teacher's top-k distribution along each answer;
* :func:`fact_examples`, :func:`anchor_examples` — items tokenised, with their targets, for
  training.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import random
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from reverie.consolidator.config import TransferSettings
from reverie.consolidator.distill import TeacherTargets, answer_positions, right_padded
from reverie.consolidator.items import TransferItem
from reverie.consolidator.spans import content_words, grounding, key_spans
from reverie.consolidator.train import Example
from reverie.memory.files import atomic_write_bytes, read_keyed, write_keyed
from reverie.model.base import BaseModel, lm_parts
from reverie.model.config import ModelSettings
from reverie.model.generate import generate_ids, prefix_cache, prefix_groups
from reverie.model.metrics import normalize
from reverie.model.prompts import encode, render_user

__all__ = [
    "ANCHORS_FILE",
    "AnchorCache",
    "accept",
    "anchor_examples",
    "answer_confidence",
    "fact_examples",
    "informative",
    "prompt_ids",
    "teacher_answers",
    "teacher_targets",
]

logger = logging.getLogger(__name__)

ANCHORS_FILE = Path(__file__).resolve().parent / "data" / "anchors.json"
ANCHOR_MAX_NEW_TOKENS = 32


# -- answers and grounding ---------------------------------------------------------------------
def teacher_answers(
    base: BaseModel,
    fmt: ModelSettings,
    teacher: Any,
    candidates: Sequence[TransferItem],
    max_new_tokens: int,
) -> list[TransferItem]:
    """``candidates`` with the teacher's greedy answers (in order). Verbatim items need no
    teacher: their answer is the experience text, end token appended."""
    tok = base.tokenizer
    to_answer = [c for c in candidates if c.strategy != "verbatim"]
    answers = generate_ids(
        teacher,
        [encode(tok, render_user(tok, c.teacher, fmt)) for c in to_answer],
        eos_id=base.eos_id,
        pad_id=base.pad_id,
        max_new_tokens=max_new_tokens,
        device=base.device,
    )
    by_item = {
        id(c): replace(c, answer_ids=ids, answer=tok.decode(ids, skip_special_tokens=True).strip())
        for c, ids in zip(to_answer, answers, strict=True)
    }
    return [
        by_item[id(c)]
        if id(c) in by_item
        else replace(c, answer_ids=[*encode(tok, c.answer), base.eos_id])
        for c in candidates
    ]


def informative(answer: str, question: str, text: str) -> bool:
    """The answer states a word of the text that the question did not already contain."""
    source, asked = set(content_words(text)), set(content_words(question))
    return any(w in source and w not in asked for w in content_words(answer))


def accept(item: TransferItem, text: str, ended: bool, settings: TransferSettings) -> bool:
    """Grounding filter: the teacher finished its answer, the answer's content words come from
    the text, and it carries something from the text: the span its prompt asked for, another
    answer-like span of the experience, or a word of the text the question did not contain."""
    if item.strategy == "verbatim":
        return True
    if not ended or not item.answer.strip():
        return False
    if grounding(item.answer, text) < settings.min_grounding:
        return False
    answer = normalize(item.answer)
    if item.target is not None and normalize(item.target) in answer:
        return True
    return any(k in answer for k in key_spans(text)) or informative(item.answer, item.student, text)


# -- anchors -----------------------------------------------------------------------------------
def anchor_prompts() -> list[str]:
    """The shipped anchor prompts (generic requests, disjoint from the control questions)."""
    prompts: list[str] = json.loads(ANCHORS_FILE.read_text())["prompts"]
    return prompts


class AnchorCache:
    """Anchor prompts with the base model's own answers, cached in ``path`` per prompt format
    and generated only for prompts not seen before."""

    def __init__(self, base: BaseModel, fmt: ModelSettings, path: Path) -> None:
        self.base, self.fmt, self.path = base, fmt, path
        self.targets_path = path.with_name(path.stem + "_targets.pt")

    def targets(
        self, model: Any, items: Sequence[TransferItem], top_k: int
    ) -> list[TeacherTargets]:
        """The base model's top-k targets along each anchor's answer (``model``'s adapter off),
        computed once per base model, prompt format and k: the same every cycle, and about half
        of the teacher stage when recomputed."""
        key = json.dumps([self.fmt.answers_key(), top_k], sort_keys=True)
        cached: dict[str, tuple[list[int], torch.Tensor, torch.Tensor]] = {}
        if self.targets_path.exists():
            try:
                blob = torch.load(self.targets_path, map_location="cpu", weights_only=True)
                cached = blob["targets"] if blob.get("key") == key else {}
            except (RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as err:
                logger.warning(
                    "recomputing unreadable anchor targets %s: %s", self.targets_path, err
                )
        fresh = [
            i for i in items if i.student not in cached or cached[i.student][0] != i.answer_ids
        ]
        if fresh:
            computed = _base_targets(self.base, self.fmt, model, fresh, top_k)
            for item, t in zip(fresh, computed, strict=True):
                cached[item.student] = (list(item.answer_ids), t.ids, t.logp)
            buffer = io.BytesIO()
            torch.save({"key": key, "targets": cached}, buffer)
            atomic_write_bytes(self.targets_path, buffer.getvalue())
        return [TeacherTargets(cached[i.student][1], cached[i.student][2]) for i in items]

    def items(self, n: int, rng: random.Random, model: Any = None) -> list[TransferItem]:
        """``n`` anchor prompts (a sample drawn from ``rng``) with the base model's answers
        (generated by ``model`` with its adapter switched off, when one is attached)."""
        if n <= 0:
            return []
        prompts = anchor_prompts()
        chosen = rng.sample(prompts, min(n, len(prompts)))
        key = self.fmt.answers_key()
        answers: dict[str, list[int]] = read_keyed(self.path, key) or {}
        missing = [p for p in chosen if p not in answers]
        if missing:
            off = model.disable_adapter() if model is not None else nullcontext()
            tok = self.base.tokenizer
            with off:
                generated = generate_ids(
                    model or self.base.model,
                    [encode(tok, render_user(tok, p, self.fmt)) for p in missing],
                    eos_id=self.base.eos_id,
                    pad_id=self.base.pad_id,
                    max_new_tokens=ANCHOR_MAX_NEW_TOKENS,
                    device=self.base.device,
                )
            answers.update(zip(missing, generated, strict=True))
            write_keyed(self.path, key, answers)
        # An answer cut at 32 tokens is kept: the KL along its first 32 tokens still holds the
        # adapter to the base model there (most generic answers run longer than that).
        tok = self.base.tokenizer
        return [
            TransferItem(
                "",
                "anchor",
                p,
                p,
                answer=tok.decode(answers[p], skip_special_tokens=True),
                answer_ids=list(answers[p]),
            )
            for p in chosen
            if answers[p]
        ]


# -- targets -----------------------------------------------------------------------------------
def answer_confidence(targets: TeacherTargets, answer_ids: Sequence[int]) -> float:
    """The teacher's mean probability of each answer token (0 where it is outside the top-k).

    Example: top-2 ids [[5, 7], [9, 5]] with probabilities [[.8, .1], [.6, .3]] and answer
    [5, 5] -> (0.8 + 0.3) / 2 = 0.55.
    """
    if not answer_ids:
        return 0.0
    answer = torch.tensor(list(answer_ids), dtype=targets.ids.dtype)[:, None]
    hit = targets.ids == answer
    probs = (targets.logp.float().exp() * hit).sum(-1)
    return float(probs.mean())


@torch.no_grad()
def teacher_targets(
    model: Any,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    pad_id: int,
    top_k: int = 64,
    batch_size: int = 64,
    device: torch.device | None = None,
    hidden_layers: Sequence[int] = (),
) -> list[TeacherTargets]:
    """Run the teacher on ``prompt + answer`` for every item and keep its top-k
    log-probabilities where it predicts each answer token, and its hidden states there at
    ``hidden_layers`` (indices into ``hidden_states``; none by default).

    Items are sorted so that prompts sharing a prefix (the chat header and the experience, for
    the dozen items of one experience) are neighbours; each run of them computes that prefix
    once, then every item's rest of the prompt and its answer (right-padded) on top of it."""
    device = device or torch.device("cpu")
    layers = list(hidden_layers)
    out: list[TeacherTargets | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))
    body, head = lm_parts(model)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for shared, members in prefix_groups([prompts[i] for i in idx]):
            items = [idx[m] for m in members]
            cache = prefix_cache(model, prompts[items[0]][:shared], len(items), device)
            tails = [list(prompts[i][shared:]) + list(answers[i]) for i in items]
            ids, tail_mask = right_padded(tails, pad_id)
            mask = torch.cat([tail_mask.new_ones((len(items), shared)), tail_mask], dim=1)
            positions = shared + torch.arange(ids.shape[1]).expand(len(items), -1)
            result = body(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                cache=cache if shared else None,
                use_cache=bool(shared),
                output_hidden_states=bool(layers),
            )
            hidden = result.last_hidden_state
            for row, i in enumerate(items):
                pos = answer_positions(len(prompts[i]) - shared, len(answers[i])).to(device)
                logp = torch.log_softmax(head(hidden[row, pos]).float(), dim=-1)
                values, indices = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
                states = None
                if layers:
                    picked = [result.hidden_states[layer][row, pos] for layer in layers]
                    states = torch.stack(picked, dim=1).to(torch.float16).cpu()
                out[i] = TeacherTargets(
                    indices.to(torch.int32).cpu(), values.to(torch.float16).cpu(), states
                )
    return [t for t in out if t is not None]


def prompt_ids(base: BaseModel, fmt: ModelSettings, item: TransferItem, who: str) -> list[int]:
    """The teacher's or the student's prompt of ``item``. Plain-text items: the teacher's
    prompt is the context, the student's is empty (an end token)."""
    tok = base.tokenizer
    text = item.teacher if who == "teacher" else item.student
    if item.raw:
        return [base.eos_id, *encode(tok, text)] if who == "teacher" else [base.eos_id]
    return encode(tok, render_user(tok, text, fmt))


def _targets(
    base: BaseModel,
    fmt: ModelSettings,
    model: Any,
    group: Sequence[TransferItem],
    top_k: int,
    hidden_layers: Sequence[int] = (),
) -> list[TeacherTargets]:
    return teacher_targets(
        model,
        [prompt_ids(base, fmt, i, "teacher") for i in group],
        [i.answer_ids for i in group],
        pad_id=base.pad_id,
        top_k=top_k,
        device=base.device,
        hidden_layers=hidden_layers,
    )


def fact_examples(
    base: BaseModel,
    fmt: ModelSettings,
    teacher: Any,
    items: Sequence[TransferItem],
    *,
    top_k: int,
    min_confidence: float,
    hidden_layers: Sequence[int] = (),
    context_share: float = 0.0,
    seed: int = 0,
) -> list[Example]:
    """Fact and replay items tokenised, with the targets of ``teacher`` (the current adapter,
    none on a rebase; experience in context), its hidden states at ``hidden_layers`` included.
    Items the teacher gives with a mean probability under ``min_confidence`` are dropped (its
    own greedy answers usually pass; a forced verbatim text or an old replayed answer may not
    any more).

    ``context_share`` of this cycle's kept items that answer a question (a seeded sample; a
    verbatim item's twin would copy the text from its own prompt, and a replayed item no longer
    says whether it was one) come a second time with the teacher's prompt, experience in
    context, as the student's: towards the same targets, the adapter learns to leave in-context
    answers as they were."""
    targets = _targets(base, fmt, teacher, items, top_k, hidden_layers)
    kept = [
        (i, t)
        for i, t in zip(items, targets, strict=True)
        if answer_confidence(t, i.answer_ids) >= min_confidence
    ]
    examples = [
        Example(
            prompt_ids(base, fmt, i, "student"),
            list(i.answer_ids),
            t,
            kind="replay" if i.strategy == "replay" else "fact",
        )
        for i, t in kept
    ]
    answered = [(i, t) for i, t in kept if i.strategy not in ("verbatim", "replay")]
    if context_share > 0 and answered:
        chosen = random.Random(seed).sample(answered, round(context_share * len(answered)))
        examples += [
            Example(prompt_ids(base, fmt, i, "teacher"), list(i.answer_ids), t, kind="context")
            for i, t in chosen
        ]
    if len(kept) < len(items):
        logger.info(
            "dropped %d items the teacher gives with mean probability < %.2f",
            len(items) - len(kept),
            min_confidence,
        )
    return examples


def anchor_examples(
    base: BaseModel,
    fmt: ModelSettings,
    model: Any,
    anchors: Sequence[TransferItem],
    *,
    top_k: int,
    weight: float,
    cache: AnchorCache | None = None,
    answer_tokens: int | None = None,
) -> list[Example]:
    """Anchor items tokenised, with the base model's targets (``model``'s adapter off), along
    the first ``answer_tokens`` tokens of each answer (None = all). They depend on the base
    model alone, so ``cache`` keeps them between cycles."""
    targets = (
        cache.targets(model, anchors, top_k)
        if cache is not None
        else _base_targets(base, fmt, model, anchors, top_k)
    )
    n = answer_tokens
    return [
        Example(
            prompt_ids(base, fmt, a, "student"),
            list(a.answer_ids[:n]),
            TeacherTargets(t.ids[:n], t.logp[:n], None if t.hidden is None else t.hidden[:n]),
            kind="anchor",
            weight=weight,
        )
        for a, t in zip(anchors, targets, strict=True)
    ]


def _base_targets(
    base: BaseModel, fmt: ModelSettings, model: Any, items: Sequence[TransferItem], top_k: int
) -> list[TeacherTargets]:
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    with off:
        return _targets(base, fmt, model, items, top_k)
