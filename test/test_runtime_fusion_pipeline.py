"""Pipeline with a fused model (tiny_fusion, random weights): sensor modes, point thinning, and the
same answers from the torch model and the ONNX Runtime step runner.

Exactness: modes are compared exactly (the same tensors reach the same model); torch vs ONNX
Runtime at atol 1e-4 on scores and boxes of one frame with a sweep.
"""

import numpy as np
import pytest
import torch
from helpers.frames import make_frame
from helpers.pipeline import pipeline_config

from sparse_perception_ros.model import CLASS_NAMES, build_model
from sparse_perception_ros.runtime.backends import torch_stepper
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState, thin_points


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny_fusion")


def sweep(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(-40, 40, (n, 2)), rng.uniform(-2, 1, n), rng.uniform(0, 255, n)].astype(np.float32)


def run(pipeline, frame):
    det, _ = pipeline.step(frame, PipelineState.empty())
    return det


def test_modes(model):
    stepper = torch_stepper(model)
    both = Pipeline(stepper, CLASS_NAMES, pipeline_config(sensors="all"))
    cam = Pipeline(stepper, CLASS_NAMES, pipeline_config(sensors="camera_only"))
    lid = Pipeline(stepper, CLASS_NAMES, pipeline_config(sensors="lidar_only"))
    f = make_frame()
    f.points = sweep()
    no_points = make_frame()
    d_all, d_cam, d_none = run(both, f), run(cam, f), run(both, no_points)
    np.testing.assert_array_equal(d_cam.scores, d_none.scores)  # camera_only ignores the sweep
    assert not np.array_equal(d_all.scores, d_cam.scores)
    d_lid = run(lid, f)
    masked = make_frame(present=np.zeros(6, bool))
    masked.points = f.points
    np.testing.assert_array_equal(d_lid.scores, run(both, masked).scores)  # lidar_only = every camera masked
    assert np.isfinite(d_lid.boxes).all()


def test_camera_model_refuses_lidar_only():
    with pytest.raises(ValueError, match="lidar_only"):
        Pipeline(torch_stepper(build_model("tiny")), CLASS_NAMES, pipeline_config(sensors="lidar_only"))
    with pytest.raises(ValueError, match="sensors"):
        pipeline_config(sensors="radar")


def test_large_sweeps_are_thinned_and_counted(model):
    p = Pipeline(torch_stepper(model), CLASS_NAMES, pipeline_config())
    cap = model.cfg.lidar.max_points
    pts = sweep(cap + 1234)
    thin = thin_points(pts, cap)
    assert len(thin) <= cap and len(thin) >= cap // 2
    np.testing.assert_array_equal(thin[1], pts[2])
    f = make_frame()
    f.points = pts
    assert run(p, f).counters["points_thinned"] == 1
    f.points = thin
    assert run(p, f).counters["points_thinned"] == 0


def test_ort_runner_matches_torch_in_the_pipeline(model, tmp_path):
    from sparse_perception_ros.runtime.backends import build_stepper

    runner = build_stepper("onnxruntime", "tiny_fusion", module=model, cache_dir=tmp_path)
    f = make_frame()
    f.points = sweep(3000, seed=1)
    a = run(Pipeline(torch_stepper(model), CLASS_NAMES, pipeline_config()), f)
    b = run(Pipeline(runner, CLASS_NAMES, pipeline_config()), f)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4, rtol=0)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(a.track_ids, b.track_ids)
