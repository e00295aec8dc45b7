"""Settings sections owned by the consolidator (composed by ``reverie.settings.Settings``).

Pure pydantic: importing this module loads no model code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reverie.consolidator.gate import GateSettings
from reverie.memory.config import RouterSettings
from reverie.model.config import ModelSettings

__all__ = [
    "ConsolidationSettings",
    "ConsolidatorSettings",
    "DaemonSettings",
    "GeneratorSettings",
    "TrainSettings",
    "TransferSettings",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class TrainSettings(_Section):
    """How a cycle trains the tenant's LoRA adapter."""

    method: Literal["distill", "sft"] = Field(
        default="distill",
        description="distill = KL to the teacher (model with the experience in context) along "
        "its own answers; sft = cross-entropy on the same answers (the baseline).",
    )
    adapter: Literal["lora", "prefix"] = Field(
        default="lora",
        description="The kind of a tenant's first adapter (later versions keep their kind): "
        "lora = low-rank updates of the weights (peft); prefix = trained keys and values that "
        "every attention layer reads before the prompt (prefix tuning / Cartridges, "
        "reverie/model/prefix.py).",
    )
    adapter_by_tenant: dict[str, Literal["lora", "prefix"]] = Field(
        default_factory=dict,
        description="Tenants whose first adapter is of another kind than `adapter`, e.g. "
        '{"alice": "prefix"}.',
    )
    prefix_tokens: int = Field(
        default=128, ge=2, le=4096, description="Virtual tokens of a new prefix adapter."
    )
    prefix_lr_scale: float = Field(
        default=10.0,
        gt=0,
        description="A prefix adapter trains at lr x this (its keys and values are of the "
        "model's activations' scale, far larger than LoRA's weights).",
    )
    lora_r: int = Field(default=16, ge=1, le=512, description="LoRA rank of a new adapter.")
    lora_alpha: float = Field(
        default=32.0, gt=0, description="LoRA scaling numerator (the update is scaled by alpha/r)."
    )
    lora_dropout: float = Field(
        default=0.0, ge=0, lt=1, description="Dropout on the LoRA path while training."
    )
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Module names (in every adapted layer) that get a LoRA adapter.",
    )
    lora_layers: int | None = Field(
        default=None,
        ge=1,
        description="Adapt only the last N decoder layers (None = all). Backpropagation stops "
        "below the lowest adapted layer, so fewer layers train faster.",
    )
    lr: float = Field(
        default=2.1e-3,
        gt=0,
        le=1.0,
        description="Peak AdamW learning rate at batch_size 16 (1.5e-3, tuned at 8, times "
        "sqrt(16/8)); rescale by the square root of the ratio when changing batch_size.",
    )
    epochs: int = Field(
        default=6, ge=1, le=100, description="Passes over the cycle's examples (first attempt)."
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        description="Examples per optimiser step. A CPU step's time is mostly outside the "
        "products at this model's size, so 16 short examples train faster per token than 8, "
        "with the tuning split's scores within noise (README, Results).",
    )
    max_step_tokens: int = Field(
        default=2048,
        ge=64,
        description="Padded token positions one forward and backward pass holds. A batch of "
        "longer examples (a passage recited verbatim) runs in pieces whose gradients add up to "
        "the whole batch's: the same step, with memory bounded by this instead of by the "
        "batch's longest example x batch_size.",
    )
    warmup: float = Field(default=0.05, ge=0, lt=1, description="Share of steps warming up.")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="Learning-rate decay after the warm-up."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(
        default=1.0, gt=0, description="Gradients are clipped to this global norm."
    )
    temperature: float = Field(
        default=1.0, gt=0, le=10, description="Softmax temperature of the distillation KL."
    )
    ce_weight: float = Field(default=0.25, ge=0, description="Extra CE on the teacher's answer.")
    top_k: int = Field(default=128, ge=1, description="Teacher tokens kept per position.")
    context_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of the cycle's fact items that answer a question (not verbatim "
        "recitations, whose twin would copy its own prompt, nor replayed items, which no longer "
        "say whether they were one) trained a second time with the "
        "experience in the student's prompt too, towards the same teacher targets, so the "
        "adapter answers with recalled context as the model did before (served answers recall "
        "experiences into the prompt). Anchors are sized to the items, not to these twins. "
        "0 = off.",
    )
    hidden_weight: float = Field(
        default=0.0,
        ge=0,
        description="Weight of the hidden-state term (deep context distillation): at every "
        "answer position the student's hidden states at hidden_layers layers match the "
        "teacher's, which had the experience in context (L1 distance over the teacher's L1 "
        "norm). 0 = logits only.",
    )
    hidden_layers: int = Field(
        default=6,
        ge=1,
        description="How many evenly spaced decoder layers (the last included) the hidden-state "
        "term compares.",
    )
    on_policy_epochs: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Epochs trained after the main ones on the student's own greedy answers to "
        "the fact prompts, with the teacher's distribution along them (on-policy distillation: "
        "the student is corrected where it actually goes wrong). 0 = off.",
    )
    locality_epochs: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Epochs trained after the others with the anchors on the student's own "
        "greedy answers to the anchor prompts and the base model's distribution along them "
        "(the facts as in the main round): the main round holds the adapter to the base model "
        "along the base model's answers, this corrects it on the paths it takes itself, where "
        "a close call flips. 0 = off.",
    )
    protect_energy: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="LoRA only: every adapted layer's A is kept orthogonal to the directions "
        "holding this share of what the layer sees on the anchor prompts and answers with the "
        "adapter off (consolidator/protect.py), so the adapter leaves unrelated inputs alone. "
        "0 = off.",
    )
    precision: Literal["float32", "bfloat16", "auto"] = Field(
        default="auto",
        description="bfloat16 = the frozen base projections (and the LM head's backward) "
        "multiply in bfloat16 while the adapter, norms, attention, the logits and the loss stay "
        "float32 (consolidator/precision.py); "
        "auto = bfloat16 where the hardware multiplies it natively (CUDA, a CPU with AVX512-BF16 "
        "or AMX), float32 elsewhere. On the reference CPU it trains 1.38x faster on one thread and "
        "1.10x on two, with float32's efficacy and locality on two seeds (README, Results). "
        "Teacher, probes and serving are unaffected.",
    )
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description="Processes a cycle splits its work across (CPU, Linux): generation "
        "(teacher answers, probes) by prompts, and training by each batch's examples, with "
        "the gradients summed (consolidator/parallel.py). auto = one per PyTorch thread the "
        "process may use (OMP_NUM_THREADS, else the cores), in training at least two examples "
        "each; 1 = this process alone. A GPU always works in one.",
    )
    seed: int = Field(
        default=0, description="Seeds the adapter init, the samples drawn and the batch order."
    )
    checkpoint_every: int = Field(default=50, ge=1, description="Steps between checkpoints.")


