"""Question-answer pairs written by a generator model with the experience in context
(SELF-PARAM style), for the ``generated`` transfer strategy.

The generator only *asks*: the teacher re-answers every generated question from the experience,
and the grounding filter decides what is kept. Generators (``transfer.generator.kind``):

* ``base``    the base model itself (measured weak at 135M: about half a usable pair per
              experience, which is why ``generated`` is not among the default strategies);
* ``local``   another Hugging Face causal-LM directory, e.g. a larger instruct model on a GPU;
* ``openai``  any OpenAI-compatible chat endpoint (``url``, ``model``; key from ``api_key_env``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from reverie.consolidator.config import GeneratorSettings
from reverie.memory.errors import ReverieError
from reverie.memory.experience import Experience
from reverie.model.base import BaseModel, load_base
from reverie.model.config import ModelSettings
from reverie.model.generate import answer

__all__ = ["generate_pairs", "parse_pairs"]

logger = logging.getLogger(__name__)

_PAIR = re.compile(
    r"Q\s*\d*\s*[:.)]\s*(?P<q>.+?)\s*\n+\s*A\s*\d*\s*[:.)]\s*(?P<a>.+?)\s*(?=\n|$)", re.IGNORECASE
)


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``Q: ...`` / ``A: ...`` pairs from a generator's reply (numbering tolerated)."""
    pairs = []
    for m in _PAIR.finditer(text):
        question, reply = m.group("q").strip(), m.group("a").strip()
        if question.endswith("?") and reply:
            pairs.append((question, reply))
    return list(dict.fromkeys(pairs))


def _openai(settings: GeneratorSettings, prompts: Sequence[str]) -> list[str]:
    import httpx

    key = os.environ.get(settings.api_key_env, "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    out = []
    with httpx.Client(
        base_url=str(settings.url).rstrip("/"), headers=headers, timeout=120
    ) as client:
        for prompt in prompts:
            response = client.post(
                "/chat/completions",
                json={
                    "model": settings.model,
                    "temperature": settings.temperature,
                    "max_tokens": settings.max_new_tokens,
                    "messages": [{"role": "user", "content": prompt}],
                },
            )
            if response.status_code != 200:
                raise ReverieError(
                    f"generator endpoint {settings.url} answered "
                    f"{response.status_code}: {response.text[:200]}"
                )
            out.append(response.json()["choices"][0]["message"]["content"])
    return out


def generate_pairs(
    experiences: Sequence[Experience],
    settings: GeneratorSettings,
    *,
    base: BaseModel,
    fmt: ModelSettings,
    model: Any = None,
) -> dict[str, list[tuple[str, str]]]:
    """Per experience id, the (question, answer) pairs the generator wrote."""
    prompts = [settings.prompt.format(experience=e.text, n=settings.pairs) for e in experiences]
    if settings.kind == "openai":
        replies = _openai(settings, prompts)
    elif settings.kind == "local":
        generator = load_base(fmt.model_copy(update={"base": settings.path}), base.path.parent)
        replies = answer(generator, fmt, prompts, max_new_tokens=settings.max_new_tokens)
    elif settings.kind == "base":
        replies = answer(base, fmt, prompts, model=model, max_new_tokens=settings.max_new_tokens)
    else:
        return {}
    pairs = {e.id: parse_pairs(r) for e, r in zip(experiences, replies, strict=True)}
    logger.info(
        "generator %s wrote %d pairs for %d experiences",
        settings.kind,
        sum(map(len, pairs.values())),
        len(experiences),
    )
    return pairs
