"""Every loss term honours ignore_index; weights combine; an all-void batch is a zero, not NaN."""

from __future__ import annotations

import pytest
import torch

from segkit.config import LossConfig
from segkit.models.losses import LOSS_FACTORIES, build_loss

IGNORE = 255
TERMS = sorted(LOSS_FACTORIES)


def _only(name: str, weight: float = 1.0) -> LossConfig:
    return LossConfig(**{t: (weight if t == name else 0.0) for t in TERMS})


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    target[:, :5] = IGNORE  # a void band, as padded crops have
    return logits, target


@pytest.mark.parametrize("name", TERMS)
def test_logits_at_ignored_pixels_do_not_change_the_loss(name):
    loss = build_loss(_only(name), num_classes=3, ignore_index=IGNORE)
    logits, target = _batch()
    base = loss(logits, target)
    changed = logits.clone()
    changed[:, :, :5] = torch.randn_like(changed[:, :, :5]) * 50
    assert torch.isfinite(base) and base > 0
    torch.testing.assert_close(loss(changed, target), base)
    # ...while changing a counted pixel does change it
    moved = logits.clone()
    moved[:, :, 10:] += torch.randn_like(moved[:, :, 10:]) * 5
    assert not torch.allclose(loss(moved, target), base)


@pytest.mark.parametrize("name", TERMS)
def test_gradient_is_zero_at_ignored_pixels(name):
    loss = build_loss(_only(name), num_classes=3, ignore_index=IGNORE)
    logits, target = _batch(1)
    logits.requires_grad_(True)
    loss(logits, target).backward()
    assert logits.grad[:, :, :5].abs().max() == 0
    assert logits.grad[:, :, 5:].abs().max() > 0


def test_weighted_sum_of_terms():
    logits, target = _batch(2)
    combined = build_loss(
        LossConfig(dice=0.5, ce=2.0, focal=1.5), num_classes=3, ignore_index=IGNORE
    )
    parts = {n: build_loss(_only(n), 3, IGNORE)(logits, target) for n in ("dice", "ce", "focal")}
    expected = 0.5 * parts["dice"] + 2.0 * parts["ce"] + 1.5 * parts["focal"]
    torch.testing.assert_close(combined(logits, target), expected)
    assert set(combined.last_terms) == {"dice", "ce", "focal"}


ALL_TERMS = LossConfig(**{t: 1.0 for t in TERMS})


def test_every_term_together_equals_the_sum_of_the_plain_losses():
    logits, target = _batch(3)
    expected = sum(LOSS_FACTORIES[name](IGNORE)(logits, target) for name in TERMS)
    torch.testing.assert_close(build_loss(ALL_TERMS, 3, IGNORE)(logits, target), expected)


def test_all_ignored_batch_gives_zero_loss_with_a_gradient_path():
    loss = build_loss(ALL_TERMS, num_classes=3, ignore_index=IGNORE)
    loss(*_batch(4))  # a normal batch first: its term values must not be logged again
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    value = loss(logits, torch.full((1, 8, 8), IGNORE))
    assert torch.isfinite(value) and value.item() == 0.0
    value.backward()  # DDP needs every parameter to take part in the graph
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0
    assert set(loss.last_terms) == set(TERMS)
    assert all(
        v.item() == 0.0 for v in loss.last_terms.values()
    )  # this batch's, not the last one's


def test_loss_config_needs_a_term():
    with pytest.raises(ValueError, match="at least one loss weight"):
        LossConfig(dice=0, ce=0)
