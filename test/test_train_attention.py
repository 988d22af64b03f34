"""Training runs attention on torch's math backend (``trainer.TRAIN_ATTENTION``).

With the large attention logits a trained head reaches (activations ~4e4), the fused CPU kernel's
backward recomputes the softmax from a float32 log-sum-exp that is off by tens, and its gradients
blow up (1e13-1e20, then inf: the non-finite steps and divergence of the camera model's second
schedule). The training path must give the float64 gradient there, within float32 noise (on
torch 2.13 the fused kernel's error on this input is ~10x the gradient itself).
"""

from __future__ import annotations

import torch
from torch.nn.attention import sdpa_kernel

from sparse_perception_ros.model.blocks import MultiheadAttention
from sparse_perception_ros.train.trainer import TRAIN_ATTENTION


def _grads(attn: MultiheadAttention, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (attn(x, x, x) * upstream).sum().backward()
    return x.grad


def test_training_attention_gradient_is_exact_at_large_logits():
    torch.manual_seed(0)
    attn = MultiheadAttention(64, 4)
    with torch.no_grad():
        attn.in_proj_weight.mul_(4.0)
    x = torch.randn(1, 96, 64) * 3e3  # logits ~1e8-1e9: a saturated softmax, as in the trained head
    upstream = torch.randn(1, 96, 64) * 1e-6
    ref = _grads(attn.double(), x.double(), upstream.double())
    attn.float()
    with sdpa_kernel(TRAIN_ATTENTION):
        got = _grads(attn, x, upstream)
    assert torch.isfinite(got).all()
    scale = ref.abs().max()
    # float32 vs float64 through logits of ~1e9: agreement to 1e-3 of the largest gradient
    assert (got.double() - ref).abs().max() <= 1e-3 * scale + 1e-12, (float((got.double() - ref).abs().max()), float(scale))

