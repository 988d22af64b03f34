"""Issue 21: the fused model's LiDAR branch apart from the head's step (runtime/lidar_features.py).

Running the branch ahead (``model.lidar_features: ahead``) must not change what the node publishes:
the branch's outputs equal the in-graph branch's, and a pipeline fed with them (prepared ahead, or
made in the step) publishes the same boxes, scores and ids as the one graph, on torch and on ONNX
Runtime (whose head graph then has no scatter at all). Its convolutions in bfloat16
(``model.lidar_precision: bf16``) stay within the stated tolerance of float32.
"""

import dataclasses
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from helpers.frames import make_frame
from helpers.pipeline import clear_ranks, pipeline_config

from sparse_perception_ros.model import CLASS_NAMES, build_model
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.params import ParameterError, load_params
from sparse_perception_ros.runtime import loading
from sparse_perception_ros.runtime.backends import StepRunner, TorchBackend
from sparse_perception_ros.runtime.export import LIDAR_CANDIDATE_INPUTS, export_cached
from sparse_perception_ros.runtime.lidar_features import (
    Bf16LidarBranchRunner,
    LidarBranchRunner,
    OrtLidarBranchRunner,
    native_bf16,
)
from sparse_perception_ros.runtime.loading import load_model
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState

BASE = load_params().model
T0, S = 1_700_000_000_000_000_000, 1_000_000_000


def with_(**kw):
    kw.setdefault("lidar_precision", "fp32")  # the exactness tests; bf16 has its own below
    return dataclasses.replace(BASE, preset="tiny_fusion", **kw)


def frames(n: int):
    """A 20 Hz drive with a ~6000-point sweep per frame (one frame without a sweep: the camera-only path)."""
    out = []
    for k in range(n):
        f = make_frame(T0 + k * S // 20, seed=k // 2, pose_x=0.1 * k)
        rng = np.random.default_rng(k)
        m = 6000 + 500 * k
        f.points = None if k == 3 else np.c_[rng.uniform(-30, 30, (m, 2)), rng.uniform(-2, 1, m),
                                             rng.uniform(0, 100, m)].astype(np.float32)
        out.append(f)
    return out


def run(pipe: Pipeline, fs, ahead: bool):
    state, dets = PipelineState.empty(), []
    for f in fs:
        prepared = pipe.prepare(f) if ahead else None  # what the node's preparing thread does
        det, state = pipe.step(f, state, prepared)
        dets.append(det)
    return dets


def assert_same_output(ref, got):
    for k, (r, g) in enumerate(zip(ref, got, strict=True)):
        assert len(r.scores) == len(g.scores) > 0, f"frame {k}"
        np.testing.assert_allclose(g.scores, r.scores, atol=1e-4, rtol=0, err_msg=f"frame {k}")
        clear = clear_ranks(r.scores, 1e-4)  # ranks not within 1e-4 of a neighbour (near ties may swap)
        np.testing.assert_array_equal(g.track_ids[clear], r.track_ids[clear], err_msg=f"frame {k}")
        np.testing.assert_allclose(g.boxes[clear], r.boxes[clear], atol=1e-3, rtol=0, err_msg=f"frame {k}")


@pytest.mark.parametrize("kind", ["onnxruntime", "torch"])
def test_branch_outputs_match_the_model_branch(kind):
    """The runner pads the sweep as the graph does; its outputs are the model's own branch's (the
    ONNX Runtime runner, the node's choice where it is installed, within float rounding)."""
    stepper = load_model(with_(lidar_features="ahead")).stepper
    assert stepper.lidar_branch.name == "onnxruntime"  # installed here: the node's runner
    runner = stepper.lidar_branch if kind == "onnxruntime" else \
        LidarBranchRunner(SimpleNamespace(pts_branch=stepper.lidar_branch.branch))
    model_branch = runner.branch
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-40, 40, (9000, 2)), rng.uniform(-2, 1, 9000), rng.uniform(0, 100, 9000)].astype(np.float32)
    got = runner.run(pts)
    assert list(got) == list(LIDAR_CANDIDATE_INPUTS)
    with torch.no_grad():
        ref = model_branch(torch.from_numpy(np.c_[pts, np.zeros((len(pts), 1), np.float32)])[None],
                           torch.tensor([len(pts)]))
    tol = 1e-5 if kind == "torch" else 1e-4  # zero padding changes nothing; ONNX Runtime's convolutions round apart
    assert got["lidar_bev"].is_contiguous() and got["lidar_bev"].shape == ref.bev.permute(0, 2, 3, 1).shape
    torch.testing.assert_close(got["lidar_bev"], ref.bev.permute(0, 2, 3, 1), atol=tol, rtol=0)  # channels last
    torch.testing.assert_close(got["lidar_anchor"], ref.anchor, atol=tol, rtol=0)
    torch.testing.assert_close(got["lidar_feature"], ref.feature, atol=tol, rtol=0)
    assert got["lidar_valid"].tolist() == [1.0] and runner.run(None)["lidar_valid"].tolist() == [0.0]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_pipeline_with_the_branch_ahead_publishes_what_the_one_graph_does(backend):
    one = load_model(with_(backend=backend, lidar_features="in_step")).stepper
    split = load_model(with_(backend=backend, lidar_features="ahead")).stepper
    assert split.lidar_branch is not None and one.lidar_branch is None
    assert split.backend.lidar_apart and not one.backend.lidar_apart
    assert "points" not in split.backend.input_spec() and "lidar_bev" in split.backend.input_spec()
    fs = frames(6)
    ref = run(Pipeline(one, CLASS_NAMES, pipeline_config(max_detections=32)), fs, ahead=False)
    pipe = Pipeline(split, CLASS_NAMES, pipeline_config(max_detections=32))
    got = run(pipe, fs, ahead=True)
    assert all("lidar" in g.timings_ms for g in got) and not any("lidar" in r.timings_ms for r in ref)
    assert_same_output(ref, got)
    # made in the step when not prepared ahead (eval --offline): the same again
    assert_same_output(ref, run(Pipeline(split, CLASS_NAMES, pipeline_config(max_detections=32)), fs, ahead=False))