class GeneratorSettings(_Section):
    """Who writes model-generated question-answer pairs (SELF-PARAM style)."""

    kind: Literal["base", "local", "openai"] = Field(
        default="base",
        description="Who writes pairs for the 'generated' strategy: base = the base model; "
        "local = another HF model directory (path); openai = an OpenAI-compatible endpoint "
        "(url, model).",
    )
    path: str | None = Field(default=None, description="Model directory for kind=local.")
    url: str | None = Field(default=None, description="Base URL for kind=openai (…/v1).")
    model: str | None = Field(default=None, description="Model name for kind=openai.")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Env var holding the key.")
    pairs: int = Field(default=5, ge=1, le=50, description="QA pairs asked for per experience.")
    prompt: str = Field(
        default="Read the text and write {n} different questions about its facts, each with a "
        "short answer taken from the text.\nFormat each as:\nQ: <question>\nA: <answer>\n\n"
        "Text: {experience}",
        description="Template; must contain {experience} and {n}.",
    )
    temperature: float = Field(default=0.7, ge=0, le=2, description="Sampling temperature.")
    max_new_tokens: int = Field(
        default=200, ge=16, description="Length cap of the generator's reply."
    )

    @field_validator("prompt")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        missing = [p for p in ("{experience}", "{n}") if p not in value]
        if missing:
            raise ValueError(f"the generator prompt must contain {' and '.join(missing)}")
        try:
            value.format(experience="x", n=1)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"the generator prompt has an unknown placeholder: {err}") from None
        return value

    @model_validator(mode="after")
    def _complete(self) -> GeneratorSettings:
        if self.kind == "local" and not self.path:
            raise ValueError("generator.kind=local needs generator.path (a model directory)")
        if self.kind == "openai" and not (self.url and self.model):
            raise ValueError("generator.kind=openai needs generator.url and generator.model")
        return self


