"""Mean-pooled sentence embeddings with plain transformers, for the common model layout.

A sentence-transformers directory made of a Transformer, a mean Pooling and (optionally) a
Normalize module, all-MiniLM-L6-v2 among them, computes nothing plain ``transformers`` cannot:
token states, averaged over the attention mask, scaled to unit length. Loading it this way skips
importing sentence-transformers (and the scikit-learn and SciPy it pulls in), which was most of a
cold ``reverie recall``. Any other layout loads through sentence-transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MeanPooled", "mean_pooled_layout"]


def mean_pooled_layout(path: Path) -> int | None:
    """The maximum sequence length when ``path`` is Transformer -> mean Pooling (-> Normalize),
    else None."""
    try:
        modules = json.loads((path / "modules.json").read_text())
        kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None
        if modules[0].get("path") not in ("", "."):
            return None
        pooling = json.loads((path / modules[1]["path"] / "config.json").read_text())
        active = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
        if active != ["pooling_mode_mean_tokens"]:
            return None
        config = json.loads((path / "sentence_bert_config.json").read_text())
        if config.get("do_lower_case"):
            return None
        return int(config["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


class MeanPooled:
    """The model's ``encode`` as sentence-transformers calls it, for the mean-pooled layout.
    A plain BERT runs on :class:`~reverie.memory.bert.BertEncoder` (no transformers import);
    any other architecture through transformers' ``AutoModel``."""

    def __init__(self, path: Path, max_length: int, device: str = "cpu") -> None:
        from reverie.memory.bert import BertEncoder, supported

        self.max_length, self.device = max_length, device
        self.encoder: BertEncoder | None = None
        if supported(path):
            self.encoder = BertEncoder(path, max_length, device)
            self.dim = self.encoder.dim
            return
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.dim = int(self.model.config.hidden_size)

    def _states(self, texts: list[str]) -> tuple[Any, Any]:
        if self.encoder is not None:
            return self.encoder.encode(texts)
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        return self.model(**batch).last_hidden_state, batch["attention_mask"]

    def encode(self, texts: Sequence[str], batch_size: int = 64, **_: Any) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(texts), batch_size):
            with torch.inference_mode():
                states, mask = self._states(list(texts[start : start + batch_size]))
            weights = mask.unsqueeze(-1).to(states.dtype)
            mean = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)
