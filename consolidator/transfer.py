"""Transfer sets: what the student learns from, built per experience, plus held-out probes.

The 135M base model cannot write useful questions, but with the experience in context it answers
them well, so *something else asks and the teacher answers*. Strategies (``transfer.strategies``):

* ``cloze``    "Complete the sentence: <prefix> ..." for prefixes that stop before an answer-like
               span (name, number, date, ...) and every few words (rules, deterministic);
* ``echo``     the sentence as a question, a span replaced by a wh-word (rules);
* ``qgen``     grammatical wh-questions about each clause's subject (rules, ``questions.py``);
* ``paraphrase`` questions the sentence answers with another span, or in other words: its
               subject ("Who borrowed the ladder?"), a passive's agent, a name both ways
               ("Who is Mateo?", "What is the user's son called?"; ``paraphrase.py``);
* ``recite``   "What do you know about <entity>?" for the experience's names and possessive
               phrases ("my landlord"), answered freely by the teacher;
* ``recall``   "What did I tell you about <entity>?" and other prompts that ask for what the
               user said (the teacher recites the experience instead of its own knowledge);
* ``verbatim`` the same cue prompts with the experience text itself as the answer;
* ``generated`` question-answer pairs written by a generator model with the experience in
               context (SELF-PARAM style; the teacher re-answers each question);
* ``continuation`` text the base model samples after the experience; the teacher sees the
               experience then the text, the student only the text (Padmanabhan et al.);
* ``split``    split-context self-distillation: the teacher sees the first sentences and the
               rest, the student only the rest.

The teacher answers the candidates (:mod:`consolidator.teacher`), whose grounding filter keeps an
answer only if the teacher finished it, its content words come from the experience, and it carries
something from the text that the question did not. Up to
``max_items_per_experience`` answered items are kept per experience, round-robin over strategies,
plus ``verbatim_per_experience`` verbatim items. A few *echo* questions per experience are held
out as probes and never trained on.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from typing import Any

from reverie.consolidator.config import TransferSettings
from reverie.consolidator.generator import generate_pairs
from reverie.consolidator.items import TransferItem, TransferSet
from reverie.consolidator.paraphrase import paraphrase_questions
from reverie.consolidator.probes import Probe, metadata_probes
from reverie.consolidator.questions import WH_BY_KIND, clause_subject, clauses, wh_questions
from reverie.consolidator.sampling import round_robin
from reverie.consolidator.spans import Span, sentences, spans
from reverie.consolidator.teacher import accept, teacher_answers
from reverie.memory.experience import Experience
from reverie.model.base import BaseModel
from reverie.model.config import ModelSettings
from reverie.model.metrics import normalize
from reverie.model.prompts import context_prompt, encode

__all__ = [
    "TransferItem",
    "TransferSet",
    "build_transfer_set",
    "cycle_transfer",
    "echo_questions",
    "rule_candidates",
]

logger = logging.getLogger(__name__)

_CUES = [
    "What do you know about {c}?",
    "Tell me about {c}.",
    "What do you remember about {c}?",
    "What can you tell me about {c}?",
]
# Prompts that ask for what the user said: the teacher, with the experience in context, then
# recites it more often than for "Tell me about <entity>", which invites the small teacher's own
# knowledge of the name (see README, the transfer stage, for the counts).
_RECALL = [
    "According to what you were told, what about {c}?",
    "What did I tell you about {c}?",
    "Remind me what I told you about {c}.",
    "What do I need to remember about {c}?",
]
_POSSESSIVE = re.compile(
    r"\b(?:[Mm]y|[Oo]ur|[Tt]he user's|[Yy]our|[Tt]he team's)\s+[a-z][\w-]*(?:\s+[a-z][\w-]*)?"
)
_VERBISH = re.compile(r"\s+(?:is|are|was|were|has|have|had|will|can|must|needs?|likes?|ships?)\b")


# -- rules (pure) ------------------------------------------------------------------------------
def _wh(span: Span, before: str) -> str:
    if span.kind == "number":
        if re.search(r"(?:st|nd|rd|th)$", span.text):
            return "which day"
        if re.fullmatch(r"1\d\d\d|20\d\d", span.text):
            return "what year"
        if re.search(r"\b(?:code|number|combination|pin|password|version|is)\s*$", before, re.I):
            return "what"
    if span.kind == "name" and (
        re.search(r"\b(?:called|named|by|with)\s*$", before)
        or span.text.startswith(("Dr.", "Mr.", "Mrs.", "Ms."))
    ):
        return "who"
    return WH_BY_KIND[span.kind]


def _echo(sentence: str, span: Span) -> str:
    before, after = sentence[: span.start], sentence[span.end :]
    question = f"{before}{_wh(span, before)}{after}".strip().rstrip(".;!")
    return question[0].upper() + question[1:] + "?"


def echo_questions(text: str) -> list[str]:
    """Every question the text answers with one of its spans, in the text's own words ("My
    landlord is called who and rent is due on the 3rd?"): the form held-out probes take."""
    return [_echo(s, sp) for s in sentences(text) or [text] for sp in spans(s)]


