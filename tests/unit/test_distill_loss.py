"""The distillation loss against closed forms on small random logits."""

from __future__ import annotations

import math

import pytest
import torch

from reverie.consolidator.distill import answer_positions, distill_loss, kl_to_reference


def dense(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All V tokens as 'top-k' (k = V)."""
    logp = torch.log_softmax(teacher_logits, -1)
    ids = torch.arange(teacher_logits.shape[-1]).expand_as(logp)
    return ids, logp


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)


def test_dense_kl_matches_closed_form(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits
    ids, logp = dense(teacher)
    loss, parts = distill_loss(student, ids, logp, torch.zeros(6, dtype=torch.long))
    p, q = torch.softmax(teacher, -1), torch.softmax(student, -1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["kl"] == pytest.approx(expected.item(), rel=1e-5)


def test_zero_when_student_equals_teacher(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, teacher = logits
    ids, logp = dense(teacher)
    loss, _ = distill_loss(teacher.clone(), ids, logp, torch.zeros(6, dtype=torch.long))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_temperature_scaling(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits
    ids, logp = dense(teacher)
    t = 2.0
    loss, _ = distill_loss(student, ids, logp, torch.zeros(6, dtype=torch.long), temperature=t)
    p, q = torch.softmax(teacher / t, -1), torch.softmax(student / t, -1)
    expected = (p * (p.log() - q.log())).sum(-1).mean() * t * t
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_top_k_is_renormalised_and_nonnegative(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits
    logp = torch.log_softmax(teacher, -1)
    top_logp, top_ids = logp.topk(2, -1)
    loss, _ = distill_loss(student, top_ids, top_logp, torch.zeros(6, dtype=torch.long))
    p = torch.softmax(top_logp, -1)  # renormalised over the 2 kept tokens
    q = torch.log_softmax(student, -1).gather(-1, top_ids)
    expected = (p * (p.log() - q)).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() >= 0


def test_cross_entropy_term_and_weights(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits
    ids, logp = dense(teacher)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    weights = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 2.0])
    loss, parts = distill_loss(student, ids, logp, targets, weights, ce_weight=0.5)
    p, q = torch.softmax(teacher, -1), torch.log_softmax(student, -1)
    kl = (p * (p.log() - q)).sum(-1)
    ce = -q.gather(-1, targets[:, None]).squeeze(-1)
    expected = ((kl + 0.5 * ce) * weights).sum() / weights.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["ce"] == pytest.approx(ce.mean().item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_plus_cross_entropy_gradient_matches_the_closed_form(
    logits: tuple[torch.Tensor, torch.Tensor], temperature: float
) -> None:
    """With the CE term the student's logits get T * (q_T - p_T) / N from the KL and
    c * (q_1 - onehot) / N from the CE, at T = 1 (one gather for both) and at T != 1."""
    student, teacher = logits
    student = student.clone().requires_grad_(True)
    ids, logp = dense(teacher)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    loss, parts = distill_loss(student, ids, logp, targets, ce_weight=0.25, temperature=temperature)
    loss.backward()
    t, s = temperature, student.detach()
    q_t, p_t = torch.softmax(s / t, -1), torch.softmax(teacher / t, -1)
    onehot = torch.nn.functional.one_hot(targets, 5).float()
    expected = (t * (q_t - p_t) + 0.25 * (torch.softmax(s, -1) - onehot)) / 6
    assert student.grad is not None
    assert torch.allclose(student.grad, expected, atol=1e-6)
    ce = -torch.log_softmax(s, -1).gather(-1, targets[:, None]).squeeze(-1)
    assert parts["ce"] == pytest.approx(ce.mean().item(), rel=1e-5)


def test_gradient_flows_to_student_only(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits
    student = student.clone().requires_grad_(True)
    ids, logp = dense(teacher)
    loss, _ = distill_loss(student, ids, logp, torch.zeros(6, dtype=torch.long))
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    # d KL / d student_logits = softmax(student) - softmax(teacher), averaged over rows
    expected = (torch.softmax(student.detach(), -1) - torch.softmax(teacher, -1)) / 6
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_kl_to_reference_closed_form() -> None:
    ref = torch.log_softmax(torch.tensor([[0.0, math.log(3.0)]]), -1)  # p = [0.25, 0.75]
    uni = torch.log_softmax(torch.zeros(1, 2), -1)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl_to_reference(ref, uni).item() == pytest.approx(expected, rel=1e-6)


def test_answer_positions() -> None:
    assert answer_positions(3, 2).tolist() == [2, 3]


def test_answer_confidence_worked_example() -> None:
    from reverie.consolidator.distill import TeacherTargets
    from reverie.consolidator.teacher import answer_confidence

    targets = TeacherTargets(
        torch.tensor([[5, 7], [9, 5]], dtype=torch.int32),
        torch.tensor([[0.8, 0.1], [0.6, 0.3]]).log().to(torch.float16),
    )
    assert answer_confidence(targets, [5, 5]) == pytest.approx(0.55, abs=1e-3)
    assert answer_confidence(targets, [3, 3]) == 0.0
    assert answer_confidence(targets, []) == 0.0


def test_hidden_loss_worked_example() -> None:
    from reverie.consolidator.distill import hidden_loss

    teacher = torch.tensor([[[1.0, -1.0]], [[2.0, 2.0]]])  # 2 positions, 1 layer, 2 dims
    student = torch.tensor([[[1.0, 0.0]], [[2.0, 2.0]]])
    # position 0: |0| + |1| over |1| + |1| = 0.5; position 1: 0
    assert hidden_loss(student, teacher).item() == pytest.approx(0.25)
    weighted = hidden_loss(student, teacher, torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx(0.375)
    assert hidden_loss(teacher, teacher).item() == 0.0
    assert hidden_loss(torch.zeros_like(teacher), teacher).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one shape"):
        hidden_loss(student[:, 0], teacher)


def test_hidden_layer_ids_are_evenly_spaced_and_end_at_the_last() -> None:
    from reverie.consolidator.distill import hidden_layer_ids

    assert hidden_layer_ids(30, 6) == [5, 10, 15, 20, 25, 30]
    assert hidden_layer_ids(30, 1) == [30]
    assert hidden_layer_ids(2, 6) == [1, 2]