class TransferSettings(_Section):
    """How each experience's transfer set (what the student learns from) is built."""

    strategies: list[
        Literal[
            "cloze",
            "echo",
            "qgen",
            "paraphrase",
            "recite",
            "recall",
            "verbatim",
            "generated",
            "continuation",
            "split",
        ]
    ] = Field(
        default=["cloze", "echo", "qgen", "recite", "verbatim"],
        min_length=1,
        description="Which kinds of transfer items to build (see consolidator/transfer.py).",
    )
    max_items_per_experience: int = Field(
        default=10, ge=1, description="Teacher-answered items kept per experience."
    )
    max_candidates_per_experience: int = Field(
        default=32,
        ge=0,
        description="Teacher-answered candidates per experience before filtering, a seeded "
        "sample (0: all). A fact of a sentence or two gives about a dozen; a long passage over "
        "a hundred, of which at most max_items_per_experience are kept.",
    )
    verbatim_per_experience: int = Field(
        default=6, ge=0, description="Cue prompts answered with the experience text itself."
    )
    cloze_every: int = Field(default=4, ge=1, description="A cloze prefix every N words too.")
    continuations: int = Field(default=2, ge=0, description="Sampled per experience.")
    min_grounding: float = Field(
        default=0.75, ge=0, le=1, description="Share of an answer's content words in the text."
    )
    min_confidence: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Drop items whose answer the teacher gives with a lower mean token "
        "probability. Off by default: answers are the teacher's own greedy tokens already.",
    )
    teacher_max_new_tokens: int = Field(
        default=40, ge=4, description="Length cap of the teacher's answers."
    )
    probes_per_experience: int = Field(
        default=3, ge=0, description="Held-out probes per experience (never trained)."
    )
    generator: GeneratorSettings = Field(
        default_factory=GeneratorSettings, description="Who writes pairs for 'generated'."
    )