def _cloze(prefix: str) -> str:
    return f'Complete the sentence: "{prefix.strip()} ..."'


def _cues(text: str) -> list[str]:
    """What a user might ask about: generic possessive phrases first ("the user's cat", which
    questions use without the name), then clause subjects, then names."""
    parts = sentences(text) or [text]
    names = [s.text for sent in parts for s in spans(sent) if s.kind == "name"]
    possessives = []
    for m in _POSSESSIVE.finditer(text):
        phrase = _VERBISH.split(m.group(0))[0]
        possessives.append(phrase[0].lower() + phrase[1:])
    subjects = [
        subject
        for sent in parts
        for clause in clauses(sent)
        if (subject := clause_subject(clause)) is not None
    ]
    return list(dict.fromkeys(possessives + subjects + names))


def rule_candidates(
    experience: Experience, settings: TransferSettings, rng: random.Random
) -> tuple[list[TransferItem], list[Probe]]:
    """Candidate prompts from the experience's own sentences, and its held-out probes.

    Echo questions are held out for probes even when the experience brings its own probes
    (which then replace them): training on them instead was measured (benchmarks/results/
    recipes/echo.json) to recall no more held-out questions, to change locality answers, and to
    lose the one fact the SmolLM2 serving test asks about."""
    text = experience.text
    eid = experience.id
    on = set(settings.strategies)
    pairs: list[tuple[str, Span]] = [(s, sp) for s in sentences(text) or [text] for sp in spans(s)]
    rng.shuffle(pairs)
    held = pairs[: settings.probes_per_experience]
    probes = [Probe(eid, _echo(s, sp), (sp.text,), text) for s, sp in held]
    # Neither these nor the caller's probes are asked (a rule may write a caller's question
    # word for word); cycle_transfer drops any that still match, as the last guard.
    held_questions = {normalize(p.question) for p in probes + metadata_probes(experience)}
    out: list[TransferItem] = []

    def add(strategy: str, student: str, target: str | None = None) -> None:
        if normalize(student) not in held_questions:
            out.append(TransferItem(eid, strategy, student, context_prompt(text, student), target))

    for sentence in sentences(text) or [text]:
        sentence_spans = spans(sentence)
        if "cloze" in on:
            cuts = {sp.start: sp.text for sp in sentence_spans}
            words = sentence.split()
            position = 0
            for i, word in enumerate(words):
                if i >= 2 and i % settings.cloze_every == 0:
                    cuts.setdefault(position, word.strip(",.;:!?\"'"))
                position += len(word) + 1
            for cut, target in sorted(cuts.items()):
                prefix = sentence[:cut]
                if len(prefix.split()) >= 2:
                    add("cloze", _cloze(prefix), target)
        if "echo" in on:
            for sp in sentence_spans:
                add("echo", _echo(sentence, sp), sp.text)
        if "qgen" in on:
            for question in wh_questions(sentence):
                add("qgen", question)
        if "paraphrase" in on:
            for question in paraphrase_questions(sentence):
                add("paraphrase", question)
    cues = _cues(text)
    if "recite" in on:
        for cue in cues:
            for template in _CUES[:2]:
                add("recite", template.format(c=cue))
    if "recall" in on:
        for cue in cues:
            for template in _RECALL:
                add("recall", template.format(c=cue))
    if "verbatim" in on:
        # Cue-major order: every cue once before any repeats with another template.
        prompts = [t.format(c=c) for t in _CUES for c in cues] or [
            _CUES[0].format(c=" ".join(text.split()[:4]))
        ]
        asked = [p for p in prompts if normalize(p) not in held_questions]
        for prompt in asked[: settings.verbatim_per_experience]:
            out.append(
                TransferItem(eid, "verbatim", prompt, context_prompt(text, prompt), answer=text)
            )
    return out, probes


