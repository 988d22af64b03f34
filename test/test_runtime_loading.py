"""Model parameters -> model/backend: every refusal names its parameter; ORT runs the same pipeline as torch."""

import dataclasses

import numpy as np
import pytest
import torch
from test_runtime_pipeline import config, make_frame

from sparse_perception_ros.model import CLASS_NAMES
from sparse_perception_ros.params import ParameterError, load_params
from sparse_perception_ros.runtime.loading import load_model
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState

BASE = load_params().model


def with_(**kw):
    return dataclasses.replace(BASE, **kw)


@pytest.mark.parametrize("kw,name", [
    (dict(backend="tensorrt"), "model.engine"),
    (dict(backend="tensorrt", engine="/nonexistent.engine"), "model.backend"),
    (dict(checkpoint="/nonexistent.pth"), "model.checkpoint"),
] + ([(dict(device="cuda"), "model.device")] if not torch.cuda.is_available() else []))
def test_refusals_name_the_parameter(kw, name):
    with pytest.raises(ParameterError) as err:
        load_model(with_(**kw))
    assert err.value.name == name


def test_random_weights_are_announced_and_deterministic(monkeypatch):
    from sparse_perception_ros.runtime import loading

    monkeypatch.setattr(loading, "bundled_weights_path", lambda preset: None)  # as for a preset without weights
    a, note = load_model(BASE)
    b, _ = load_model(BASE)
    assert "RANDOM" in note and "backend torch" in note
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("preset", ["tiny", "tiny_fusion"])
def test_bundled_weights_load_strictly_and_are_announced(preset):
    from sparse_perception_ros.runtime.loading import bundled_weights_path

    path = bundled_weights_path(preset)
    if path is None:
        pytest.skip(f"no models/{preset}.pt bundled")
    model, note = load_model(with_(preset=preset))
    assert f"loaded {path}" in note and "RANDOM" not in note and "missing" not in note
    sd = torch.load(path, weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    sha = (path.parent / (path.name + ".sha256")).read_text().split()[0]
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha


def test_onnxruntime_backend_matches_torch_through_the_pipeline():
    """Same weights, same frames: ORT (exported step graph) vs torch eager over 3 frames."""
    torch_model, _ = load_model(BASE)
    ort_runner, note = load_model(with_(backend="onnxruntime"))
    assert "OrtBackend" in note
    results = []
    for model in (torch_model, ort_runner):
        pipe = Pipeline(model, CLASS_NAMES, config(max_detections=32))
        state, dets = PipelineState.empty(), []
        for k in range(3):
            det, state = pipe.step(make_frame(1_700_000_000_000_000_000 + k * 500_000_000, pose_x=0.3 * k), state)
            dets.append(det)
        results.append(dets)
    for dt, do in zip(*results, strict=True):
        # raw-output parity is 1e-4 (test_backends_parity); decoded scores within 1e-3, the same ids
        # and boxes for every rank whose score is not within 1e-4 of a neighbour (near-tie reordering)
        np.testing.assert_allclose(dt.scores, do.scores, atol=1e-3)
        gaps = np.abs(np.diff(dt.scores))
        clear = np.ones(len(dt.scores), bool)
        clear[:-1] &= gaps > 1e-4
        clear[1:] &= gaps > 1e-4
        assert clear.sum() >= 4  # random weights give many near-ties; enough clear ranks remain
        np.testing.assert_array_equal(dt.track_ids[clear], do.track_ids[clear])
        np.testing.assert_allclose(dt.boxes[clear], do.boxes[clear], atol=2e-3)