class ConsolidationSettings(_Section):
    """One consolidation cycle: what it drains, what it mixes in, and when it retries."""

    max_experiences: int = Field(default=32, ge=1, description="Per cycle and tenant.")
    anchor_ratio: float = Field(
        default=1.0,
        ge=0,
        description="Anchor prompts (trained towards the base model's own answers) per new "
        "training item; grows with the data so it is never outweighed.",
    )
    min_anchors: int = Field(
        default=0,
        ge=0,
        description="Anchors per cycle at least (capped by the anchor prompts available), "
        "whatever the cycle's size.",
    )
    rotate_anchors: bool = Field(
        default=False,
        description="A cycle wanting fewer anchors than there are anchor prompts trains on "
        "that many each epoch, taking the prompts in turn (up to epochs x that many distinct "
        "ones), so a small cycle is held to the base model over more of them in the same "
        "training steps, not over the same few every epoch. Off: one sample, every epoch.",
    )
    anchor_weight: float = Field(
        default=1.0, gt=0, description="Loss weight of anchor tokens relative to fact tokens."
    )
    anchor_answer_tokens: int = Field(
        default=32,
        ge=1,
        le=32,  # teacher.ANCHOR_MAX_NEW_TOKENS
        description="Anchors train along the first N tokens of the base model's answer (cached "
        "answers run to 32). An answer's first tokens are where a changed answer shows first "
        "(probes read 24); anchor answers are about half of a cycle's training tokens.",
    )
    replay_ratio: float = Field(
        default=0.5, ge=0, description="Earlier cycles' items replayed per new training item."
    )
    retention_budget: int = Field(default=60, ge=0, description="Earlier probes per cycle.")
    control_budget: int = Field(
        default=80,
        ge=0,
        description="Control questions (and texts) the adapter answers for raw locality per "
        "cycle, a fixed seeded sample of the control set (0: all 254). Served locality always "
        "asks every control question (only those routed to the adapter cost a generation).",
    )
    blend_alphas: list[float] = Field(
        default=[],
        description="When the trained adapter's raw locality on the calibration questions is "
        "under the gate's floor, these blends of the starting and trained adapter parameters "
        "(start + alpha x (trained - start), each parameter; for LoRA the update follows a "
        "curve between the two) are tried, largest first, and the first that clears it is the "
        "candidate (consolidator.blend). Empty (the default): never blend. An option: on "
        "the sequential benchmark's first cycles the blend that cleared the floor lost "
        "nearly every fact (README, Results).",
    )
    blend_controls: int = Field(
        default=80,
        ge=0,
        description="Calibration control questions a blend is chosen on: a seeded sample of "
        "the control questions the gate's raw locality does not ask (0, or a control_budget "
        "of 0, which asks them all: no blending).",
    )
    neighbourhood_per_experience: int = Field(
        default=2,
        ge=0,
        description="General questions per experience about its common nouns (not answered "
        "by it), compared with the base model's answers for neighbourhood locality.",
    )
    probe_max_new_tokens: int = Field(
        default=24, ge=4, description="Answer length when probing (short answers suffice)."
    )
    retry_epochs_factor: float = Field(
        default=1.5, ge=1, description="Epochs multiply by this on each retry of an experience."
    )
    retry_lr_factor: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="After a locality rejection the learning rate multiplies by this (and "
        "anchors by retry_replay_factor) instead of training longer.",
    )
    retry_replay_factor: float = Field(
        default=2.0, ge=1, description="Replay multiplies by this on each retry."
    )
    rebase: Literal["never", "on_retry", "always"] = Field(
        default="never",
        description="When a candidate trains from a fresh adapter over every consolidated "
        "item (all replayed, the base model as teacher, the current adapter settings) instead "
        "of on top of the current version, which carries the drift of every version before "
        "it. 'on_retry': every retry of a rejected batch; 'always': every cycle; 'never'. Each "
        "rebase replays the tenant's whole history, so its cost grows with it. An option: in "
        "the sequential benchmark its retries lost efficacy and retention as the history grew, "
        "and its drift grew with the history it held (README, Results).",
    )

    @field_validator("blend_alphas")
    @classmethod
    def _alphas(cls, value: list[float]) -> list[float]:
        bad = [a for a in value if not 0 < a < 1]
        if bad:
            raise ValueError(
                f"blends must lie strictly between 0 (the starting adapter) and 1 (the trained "
                f"one), got {bad}; e.g. [0.75, 0.5, 0.25], or [] to never blend"
            )
        return sorted(set(value), reverse=True)


class DaemonSettings(_Section):
    """``reverie daemon``: when cycles run, how the stream is consumed, what is exposed."""

    interval_s: float = Field(default=300.0, gt=0, description="Seconds between cycles.")
    cron: str | None = Field(default=None, description="Crontab schedule; overrides interval_s.")
    buffer_trigger: int = Field(
        default=20,
        ge=1,
        description="Start a tenant's cycle at once when it has this many buffered experiences.",
    )
    poll_interval_s: float = Field(default=2.0, gt=0, description="Stream poll period.")
    group: str = Field(
        default="reverie-consolidator",
        pattern=r"^[A-Za-z0-9._-]{1,200}$",
        description="Consumer group shared by every daemon of a deployment.",
    )
    grace_s: float = Field(
        default=60.0, ge=0, description="On SIGTERM, time to finish or checkpoint the cycle."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Bind address of /metrics.")
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="0 = no HTTP endpoint.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Daemon log lines as text or one JSON object per line (the top-level "
        "log_format sets it for serve and the daemon together).",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(value)
            except ValueError as err:
                raise ValueError(f"not a crontab expression ({err}); e.g. '*/15 * * * *'") from None
        return value


class ConsolidatorSettings(Protocol):
    """The settings sections the consolidator reads. The root (``reverie.settings.Settings``)
    has them all; the consolidator never imports it."""

    @property
    def data_dir(self) -> Path: ...
    @property
    def model(self) -> ModelSettings: ...
    @property
    def transfer(self) -> TransferSettings: ...
    @property
    def train(self) -> TrainSettings: ...
    @property
    def consolidation(self) -> ConsolidationSettings: ...
    @property
    def gate(self) -> GateSettings: ...
    @property
    def daemon(self) -> DaemonSettings: ...
    @property
    def router(self) -> RouterSettings: ...
