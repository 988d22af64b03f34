"""Model presets as frozen dataclasses (no registry): :data:`sparse4dv3_r50` and :data:`tiny`.

``sparse4dv3_r50`` mirrors ``sparse4dv3_temporal_r50_1x8_bs6_256x704`` (the released
checkpoint layout). ``tiny`` runs the same code paths with small sizes for tests and the CPU demo.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = [
    "BackboneConfig",
    "HeadConfig",
    "LidarConfig",
    "ModelConfig",
    "sparse4dv3_r50",
    "tiny",
    "tiny_fusion",
    "PRESETS",
    "get_preset",
    "with_capacity",
    "with_num_cams",
    "MAX_CAMERAS",
]


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
    # 0: the decay applies once per frame (the reference, trained on 2 Hz keyframes); > 0: per this many
    # seconds, decay ** (time_interval / confidence_decay_interval), so a node running at 10-20 Hz
    # keeps the bank's per-second behaviour of the clips it was trained on (instance_bank.bank_decay)
    confidence_decay_interval: float = 0.0
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
        if self.confidence_decay_interval < 0:
            raise ValueError("confidence_decay_interval must be >= 0 (0 = per frame)")
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
class LidarConfig:
    """LiDAR candidate branch (SparseFusion-style fusion, ``model/lidar.py``).

    Points ``[x, y, z, intensity, dt]`` (model frame, metres, intensity 0..255, dt seconds) inside
    ``point_range = (x_min, y_min, z_min, x_max, y_max, z_max)`` are pillarised on a square grid of
    ``pillar_size`` metres; a BEV CNN with ``bev_stride`` and a CenterPoint-like heatmap + box
    head give ``num_candidates`` (K) anchors that replace the last K learned anchors of the
    instance bank. ``max_points`` is the static point count of exported graphs (clouds are
    padded to it, or thinned to it by the pipeline). Defaults: the nuScenes range, 0.6 m pillars.

    ``velocity``: the BEV box head also regresses ``(vx, vy)`` per cell (CenterPoint / TransFusion-L
    style, m/s in the model frame), and the candidates' anchors start with it instead of zero. It
    needs a motion cue in the input: several sweeps with their time lag ``dt`` (multi-sweep LiDAR).
    False keeps the 8-channel regression of the bundled ``tiny_fusion`` weights.

    ``bev_channels``: width of the BEV CNN's two 3x3 convolutions after the pillar stage; None = the
    head's E (the bundled ``tiny_fusion``: 64). A narrower trunk is followed by a 1x1 convolution up
    to E (the heads and the head's BEV sampling read E channels). Until 2026-12-07 this field was
    not read at all (the trunk was always E wide).
    """

    point_range: tuple[float, float, float, float, float, float] = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
    pillar_size: float = 0.6
    point_dims: int = 5
    pillar_channels: int = 32
    bev_channels: int | None = None
    bev_stride: int = 2
    num_candidates: int = 32
    max_points: int = 300_000
    velocity: bool = False

    def __post_init__(self) -> None:
        x0, y0, z0, x1, y1, z1 = self.point_range
        if not (x1 > x0 and y1 > y0 and z1 > z0):
            raise ValueError(f"point_range must be (x_min, y_min, z_min, x_max, y_max, z_max), got {self.point_range}")
        if self.pillar_size <= 0:
            raise ValueError(f"pillar_size must be positive, got {self.pillar_size}")
        if self.point_dims < 4:
            raise ValueError(f"point_dims must be >= 4 (x, y, z, intensity[, dt]), got {self.point_dims}")
        if self.bev_stride not in (1, 2, 4):
            raise ValueError(f"bev_stride must be 1, 2 or 4, got {self.bev_stride}")
        nx, ny = self.grid_size
        if nx % self.bev_stride or ny % self.bev_stride:
            raise ValueError(f"grid {nx}x{ny} is not divisible by bev_stride {self.bev_stride}")
        if self.bev_channels is not None and self.bev_channels < 1:
            raise ValueError(f"bev_channels must be >= 1 or None (the head's E), got {self.bev_channels}")
        if self.num_candidates < 1 or self.max_points < 1:
            raise ValueError("num_candidates and max_points must be >= 1")

    @property
    def reg_dims(self) -> int:
        """Channels of the BEV box regression: ``[dx, dy, z, log W, log L, log H, sin, cos]`` (8),
        then ``vx, vy`` with :attr:`velocity` (10)."""
        return 10 if self.velocity else 8

    @property
    def grid_size(self) -> tuple[int, int]:
        """Pillar grid ``(nx, ny)``."""
        x0, y0, _, x1, y1, _ = self.point_range
        return int(round((x1 - x0) / self.pillar_size)), int(round((y1 - y0) / self.pillar_size))

    @property
    def bev_size(self) -> tuple[int, int]:
        """BEV feature map ``(W_bev, H_bev)`` = grid / stride (x along W, y along H)."""
        nx, ny = self.grid_size
        return nx // self.bev_stride, ny // self.bev_stride

    @property
    def bev_cell(self) -> float:
        """Metres per BEV feature cell."""
        return self.pillar_size * self.bev_stride


@dataclass(frozen=True)
class ModelConfig:
    """Full model: backbone + neck + head, the network input size ``(W, H)`` and, for fused
    presets, the LiDAR branch (``lidar=None``: camera-only, the released layout)."""

    name: str
    backbone: BackboneConfig
    head: HeadConfig
    input_wh: tuple[int, int] = (704, 256)
    lidar: LidarConfig | None = None

    def __post_init__(self) -> None:
        if self.lidar is not None and self.lidar.num_candidates > self.head.num_anchor:
            raise ValueError(f"lidar.num_candidates ({self.lidar.num_candidates}) must not exceed head.num_anchor "
                             f"({self.head.num_anchor})")


sparse4dv3_r50 = ModelConfig(
    name="sparse4dv3_r50",
    backbone=BackboneConfig(depth=50, base_channels=64, fpn_channels=256),
    head=HeadConfig(),
)

# The CPU camera model. Head capacity sized for dense traffic (issue 20): 192 anchors (128 carried to
# the next frame, 64 new per frame) and 64 outputs (bench/bench_capacity.py: no recall cap at 60 objects
# per scene); the bundled camera weights before 2026-12-06 had 96 / 64 / 32.
tiny = ModelConfig(
    name="tiny",
    backbone=BackboneConfig(depth=18, base_channels=16, fpn_channels=64),
    head=HeadConfig(
        embed_dims=64,
        num_groups=8,
        num_anchor=192,
        num_temp_instances=128,
        num_decoder=3,
        num_heads=4,
        ffn_dims=128,
        anchor_encoder_dims=(32, 8, 8, 16),
        num_output=64,
    ),
    input_wh=(352, 128),
)

# The tiny model plus the LiDAR branch (the same head capacity, one decoder fewer). K = 96 LiDAR
# candidates take the last 96 of the 192 first-decoder anchors when a sweep is present (they compete
# with the rest in the bank update, which keeps 64 of the 192 beside the 128 temporal instances); the
# BEV head regresses their velocity from several sweeps (LidarConfig.velocity). v3's weights were
# trained with K = 32; K = 96 at inference alone lifts their validation mAP / AMOTA from 0.838 / 0.750
# to 0.857 / 0.797 (40 objects per scene) and from 0.717 / 0.648 to 0.837 / 0.792 (60), at no
# measurable cost, and the bundled v4 is v3 fine-tuned at 96 (models/README.md, bench/RESULTS.md
# twelfth measurement; train --lidar-candidates retrains at another K).
# Clouds are thinned to 60k points on the CPU. Two decoders since 2026-12-06 (issue 21: a 20 Hz LiDAR
# on two CPU cores; the weights before had 3 and were fine-tuned into these, models/README.md): the
# LiDAR candidates start near their objects, and the third decoder's refinement did not pay for its
# ~9 ms per sweep (validation mAP and AMOTA of the 2-decoder model are no lower).
tiny_fusion = ModelConfig(
    name="tiny_fusion",
    backbone=tiny.backbone,
    head=replace(tiny.head, num_decoder=2),
    input_wh=tiny.input_wh,
    lidar=LidarConfig(max_points=60_000, velocity=True, num_candidates=96),
)

PRESETS: dict[str, ModelConfig] = {"sparse4dv3_r50": sparse4dv3_r50, "tiny": tiny, "tiny_fusion": tiny_fusion}


def get_preset(preset: str | ModelConfig) -> ModelConfig:
    """A preset by name, or the given :class:`ModelConfig` unchanged."""
    if isinstance(preset, ModelConfig):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}") from None


MAX_CAMERAS = 12


def with_capacity(cfg: ModelConfig, num_anchor: int, num_temp_instances: int, num_output: int) -> ModelConfig:
    """``cfg`` with another head capacity: anchors (instances per frame), temporal instances carried
    to the next frame, and outputs decoded per frame (``bench/bench_capacity.py`` measures the cost
    and the recall ceiling). The learned anchor table has ``num_anchor`` rows, so weights of another
    capacity do not load as they are (training's ``--init`` grows them)."""
    head = replace(cfg.head, num_anchor=int(num_anchor), num_temp_instances=int(num_temp_instances),
                   num_output=int(num_output))
    return replace(cfg, head=head)


def with_num_cams(cfg: ModelConfig, num_cams: int) -> ModelConfig:
    """``cfg`` for a rig of ``num_cams`` cameras (1 to :data:`MAX_CAMERAS`). The weights do not depend
    on the count (each camera's embedding is computed from its own projection matrix, the DFA sums
    over cameras), so a checkpoint of any count loads; only the static shapes change."""
    n = int(num_cams)
    if not 1 <= n <= MAX_CAMERAS:
        raise ValueError(f"num_cams must be in [1, {MAX_CAMERAS}], got {num_cams}")
    if n == cfg.head.num_cams:
        return cfg
    return replace(cfg, head=replace(cfg.head, num_cams=n))
