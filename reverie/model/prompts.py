"""Rendering prompts: one format for the teacher, the student, the probes and serving.

The teacher sees the experience in the user turn (``Context: ...\\nQuestion: ...``, the best
format measured for SmolLM2); the student sees only the question. Rendering goes to text, then
to token ids with ``add_special_tokens=False``: transformers 5's ``apply_chat_template`` returns a
BatchEncoding when asked to tokenize, and the text path keeps train and serve identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reverie.model.config import ModelSettings

__all__ = ["Message", "context_prompt", "encode", "render"]

Message = dict[str, str]


def context_prompt(context: str, question: str) -> str:
    """The user turn of the teacher: the experience, then the question."""
    return f"Context: {context}\nQuestion: {question}"


def render(tokenizer: Any, messages: Sequence[Message], settings: ModelSettings) -> str:
    """Render a conversation up to the start of the assistant's reply."""
    messages = list(messages)
    if settings.system_prompt is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": settings.system_prompt}, *messages]
    if settings.chat_format == "template":
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(text)
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def render_user(tokenizer: Any, user: str, settings: ModelSettings) -> str:
    return render(tokenizer, [{"role": "user", "content": user}], settings)


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
