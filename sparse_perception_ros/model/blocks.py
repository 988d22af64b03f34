"""Small building blocks of the Sparse4D v3 head: MLP stacks, anchor encoder, attention, FFN.

Every module keeps the parameter names of the released checkpoint (see
``test/data/sparse4dv3_r50_state_dict_keys.json``) so a state dict loads without renaming.
Shapes use ``bs`` (batch), ``A`` (anchors/instances) and ``E`` (embed dims, 256 in the release).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparse_perception_ros.geometry.boxes import COS_YAW, SIN_YAW, VX, H, L, W, X, Y, Z

__all__ = [
    "linear_relu_ln",
    "Scale",
    "AnchorEncoder",
    "MultiheadAttention",
    "AttentionLayer",
    "AsymmetricFFN",
]


def linear_relu_ln(embed_dims: int, in_loops: int, out_loops: int, input_dims: int | None = None) -> list[nn.Module]:
    """``out_loops`` x (``in_loops`` x (Linear, ReLU), LayerNorm), as a flat list of modules.

    The flat list keeps the reference's ``nn.Sequential`` indices (Linear at 0, 3, 6, ... for
    ``in_loops=1``; Linear at 0, 2 and LayerNorm at 4 for ``in_loops=2``).
    """
    dims = embed_dims if input_dims is None else input_dims
    layers: list[nn.Module] = []
    for _ in range(out_loops):
        for _ in range(in_loops):
            layers.append(nn.Linear(dims, embed_dims))
            layers.append(nn.ReLU(inplace=True))
            dims = embed_dims
        layers.append(nn.LayerNorm(embed_dims))
    return layers


class Scale(nn.Module):
    """Learned per-channel multiplier ``x * scale`` (key ``scale``, shape ``[C]``)."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class AnchorEncoder(nn.Module):
    """Anchor ``[..., 11]`` -> embedding ``[..., E]`` (reference ``SparseBox3DEncoder``, mode "cat").

    Four MLPs of 4 x (Linear, ReLU, LayerNorm) on raw, unnormalised inputs, concatenated in the
    order position ``[x, y, z]``, size ``[log W, log L, log H]``, yaw ``[sin, cos]``,
    velocity ``[vx, vy, vz]``. No output FC.
    """

    def __init__(self, pos_dims: int = 128, size_dims: int = 32, yaw_dims: int = 32, vel_dims: int = 64):
        super().__init__()
        self.pos_fc = nn.Sequential(*linear_relu_ln(pos_dims, 1, 4, 3))
        self.size_fc = nn.Sequential(*linear_relu_ln(size_dims, 1, 4, 3))
        self.yaw_fc = nn.Sequential(*linear_relu_ln(yaw_dims, 1, 4, 2))
        self.vel_fc = nn.Sequential(*linear_relu_ln(vel_dims, 1, 4, 3))

    def forward(self, anchor: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.pos_fc(anchor[..., [X, Y, Z]]),
                self.size_fc(anchor[..., [W, L, H]]),
                self.yaw_fc(anchor[..., [SIN_YAW, COS_YAW]]),
                self.vel_fc(anchor[..., VX : VX + 3]),
            ],
            dim=-1,
        )


class MultiheadAttention(nn.Module):
    """Plain multi-head attention with ``nn.MultiheadAttention``'s parameter names.

    Keys: ``in_proj_weight [3D, D]``, ``in_proj_bias [3D]``, ``out_proj.weight/bias``.
    Inputs ``[bs, N, D]`` (batch first); no mask (the reference uses none at inference).
    """

    def __init__(self, embed_dims: int, num_heads: int):
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims {embed_dims} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dims, embed_dims))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dims))
        self.out_proj = nn.Linear(embed_dims, embed_dims)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        bs, nq, d = query.shape
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        h = self.num_heads

        def heads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return F.linear(x, w, b).reshape(bs, x.shape[1], h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(query, wq, bq), heads(key, wk, bk), heads(value, wv, bv))
        return self.out_proj(out.transpose(1, 2).reshape(bs, nq, d))


class AttentionLayer(nn.Module):
    """mmcv-style attention block: ``query + MHA(query, key, value)`` (residual on the query).

    A missing key becomes the query; a missing value becomes the key. In the decoupled head the
    query is the 2E-d ``[feature || anchor_embed]``, so the residual is taken in 2E dims.
    """

    def __init__(self, embed_dims: int, num_heads: int):
        super().__init__()
        self.attn = MultiheadAttention(embed_dims, num_heads)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None
    ) -> torch.Tensor:
        key = query if key is None else key
        value = key if value is None else value
        return query + self.attn(query, key, value)


class AsymmetricFFN(nn.Module):
    """``identity_fc(LN(x)) + Linear(ReLU(Linear(LN(x))))``: ``[..., 2E] -> [..., E]``.

    The identity branch takes the **pre-normed** input, as the reference does.
    """

    def __init__(self, in_channels: int = 512, embed_dims: int = 256, feedforward_channels: int = 1024):
        super().__init__()
        self.pre_norm = nn.LayerNorm(in_channels)
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(in_channels, feedforward_channels), nn.ReLU(inplace=True), nn.Dropout(0.0)),
            nn.Linear(feedforward_channels, embed_dims),
            nn.Dropout(0.0),
        )
        self.identity_fc = nn.Linear(in_channels, embed_dims) if in_channels != embed_dims else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        return self.identity_fc(x) + self.layers(x)