# -- selection -------------------------------------------------------------------------------
def _cap(items: list[TransferItem], limit: int, rng: random.Random) -> list[TransferItem]:
    """At most ``limit`` items per experience, round-robin over strategies for diversity."""
    by_exp: dict[str, dict[str, list[TransferItem]]] = {}
    for item in items:
        by_exp.setdefault(item.experience_id, {}).setdefault(item.strategy, []).append(item)
    kept: list[TransferItem] = []
    for strategies in by_exp.values():
        groups = list(strategies.values())
        for group in groups:
            rng.shuffle(group)
        kept += round_robin(groups, limit)
    return kept


def _dedupe(items: list[TransferItem]) -> list[TransferItem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for item in items:
        key = (item.experience_id, normalize(item.student))
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def build_transfer_set(
    base: BaseModel,
    fmt: ModelSettings,
    teacher: Any,
    experiences: Sequence[Experience],
    settings: TransferSettings,
    *,
    seed: int = 0,
    generated: dict[str, list[tuple[str, str]]] | None = None,
) -> TransferSet:
    """Candidates from every enabled strategy, answered by ``teacher`` with the experience in
    context, filtered for grounding, deduplicated and capped per experience.

    ``generated`` maps experience ids to generator-written (question, answer) pairs.
    """
    rng = random.Random(seed)
    texts = {e.id: e.text for e in experiences}
    candidates: list[TransferItem] = []
    probes: list[Probe] = []
    for exp in experiences:
        items, held = rule_candidates(exp, settings, rng)
        candidates += _sample_candidates(items, settings.max_candidates_per_experience, rng)
        probes += held
    if "generated" in settings.strategies:
        for eid, pairs in (generated or {}).items():
            for question, gold in pairs:
                candidates.append(
                    TransferItem(
                        eid, "generated", question, context_prompt(texts[eid], question), gold
                    )
                )
    stats: dict[str, dict[str, int]] = {}
    for item in candidates:
        stats.setdefault(item.strategy, {"produced": 0, "kept": 0})["produced"] += 1

    # The teacher answers every chat prompt greedily, with the experience in context; the
    # grounding filter keeps what it answered from the text.
    answered = teacher_answers(base, fmt, teacher, candidates, settings.teacher_max_new_tokens)
    accepted = [
        c
        for c in answered
        if accept(
            c,
            texts[c.experience_id],
            ended=bool(c.answer_ids) and c.answer_ids[-1] == base.eos_id,
            settings=settings,
        )
    ]
    accepted += raw_items(base, experiences, settings, rng)
    for item in accepted:
        if item.strategy not in stats:
            stats[item.strategy] = {"produced": 0, "kept": 0}
        if item.raw:
            stats[item.strategy]["produced"] += 1
    verbatim = [c for c in accepted if c.strategy == "verbatim"]
    answered = [c for c in accepted if c.strategy != "verbatim"]
    kept = _cap(_dedupe(answered), settings.max_items_per_experience, rng) + verbatim
    for item in kept:
        stats[item.strategy]["kept"] += 1
    logger.info(
        "transfer set: %s",
        ", ".join(f"{k} {v['kept']}/{v['produced']}" for k, v in sorted(stats.items())),
    )
    return TransferSet(kept, probes, stats)


def _sample_candidates(
    items: list[TransferItem], budget: int, rng: random.Random
) -> list[TransferItem]:
    """At most ``budget`` of the items the teacher must answer (a seeded sample, in their
    order); verbatim items need no teacher and are all kept. 0 keeps everything."""
    ask = [i for i, item in enumerate(items) if item.strategy != "verbatim"]
    if budget <= 0 or len(ask) <= budget:
        return items
    drop = set(ask) - set(rng.sample(ask, budget))
    return [item for i, item in enumerate(items) if i not in drop]


def raw_items(
    base: BaseModel,
    experiences: Sequence[Experience],
    settings: TransferSettings,
    rng: random.Random,
) -> list[TransferItem]:
    """Plain-text items: sampled continuations of each experience and split-context pairs.
    The answer is the text itself (its ids without an end token: the text goes on)."""
    out: list[TransferItem] = []
    if "split" in settings.strategies:
        for exp in experiences:
            parts = sentences(exp.text)
            for cut in range(1, len(parts)):
                prefix, rest = " ".join(parts[:cut]), " ".join(parts[cut:])
                out.append(
                    TransferItem(
                        exp.id,
                        "split",
                        rest,
                        prefix,
                        answer=rest,
                        answer_ids=encode(base.tokenizer, rest),
                        raw=True,
                    )
                )
    if "continuation" in settings.strategies and settings.continuations:
        import torch

        tok = base.tokenizer
        for exp in experiences:
            prompt = torch.tensor([encode(tok, exp.text + "\n")], device=base.device)
            with torch.no_grad():
                sampled = base.model.generate(
                    input_ids=prompt.repeat(settings.continuations, 1),
                    attention_mask=torch.ones_like(prompt).repeat(settings.continuations, 1),
                    do_sample=True,
                    temperature=0.8,
                    top_p=0.95,
                    max_new_tokens=32,
                    pad_token_id=base.pad_id,
                    generator=None,
                )[:, prompt.shape[1] :]
            for row in sampled.tolist():
                text = tok.decode(row, skip_special_tokens=True).strip()
                if len(text.split()) >= 4:
                    out.append(
                        TransferItem(
                            exp.id,
                            "continuation",
                            text,
                            exp.text + "\n",
                            answer=text,
                            answer_ids=encode(tok, text),
                            raw=True,
                        )
                    )
    return out


def cycle_transfer(
    base: BaseModel,
    fmt: ModelSettings,
    teacher: Any,
    experiences: Sequence[Experience],
    settings: TransferSettings,
    *,
    seed: int,
) -> tuple[TransferSet, list[Probe]]:
    """A cycle's transfer set and its held-out probes: the caller's probes where an experience
    carries them (``metadata["probes"]``), generated ones otherwise; no training item asks a
    held-out question."""
    generated = None
    if "generated" in settings.strategies:
        generated = generate_pairs(
            experiences, settings.generator, base=base, fmt=fmt, model=teacher
        )
    transfer = build_transfer_set(
        base, fmt, teacher, experiences, settings, seed=seed, generated=generated
    )
    by_exp: dict[str, list[Probe]] = {}
    for p in transfer.probes:
        by_exp.setdefault(p.experience_id, []).append(p)
    probes = [p for e in experiences for p in (metadata_probes(e) or by_exp.get(e.id, []))]
    return transfer.without_questions(p.question for p in probes), probes