def test_head_graph_without_the_branch_has_no_scatter(tmp_path):
    """The point of the split for ONNX Runtime: its slow ScatterND(add) leaves the exported step."""
    model = build_model(get_preset("tiny_fusion"))
    cfg = model.cfg
    with_branch = onnx.load(str(export_cached(model.after_backbone(), cfg, tmp_path))).graph
    path = export_cached(model.after_lidar(), cfg, tmp_path)
    graph = onnx.load(str(path)).graph
    assert "after_lidar" in path.name
    assert [i.name for i in graph.input][-4:] == list(LIDAR_CANDIDATE_INPUTS)
    scatter = ("ScatterND", "ScatterElements")
    assert any(n.op_type in scatter for n in with_branch.node)
    assert not any(n.op_type in scatter for n in graph.node)


def test_prepared_must_belong_to_its_frame():
    stepper = load_model(with_(lidar_features="ahead")).stepper
    pipe = Pipeline(stepper, CLASS_NAMES, pipeline_config())
    a, b = frames(2)
    with pytest.raises(ValueError, match="prepared for the frame"):
        pipe.step(b, PipelineState.empty(), pipe.prepare(a))


def test_runner_needs_a_graph_without_the_branch_and_vice_versa():
    stepper = load_model(with_(backend="torch", lidar_features="in_step")).stepper
    with pytest.raises(ValueError, match="lidar_branch"):
        StepRunner(stepper.backend, stepper.cfg, stepper.camera_backbone, LidarBranchRunner(stepper.backend.graph))
    ahead = load_model(with_(backend="torch", lidar_features="ahead")).stepper
    with pytest.raises(ValueError, match="lidar_branch"):
        StepRunner(ahead.backend, ahead.cfg, ahead.camera_backbone)
    assert isinstance(ahead.backend, TorchBackend)


def test_lidar_features_parameter():
    assert load_model(with_()).stepper.lidar_branch is not None  # auto on CPU: ahead
    assert load_model(with_(compile=True)).stepper.lidar_branch is None  # auto: the whole step compiled
    assert load_model(dataclasses.replace(BASE, preset="tiny", lidar_features="ahead")).stepper.lidar_branch is None
    for bad, name in [(dict(lidar_features="ahead", compile=True), "model.lidar_features"),
                      (dict(lidar_features="ahead", image_features="in_step"), "model.lidar_features"),
                      (dict(lidar_features="sometimes"), "model.lidar_features")]:
        with pytest.raises(ParameterError) as err:
            load_model(with_(**bad))
        assert err.value.name == name


