"""A BERT encoder in plain torch, for the recall embedder's cold start.

Importing transformers' BERT (its masking and kernel modules pull in torch's compiler) took
longer than everything else a cold ``reverie recall`` does. A sentence embedder such as
all-MiniLM-L6-v2 needs only the encoder's forward pass: embeddings, then per layer
self-attention and a GELU feed-forward, each followed by a residual LayerNorm. This module
computes exactly that from the model's own ``model.safetensors``, with its ``tokenizer.json``
read by the ``tokenizers`` library; tests check the vectors against sentence-transformers' to
1e-5. Other architectures load through transformers (:mod:`reverie.memory.pooled`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["BertEncoder", "supported"]


def supported(path: Path) -> bool:
    """Whether ``path`` is a plain absolute-position BERT with GELU, in safetensors, with a
    ``tokenizer.json`` (the layout this encoder reads)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        config.get("model_type") == "bert"
        and config.get("position_embedding_type", "absolute") == "absolute"
        and config.get("hidden_act") == "gelu"
        and (path / "model.safetensors").exists()
        and (path / "tokenizer.json").exists()
    )


class BertEncoder:
    """Token states of a BERT model: ``encode(texts) -> (states [B, T, H], mask [B, T])``."""

    def __init__(self, path: Path, max_length: int, device: str = "cpu") -> None:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        config = json.loads((path / "config.json").read_text())
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.dim = int(config["hidden_size"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.device = device
        weights = load_file(str(path / "model.safetensors"), device=device)
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        self.w = {k.removeprefix(prefix): v.float() for k, v in weights.items()}
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        pad = int(config.get("pad_token_id", 0))
        self.tokenizer.enable_padding(pad_id=pad, pad_token=self.tokenizer.id_to_token(pad))

    def encode(self, texts: list[str]) -> tuple[Any, Any]:
        import torch

        batch = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([b.ids for b in batch], device=self.device)
        mask = torch.tensor([b.attention_mask for b in batch], device=self.device)
        types = torch.tensor([b.type_ids for b in batch], device=self.device)
        return self._forward(ids, types, mask), mask

    def _norm(self, x: Any, name: str) -> Any:
        import torch

        return torch.nn.functional.layer_norm(
            x, (self.dim,), self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps
        )

    def _dense(self, x: Any, name: str) -> Any:
        import torch

        return torch.nn.functional.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def _forward(self, ids: Any, types: Any, mask: Any) -> Any:
        import torch

        w, f = self.w, torch.nn.functional
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][positions][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        b, t, _ = x.shape
        head = self.dim // self.heads
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for i in range(self.layers):
            n = f"encoder.layer.{i}"

            def split(y: Any) -> Any:
                return y.view(b, t, self.heads, head).transpose(1, 2)

            q = split(self._dense(x, f"{n}.attention.self.query"))
            k = split(self._dense(x, f"{n}.attention.self.key"))
            v = split(self._dense(x, f"{n}.attention.self.value"))
            scores = q @ k.transpose(-1, -2) / math.sqrt(head) + bias
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, self.dim)
            x = self._norm(x + self._dense(context, f"{n}.attention.output.dense"),
                           f"{n}.attention.output.LayerNorm")  # fmt: skip
            hidden = f.gelu(self._dense(x, f"{n}.intermediate.dense"))
            x = self._norm(x + self._dense(hidden, f"{n}.output.dense"), f"{n}.output.LayerNorm")
        return x
