"""The pillar encoder in C (``ops.pillars_cpu``, the node's bf16 LiDAR runner) against the torch
reference ``PillarEncoder``: the same pillars within 5e-5 absolute + 1e-5 relative, the reference's
edge rules included. The MLP's dot products are summed in another order than torch's GEMM; with these
random weights (std 0.5 on coordinates up to 54 m) its intermediate values reach ~100, where float32's
spacing is 7.6e-6, so a couple of ulps there (measured up to 1.3e-5) is the expected difference."""

import dataclasses

import numpy as np
import pytest
import torch

from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.model.lidar import PillarEncoder, pad_points
from sparse_perception_ros.ops import pillars_cpu

pytestmark = pytest.mark.skipif(not pillars_cpu.available(), reason="no C compiler: the pillar kernel cannot be built")

LID = get_preset("tiny_fusion").lidar


def encoder(cfg=LID, seed=0) -> PillarEncoder:
    torch.manual_seed(seed)
    enc = PillarEncoder(cfg).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0, 0.5)
    return enc


def reference(enc: PillarEncoder, points: np.ndarray) -> np.ndarray:
    """The torch encoder on ``points (N, D)`` -> ``[ny, nx, C + 1]``."""
    pts = pad_points(torch.from_numpy(points)[None], enc.cfg.point_dims)
    with torch.no_grad():
        return enc(pts, torch.tensor([len(points)]))[0].permute(1, 2, 0).numpy()


def sweep(rng, n: int, cols: int = 4) -> np.ndarray:
    """Dense clusters (many points per pillar), points spread over and past the grid, and bad rows."""
    x0, y0, z0, x1, y1, z1 = LID.point_range
    xy = np.r_[rng.normal(0, 6, (n // 2, 2)), rng.uniform(x0 - 5, x1 + 5, (n - n // 2, 2))]
    pts = np.c_[xy, rng.uniform(z0 - 1, z1 + 1, n), rng.uniform(0, 255, n), rng.uniform(0, 0.5, (n, cols - 4))]
    pts = pts.astype(np.float32)
    pts[:5, 0] = [np.nan, np.inf, -np.inf, x1, x0]  # NaN / inf positions and the grid's exact edges
    pts[5:8, 3] = [np.nan, np.inf, -np.inf]  # bad intensities count as 0
    return pts


@pytest.mark.parametrize("dims", [4, 5])
def test_kernel_matches_the_torch_encoder(dims):
    cfg = dataclasses.replace(LID, point_dims=dims) if dims != LID.point_dims else LID
    enc = encoder(cfg)
    kernel = pillars_cpu.PillarKernel(enc)
    rng = np.random.default_rng(dims)
    for cols in (3, 4, 6):  # missing columns are 0, extra ones ignored (pad_points)
        pts = sweep(rng, 20000, max(cols, 4))[:, :cols]
        got, ref = kernel(pts), reference(enc, pts)
        assert got.shape == ref.shape == (*LID.grid_size[::-1], enc.mlp[0].out_features + 1)
        assert np.count_nonzero(ref[..., -1]) > 1000  # many occupied pillars, counts up to dozens
        np.testing.assert_allclose(got, ref, atol=5e-5, rtol=1e-5)


def test_no_points_gives_an_empty_grid_and_bad_input_raises():
    kernel = pillars_cpu.PillarKernel(encoder())
    for empty in (None, np.zeros((0, 4), np.float32)):
        out = kernel(empty)
        assert out.shape[:2] == LID.grid_size[::-1] and not out.any()
    with pytest.raises(ValueError, match="points must be"):
        kernel(np.zeros((10, 2), np.float32))


def test_bf16_runner_pillars_in_c_equal_the_onnxruntime_pillars(tmp_path):
    """The node's runner with the C pillars and with the exported encoder in ONNX Runtime (the
    fallback): the same pillar maps within 5e-5 (as above), and the C one is what ``auto`` picks here."""
    from types import SimpleNamespace

    from sparse_perception_ros.model import build_model
    from sparse_perception_ros.runtime.export import lidar_step_inputs
    from sparse_perception_ros.runtime.lidar_features import Bf16LidarBranchRunner

    model = SimpleNamespace(pts_branch=build_model(get_preset("tiny_fusion")).pts_branch)
    c, ort = Bf16LidarBranchRunner(model, tmp_path), Bf16LidarBranchRunner(model, tmp_path, pillars="onnxruntime")
    assert c.kernel is not None and c.name.startswith("C pillars") and ort.kernel is None
    pts = sweep(np.random.default_rng(1), 24000)
    (via_ort,) = ort.session.run(None, lidar_step_inputs(pts, LID, dynamic=True))
    np.testing.assert_allclose(c.kernel(pts), via_ort[0], atol=5e-5, rtol=1e-5)
    assert c.run(None)["lidar_valid"].tolist() == [0.0] and c.run(pts)["lidar_valid"].tolist() == [1.0]
    with pytest.raises(ValueError, match="max_points"):
        c.run(np.zeros((LID.max_points + 1, 4), np.float32))
