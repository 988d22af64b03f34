"""Model presets as frozen dataclasses (no registry): :data:`sparse4dv3_r50` and :data:`tiny`.

``sparse4dv3_r50`` mirrors ``sparse4dv3_temporal_r50_1x8_bs6_256x704`` (the released
checkpoint layout). ``tiny`` runs the same code paths with small sizes for tests and the CPU demo.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BackboneConfig", "HeadConfig", "ModelConfig", "sparse4dv3_r50", "tiny", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet + FPN. ``depth`` in {18, 34, 50, 101}; the FPN has 4 outputs at strides 4..32."""

    depth: int = 50
    base_channels: int = 64
    fpn_channels: int = 256


@dataclass(frozen=True)
class HeadConfig:
    """Sparse4D v3 head sizes and temporal rules (defaults = the released R50 model)."""

    embed_dims: int = 256
    num_groups: int = 8
    num_anchor: int = 900
    num_temp_instances: int = 600
    num_decoder: int = 6
    num_single_frame_decoder: int = 1
    num_classes: int = 10
    num_cams: int = 6
    num_levels: int = 4
    num_fixed_pts: int = 7
    num_learnable_pts: int = 6
    num_heads: int = 8
    ffn_dims: int = 1024
    anchor_encoder_dims: tuple[int, int, int, int] = (128, 32, 32, 64)  # pos, size, yaw, vel
    confidence_decay: float = 0.6
    max_time_interval: float = 2.0
    default_time_interval: float = 0.5
    num_output: int = 300

    def __post_init__(self) -> None:
        if sum(self.anchor_encoder_dims) != self.embed_dims:
            raise ValueError(f"anchor_encoder_dims {self.anchor_encoder_dims} must sum to embed_dims {self.embed_dims}")
        if self.embed_dims % self.num_groups:
            raise ValueError("embed_dims must be divisible by num_groups")
        if not 0 < self.num_temp_instances < self.num_anchor:
            raise ValueError("need 0 < num_temp_instances < num_anchor")
        if self.num_output > self.num_anchor:
            raise ValueError("num_output must not exceed num_anchor")
        if not 1 <= self.num_single_frame_decoder <= self.num_decoder:
            raise ValueError("need 1 <= num_single_frame_decoder <= num_decoder")

    @property
    def num_pts(self) -> int:
        return self.num_fixed_pts + self.num_learnable_pts

    def operation_order(self) -> list[str]:
        """The reference's op list: single-frame blocks, then temporal ones, minus the first two."""
        single = ["gnn", "norm", "deformable", "ffn", "norm", "refine"]
        temporal = ["temp_gnn", "gnn", "norm", "deformable", "ffn", "norm", "refine"]
        order = single * self.num_single_frame_decoder + temporal * (self.num_decoder - self.num_single_frame_decoder)
        return order[2:]


@dataclass(frozen=True)
class ModelConfig:
    """Full camera model: backbone + neck + head, and the network input size ``(W, H)``."""

    name: str
    backbone: BackboneConfig
    head: HeadConfig
    input_wh: tuple[int, int] = (704, 256)


sparse4dv3_r50 = ModelConfig(
    name="sparse4dv3_r50",
    backbone=BackboneConfig(depth=50, base_channels=64, fpn_channels=256),
    head=HeadConfig(),
)

tiny = ModelConfig(
    name="tiny",
    backbone=BackboneConfig(depth=18, base_channels=16, fpn_channels=64),
    head=HeadConfig(
        embed_dims=64,
        num_groups=8,
        num_anchor=96,
        num_temp_instances=64,
        num_decoder=3,
        num_heads=4,
        ffn_dims=128,
        anchor_encoder_dims=(32, 8, 8, 16),
        num_output=32,
    ),
    input_wh=(352, 128),
)

PRESETS: dict[str, ModelConfig] = {"sparse4dv3_r50": sparse4dv3_r50, "tiny": tiny}


def get_preset(preset: str | ModelConfig) -> ModelConfig:
    """A preset by name, or the given :class:`ModelConfig` unchanged."""
    if isinstance(preset, ModelConfig):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}") from None