def test_onnxruntime_scatter_runs_on_one_thread_and_repeats_exactly(tmp_path):
    """ONNX Runtime's ScatterND(add) (the pillar pooling) loses updates on several intra-op threads
    (measured: outputs off by metres between identical runs): the branch runner and a fused step graph
    with the sweep in it run it on one thread, so the same sweep gives the same outputs bit for bit."""
    from sparse_perception_ros.runtime.backends import OrtBackend, has_reducing_scatter

    model = build_model(get_preset("tiny_fusion"))
    rng = np.random.default_rng(0)
    n = 30000  # dense: many points per pillar, where lost updates show
    pts = np.c_[rng.normal(0, 8, (n, 2)), rng.uniform(-2, 1, n), rng.uniform(0, 100, n)].astype(np.float32)
    runner = OrtLidarBranchRunner(model, num_threads=4, cache_dir=tmp_path)
    assert runner.session.get_session_options().intra_op_num_threads == 1
    first = runner.run(pts)
    for _ in range(3):
        for name, value in runner.run(pts).items():
            assert torch.equal(value, first[name]), name
    path = export_cached(model.after_backbone(), model.cfg, tmp_path)
    assert has_reducing_scatter(onnx.load(str(path)))
    with pytest.warns(RuntimeWarning, match="1 intra-op thread"):
        backend = OrtBackend(path, num_threads=2)
    assert backend.session.get_session_options().intra_op_num_threads == 1
    assert not has_reducing_scatter(onnx.load(str(export_cached(model.after_lidar(), model.cfg, tmp_path))))


def _sweep(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # clustered like objects on a road, so the heatmap has clear peaks: 40 blobs plus ground clutter
    centres = rng.uniform(-40, 40, (40, 2))
    blobs = np.repeat(centres, n // 80, axis=0) + rng.normal(0, 0.8, (40 * (n // 80), 2))
    xy = np.r_[blobs, rng.uniform(-50, 50, (n - len(blobs), 2))]
    return np.c_[xy, rng.uniform(-2, 1, n), rng.uniform(0, 100, n)].astype(np.float32)


def test_bf16_branch_stays_within_tolerance_of_float32():
    """bf16 convolutions (BatchNorm folded, heatmap and box heads as one) against the float32 branch
    on the same bundled weights: BEV features within 2 % relative RMS (measured 0.5 %), at least 30
    of float32's 32 best-scoring candidates found among bf16's at the same place (within 0.1 m; only
    peaks that score alike may swap; the rest of the K are mostly clutter of near-equal score) with
    their features within 5 %. Runs on any CPU (without native bf16, torch emulates it, slowly)."""
    stepper = load_model(with_(lidar_features="ahead")).stepper
    model = SimpleNamespace(pts_branch=stepper.lidar_branch.branch)
    fp32, bf16 = OrtLidarBranchRunner(model), Bf16LidarBranchRunner(model)
    for seed in range(3):
        pts = _sweep(seed, 24000)
        a, b = fp32.run(pts), bf16.run(pts)
        assert list(b) == list(LIDAR_CANDIDATE_INPUTS)
        assert all(b[k].dtype == torch.float32 and b[k].shape == a[k].shape for k in a)
        rel = float((b["lidar_bev"] - a["lidar_bev"]).pow(2).mean().sqrt() / a["lidar_bev"].pow(2).mean().sqrt())
        assert 0 < rel < 0.02, f"seed {seed}: BEV features {rel:.2%} from float32"
        dist = torch.cdist(a["lidar_anchor"][0, :32, :3], b["lidar_anchor"][0, :, :3])  # top-K rows: best first
        nearest, match = dist.min(1)
        same = nearest < 0.1
        assert int(same.sum()) >= 30, f"seed {seed}: only {int(same.sum())} of 32 candidates kept their place"
        fa, fb = a["lidar_feature"][0, :32][same], b["lidar_feature"][0, match[same]]
        assert float((fa - fb).pow(2).mean().sqrt() / fa.pow(2).mean().sqrt()) < 0.05
    assert bf16.run(None)["lidar_valid"].tolist() == [0.0]


def test_lidar_precision_parameter(monkeypatch):
    auto = load_model(with_(lidar_precision="auto"))
    if native_bf16():  # this machine and CI: AVX-512 BF16
        assert isinstance(auto.stepper.lidar_branch, Bf16LidarBranchRunner) and "bf16 convolutions" in auto.note
        assert isinstance(load_model(with_(lidar_precision="bf16")).stepper.lidar_branch, Bf16LidarBranchRunner)
    else:
        assert type(auto.stepper.lidar_branch) is OrtLidarBranchRunner
        assert "fp32 (this CPU has no native bf16" in auto.note
    fp32 = load_model(with_(lidar_precision="fp32"))
    assert type(fp32.stepper.lidar_branch) is OrtLidarBranchRunner and "fp32 (model.lidar_precision)" in fp32.note
    monkeypatch.setattr(loading, "native_bf16", lambda: False)
    assert type(load_model(with_(lidar_precision="auto")).stepper.lidar_branch) is OrtLidarBranchRunner
    for bad in ("bf16", "half"):
        with pytest.raises(ParameterError) as err:
            load_model(with_(lidar_precision=bad))
        assert err.value.name == "model.lidar_precision"
    assert load_model(dataclasses.replace(BASE, preset="tiny", lidar_precision="bf16")).stepper.lidar_branch is None
