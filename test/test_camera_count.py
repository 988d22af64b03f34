"""Any camera rig (issue 19, point 15): the same weights run 1 to 12 cameras.

Nothing learned depends on the camera count (each camera's embedding comes from its own
projection matrix; the deformable aggregation sums over cameras), so a checkpoint trained on six
cameras loads strictly into a model built for four, and the torch backend and the ONNX graph
exported for that count agree (1e-4, the backends' parity tolerance).
"""

import numpy as np
import pytest
import torch

from sparse_perception_ros.model import TemporalState, build_model
from sparse_perception_ros.model.config import get_preset, with_num_cams
from sparse_perception_ros.params import ParameterError, load_params
from sparse_perception_ros.runtime.backends import BackendUnavailable, OrtBackend, StepRunner, torch_stepper
from sparse_perception_ros.runtime.example_inputs import synthetic_sequence
from sparse_perception_ros.runtime.export import export_cached
from sparse_perception_ros.runtime.loading import bundled_weights_path, load_model


def test_config_for_a_camera_count_is_validated():
    cfg = with_num_cams(get_preset("tiny"), 4)
    assert cfg.head.num_cams == 4 and get_preset("tiny").head.num_cams == 6
    assert with_num_cams(cfg, 4) is cfg
    for bad in (0, 13):
        with pytest.raises(ValueError, match="num_cams"):
            with_num_cams(cfg, bad)
    with pytest.raises(ParameterError) as err:
        load_model(load_params().model, num_cams=0)
    assert err.value.name == "cameras.names"


@pytest.mark.parametrize("cams", [1, 5])
def test_six_camera_weights_run_other_rigs_on_torch_and_onnxruntime(cams, tmp_path):
    path = bundled_weights_path("tiny")
    if path is None:
        pytest.skip("no bundled models/tiny.pt")
    cfg = with_num_cams(get_preset("tiny"), cams)
    model = build_model(cfg)
    model.load_official_checkpoint(path)  # strict: every key of the 6-camera checkpoint fits
    frames = synthetic_sequence(cfg, 2, with_backbone=True, seed=cams)
    assert frames[0].images[0].shape[1] == cams
    torch_runner = torch_stepper(model)
    ort_runner = StepRunner(OrtBackend(export_cached(model, cfg, tmp_path)), cfg)
    assert ort_runner.backend.input_spec()["img"].shape[1] == cams
    state = TemporalState.empty()
    for f in frames:  # both start each frame from the torch state (teacher forced: a top-k near-tie
        outs = []     # in one backend's cache would otherwise change every later frame)
        for runner in (torch_runner, ort_runner):
            out, nxt = runner.step(torch.from_numpy(f.images[0]), torch.from_numpy(f.projection_mat),
                                   torch.from_numpy(f.image_wh), f.timestamp, f.T_world_from_model, state)
            outs.append((out, nxt))
        for name in ("classification", "prediction", "quality"):
            np.testing.assert_allclose(getattr(outs[1][0], name).numpy(), getattr(outs[0][0], name).numpy(),
                                       atol=1e-4, rtol=0)
        state = outs[0][1]
    assert not state.is_empty


def test_a_graph_of_the_old_per_level_feature_interface_is_refused_with_the_fix(tmp_path):
    """Graph format 3 and before took feat_l0..3 after the backbone; such a file is named, not run."""
    import onnx

    path = export_cached(build_model("tiny").after_backbone(), get_preset("tiny"), tmp_path)
    model = onnx.load(str(path))
    model.graph.input[0].name = "feat_l0"  # the first input was mc_ms_feat: now an old-style name
    for node in model.graph.node:
        node.input[:] = ["feat_l0" if name == "mc_ms_feat" else name for name in node.input]
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    with pytest.raises(BackendUnavailable, match="takes feat_l0..3.*re-export"):
        StepRunner(OrtBackend(old), get_preset("tiny"))


def test_a_graph_for_another_camera_count_is_refused(tmp_path):
    six = build_model("tiny")
    onnx = export_cached(six, get_preset("tiny"), tmp_path)
    with pytest.raises(BackendUnavailable, match="6 cameras, the rig has 4"):
        StepRunner(OrtBackend(onnx), with_num_cams(get_preset("tiny"), 4))
