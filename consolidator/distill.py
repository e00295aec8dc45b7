"""Context distillation: the loss (pure) and the tensor helpers training shares with the teacher.

The teacher is the model *with* the experience in its context; the student is the adapter
*without* it. For each transfer item the teacher's greedy answer is fixed first; then the student
is trained to match the teacher's whole next-token distribution at every position of that answer,
end token included (matching along the teacher's own answer, not gold tokens, is what works: a
gold phrasing the teacher would not produce teaches the student a path it never continues).

Teacher distributions are stored as their top-k token ids and log-probabilities
(:class:`TeacherTargets`, computed once per item per cycle by :mod:`consolidator.teacher`), which
keeps a cycle's targets small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "TeacherTargets",
    "answer_positions",
    "distill_loss",
    "hidden_layer_ids",
    "hidden_loss",
    "kl_to_reference",
    "right_padded",
]


def distill_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logp: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    kl_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward KL(teacher || student) per answer token, plus optional cross-entropy.

    Shapes (N = answer tokens in the batch, V = vocabulary, k = kept teacher tokens):
        student_logits  [N, V]  the student's logits at the positions predicting each token
        teacher_ids     [N, k]  the teacher's top-k token ids at those positions
        teacher_logp    [N, k]  their log-probabilities (temperature 1, full-vocab normalised)
        targets         [N]     the answer tokens themselves (used by the CE term)
        weights         [N]     per-token weights (None = all 1)

    With ``p`` the teacher's top-k distribution at temperature ``T`` (renormalised over its k
    tokens) and ``q`` the student's full-vocabulary softmax at ``T``::

        loss_i = kl_weight * T^2 * sum_j p_ij (log p_ij - log q_ij)
                 + ce_weight * (-log q1_i[target_i])

    where ``q1`` is the student at temperature 1. ``T^2`` keeps gradient scale comparable across
    temperatures (Hinton et al.). Because ``q`` is not renormalised over the k tokens, the KL term
    is >= 0 and equals the full KL when k = V. ``kl_weight=0, ce_weight=1`` is plain supervised
    fine-tuning on the answer tokens (the baseline). Returns the weighted mean and detached parts.
    """
    if student_logits.ndim != 2 or teacher_ids.shape != teacher_logp.shape:
        raise ValueError("expected student_logits [N, V] and teacher ids/logp [N, k]")
    t = float(temperature)
    # Each pass over [N, V] (V = 49k, N = the batch's answer tokens) is visible in a CPU
    # training step's profile, so none is spent for nothing: no division at T = 1, and at
    # T = 1 one gather (so one scatter backward) reads both the teacher's tokens and the targets.
    logits = student_logits.float()
    student_logp_t = F.log_softmax(logits if t == 1.0 else logits / t, dim=-1)
    teacher_logp_t = F.log_softmax(teacher_logp.float() / t, dim=-1)
    k = teacher_ids.shape[1]
    together = bool(ce_weight) and t == 1.0
    ids = torch.cat([teacher_ids.long(), targets.long()[:, None]], -1) if together else None
    picked = student_logp_t.gather(-1, ids if ids is not None else teacher_ids.long())
    student_at_teacher = picked[:, :k]
    kl = (teacher_logp_t.exp() * (teacher_logp_t - student_at_teacher)).sum(-1) * (t * t)
    per_token = kl_weight * kl
    ce = torch.zeros_like(kl)
    if ce_weight:
        if together:
            ce = -picked[:, k]
        else:
            student_logp_1 = F.log_softmax(logits, -1)
            ce = -student_logp_1.gather(-1, targets.long()[:, None]).squeeze(-1)
        per_token = per_token + ce_weight * ce
    if weights is None:
        weights = torch.ones_like(per_token)
    loss = (per_token * weights).sum() / weights.sum().clamp_min(1e-8)
    return loss, {"kl": float(kl.detach().mean()), "ce": float(ce.detach().mean())}


def hidden_loss(
    student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The hidden-state term of deep context distillation: how far the student's hidden states
    at the answer positions are from the teacher's, which had the experience in context.

    Shapes: ``student`` and ``teacher`` ``[N, H, D]`` (N answer positions, H compared layers, D
    hidden size), ``weights`` ``[N]``. Per position and layer the L1 distance over the teacher's
    L1 norm (scale-free: hidden norms grow with depth), averaged over layers, then the
    weighted mean over positions. 0 when they match; 1 when the student's state is zero.
    """
    if student.shape != teacher.shape or student.ndim != 3:
        raise ValueError("expected student and teacher hidden states of one shape [N, H, D]")
    teacher = teacher.float()
    distance = (student.float() - teacher).abs().sum(-1) / teacher.abs().sum(-1).clamp_min(1e-6)
    per_position = distance.mean(-1)
    if weights is None:
        weights = torch.ones_like(per_position)
    return (per_position * weights).sum() / weights.sum().clamp_min(1e-8)


def hidden_layer_ids(n_layers: int, count: int) -> list[int]:
    """``count`` evenly spaced decoder layers, the last included, as indices into a model's
    ``hidden_states`` (0 is the embeddings). Example: 30 layers, 6 -> [5, 10, 15, 20, 25, 30]."""
    count = max(0, min(count, n_layers))
    return sorted({round(n_layers * (i + 1) / count) for i in range(count)})


def kl_to_reference(reference_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Per-position KL(reference || model) for full log-prob rows ``[N, V]`` -> ``[N]``."""
    return (reference_logp.exp() * (reference_logp - logp)).sum(-1)


@dataclass
class TeacherTargets:
    """The teacher's top-k distribution at each answer position of one item."""

    ids: torch.Tensor  # [A, k] int32
    logp: torch.Tensor  # [A, k] float16
    hidden: torch.Tensor | None = None  # [A, H, D] float16: hidden states at chosen layers


def answer_positions(prompt_len: int, answer_len: int) -> torch.Tensor:
    """Positions whose logits predict the answer tokens of ``prompt + answer``.

    Example: prompt of 3 tokens, answer of 2 -> positions [2, 3] (the logit at position i
    predicts token i + 1).
    """
    return torch.arange(prompt_len - 1, prompt_len - 1 + answer_len)


def right_padded(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """``[B, L]`` ids and attention mask, sequences left-aligned (pad id may equal EOS)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask
