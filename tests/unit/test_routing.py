"""The router a cycle builds (consolidator/routing.py), with the real sentence embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reverie.consolidator.routing import cycle_router
from reverie.consolidator.transfer import echo_questions
from reverie.memory.buffer import Buffer
from reverie.memory.config import RouterSettings
from reverie.memory.experience import make_experience

COFFEE = "The user prefers oat milk in their coffee and never drinks coffee after 4 pm."
RENT = "My landlord is called Teodor Vasquez and rent is due on the 3rd."


def build(tmp_path: Path, embedder: Any, held_out: set[str], text: str = COFFEE) -> Any:
    buffer = Buffer(tmp_path / "b", dim=embedder.dim, embedder_name=embedder.name)
    try:
        fact = make_experience(text, tenant="t", id="fact")
        return cycle_router(
            embedder, RouterSettings(), buffer, "t", [fact], [], [], held_out=held_out
        )
    finally:
        buffer.close()


def test_the_questions_a_fact_answers_are_keys_except_the_held_out_ones(
    tmp_path: Path, embedder: Any
) -> None:
    echoes = echo_questions(RENT)
    assert len(echoes) >= 2
    router = build(tmp_path, embedder, {echoes[0]}, RENT)
    exact = router.scores(np.asarray(embedder.embed(echoes), np.float32)) > 0.9999
    assert [q for q, k in zip(echoes, exact, strict=True) if k] == echoes[1:]


def test_echo_keys_route_a_question_that_a_general_negative_would_take(
    tmp_path: Path, embedder: Any
) -> None:
    """The case that motivated them: by topic this question is nearer to "What does the word
    milk mean?" than to the fact itself."""
    question = np.asarray(
        embedder.embed(["What kind of milk does the user take in coffee?"]), np.float32
    )
    router = build(tmp_path, embedder, set())
    assert router.routes(question)[0]
    assert not build(tmp_path, embedder, set(echo_questions(COFFEE))).routes(question)[0]
