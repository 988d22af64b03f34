"""Model parameters -> model/backend: every refusal names its parameter; ORT runs the same pipeline as torch."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers.frames import make_frame
from helpers.pipeline import pipeline_config

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
    a, b = load_model(with_(backend="torch")), load_model(with_(backend="torch"))
    assert a.random_weights and "RANDOM" in a.note and "backend TorchBackend" in a.note
    note = load_model(BASE).note
    assert "backend OrtBackend" in note  # the shipped default
    from sparse_perception_ros.ops import dfa_ort_native

    assert f"(DFA op {'native' if dfa_ort_native.available() else 'python'})" in note
    sa, sb = a.stepper.backend.graph.state_dict(), b.stepper.backend.graph.state_dict()
    for (ka, va), (kb, vb) in zip(sa.items(), sb.items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("preset", ["tiny", "tiny_fusion"])
def test_bundled_weights_load_strictly_and_are_announced(preset):
    from sparse_perception_ros.runtime.loading import bundled_weights_path

    path = bundled_weights_path(preset)
    if path is None:
        pytest.skip(f"no models/{preset}.pt bundled")
    loaded = load_model(with_(preset=preset, backend="torch", image_features="in_step"))  # the whole model in one graph
    note = loaded.note
    assert f"loaded {path}" in note and "RANDOM" not in note and "missing" not in note and not loaded.random_weights
    sd = torch.load(path, weights_only=True)
    module = loaded.stepper.backend.graph.backbone  # the full model the torch backend runs
    for k, v in module.state_dict().items():
        assert torch.equal(v, sd[k]), k
    sha = (path.parent / (path.name + ".sha256")).read_text().split()[0]
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha


def test_every_backend_gives_the_same_typed_stepper():
    from sparse_perception_ros.runtime.backends import OrtBackend, StepRunner, TorchBackend

    torch_loaded, ort_loaded = load_model(with_(backend="torch")), load_model(BASE)  # the shipped default: ORT
    assert type(torch_loaded.stepper) is type(ort_loaded.stepper) is StepRunner
    assert isinstance(torch_loaded.stepper.backend, TorchBackend) and isinstance(ort_loaded.stepper.backend, OrtBackend)
    # the DFA implementation is resolved explicitly: the C kernel on CPU (auto), or what was asked
    assert torch_loaded.stepper.backend.dfa_impl == "fast"
    assert load_model(with_(backend="torch", dfa_impl="reference")).stepper.backend.dfa_impl == "reference"
    with pytest.raises(ParameterError) as err:
        load_model(with_(backend="torch", dfa_impl="triton"))
    assert err.value.name == "model.dfa_impl"


def test_node_torch_backend_and_onnxruntime_give_the_same_boxes():
    """The node's two CPU backends (load_model with the shipped parameters and bundled weights) on the
    same synthetic drive, each carrying its own state: every instance's decoded box, and the
    published boxes, within 1e-4; the same track ids."""
    from sparse_perception_ros.model.config import get_preset
    from sparse_perception_ros.model.decoding import decode_box
    from sparse_perception_ros.runtime.example_inputs import synthetic_sequence

    steppers = [load_model(BASE).stepper, load_model(with_(backend="onnxruntime")).stepper]
    frames = synthetic_sequence(get_preset(BASE.preset), 4, with_backbone=True, seed=11)
    states = [None, None]
    from sparse_perception_ros.model import TemporalState

    states = [TemporalState.empty(), TemporalState.empty()]
    for i, f in enumerate(frames):
        outs = []
        for j, stepper in enumerate(steppers):
            out, states[j] = stepper.step(torch.from_numpy(f.images[0]), torch.from_numpy(f.projection_mat),
                                          torch.from_numpy(f.image_wh), f.timestamp, f.T_world_from_model, states[j])
            outs.append(out)
        t, o = outs
        np.testing.assert_allclose(decode_box(o.prediction).numpy(), decode_box(t.prediction).numpy(), atol=1e-4,
                                   rtol=0, err_msg=f"frame {i}")
        # the published top-k: same order except where two scores are within 1e-5 (a near tie may swap)
        gaps = np.abs(np.diff(t.scores.numpy()))
        clear = np.ones(len(gaps) + 1, bool)
        clear[:-1] &= gaps > 1e-5
        clear[1:] &= gaps > 1e-5
        assert clear.sum() >= len(clear) // 2, f"frame {i}: too few clear ranks to compare"
        np.testing.assert_allclose(o.boxes.numpy()[clear], t.boxes.numpy()[clear], atol=1e-4, rtol=0)
        np.testing.assert_allclose(o.scores.numpy(), t.scores.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(o.instance_ids.numpy()[clear], t.instance_ids.numpy()[clear])
    assert states[0].next_track_id == states[1].next_track_id > 0


def test_onnxruntime_backend_matches_torch_through_the_pipeline():
    """Same weights, same frames: ORT (exported step graph) vs the torch backend over 3 frames."""
    torch_model = load_model(BASE).stepper
    ort_runner = load_model(with_(backend="onnxruntime")).stepper
    results = []
    for model in (torch_model, ort_runner):
        pipe = Pipeline(model, CLASS_NAMES, pipeline_config(max_detections=32))
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
        assert clear.sum() >= 4  # enough clear ranks remain
        np.testing.assert_array_equal(dt.track_ids[clear], do.track_ids[clear])
        np.testing.assert_allclose(dt.boxes[clear], do.boxes[clear], atol=2e-3)


@pytest.mark.parametrize("preset", ["tiny", "tiny_fusion"])
def test_bundled_weights_carry_their_display_threshold(preset):
    """Issue 20: each bundled model's sidecar holds the threshold chosen on validation data
    (scripts/choose_score_threshold.py), next to the frame entry; load_model returns it and says so."""
    import json

    from sparse_perception_ros.runtime.loading import bundled_weights_path, load_score_threshold

    path = bundled_weights_path(preset)
    if path is None:
        pytest.skip(f"no models/{preset}.pt bundled")
    doc = json.loads(path.with_name(path.name + ".json").read_text())
    assert "frame" in doc and 0.0 < doc["score_threshold"]["value"] < 1.0
    assert "seed 3" in doc["score_threshold"]["data"] and "choose_score_threshold" in doc["score_threshold"]["made_by"]
    loaded = load_model(with_(preset=preset))
    assert loaded.facts.score_threshold == load_score_threshold(path) == doc["score_threshold"]["value"]
    assert f"display threshold {loaded.facts.score_threshold:g}" in loaded.note


def test_weights_without_a_threshold_and_malformed_sidecars(tmp_path):
    import json
    import shutil

    from sparse_perception_ros.runtime.loading import bundled_weights_path, load_score_threshold

    assert load_score_threshold(None) is None and load_score_threshold(tmp_path / "none.pt") is None
    weights = tmp_path / "mine.pt"
    shutil.copy(bundled_weights_path("tiny"), weights)
    loaded = load_model(with_(checkpoint=str(weights)))  # no sidecar: auto falls back to 0.3, said in the note
    assert loaded.facts.score_threshold is None and "output.score_threshold auto uses 0.3" in loaded.note
    assert loaded.facts.velocity_min_span is None and "temporal.velocity_min_span auto uses 0.5 s" in loaded.note
    assert loaded.facts.state_interval is None and "temporal.state_interval auto uses 0.45 s" in loaded.note
    sidecar = tmp_path / "mine.pt.json"
    sidecar.write_text(json.dumps({"frame": json.loads(
        bundled_weights_path("tiny").with_suffix(".pt.json").read_text())["frame"]}))
    assert load_score_threshold(weights) is None
    for bad in ({"score_threshold": {"value": 1.5}}, {"score_threshold": {"value": "high"}}, {"score_threshold": 0.3}):
        sidecar.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="mine.pt.json"):
            load_score_threshold(weights)
    with pytest.raises(ParameterError) as err:
        load_model(with_(checkpoint=str(weights)))
    assert err.value.name == "model.checkpoint" and "display threshold" in str(err.value)


@pytest.mark.parametrize("kind, given, weights, default, expected", [
    ("seconds", "auto", 0.5, 0.45, 0.5),     # the weights' own
    ("seconds", "auto", None, 0.45, 0.45),   # weights without one: the default
    ("seconds", 0, 0.5, 0.45, 0.0),          # a value overrides the weights (and becomes a float)
    ("fraction", "auto", 0.19, 0.3, 0.19),
    ("fraction", 1, None, 0.3, 1.0),
    ("count", "auto", 5, 1, 5),
    ("count", 3, 5, 1, 3),
    ("bool", "auto", True, False, True),
    ("bool", "auto", None, False, False),
    ("bool", False, True, False, False),
])
def test_resolve_auto_takes_the_weights_own_or_the_default_and_a_value_overrides(kind, given, weights, default,
                                                                                  expected):
    from sparse_perception_ros.runtime.sidecar import resolve_auto

    got = resolve_auto("p", given, weights, default, kind)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("kind, bad, words", [
    ("seconds", "slow", "a number >= 0"), ("seconds", -0.1, "a number >= 0"), ("seconds", True, "a number >= 0"),
    ("fraction", "0.3", "a number in"), ("count", 0, "an integer >= 1"), ("count", 2.0, "an integer >= 1"),
    ("count", True, "an integer >= 1"), ("bool", 1, "true, false"), ("bool", "yes", "true, false"),
])
def test_resolve_auto_refuses_other_values_naming_the_parameter(kind, bad, words):
    from sparse_perception_ros.runtime.sidecar import resolve_auto

    with pytest.raises(ValueError, match=f"group.name must be {words}.* or 'auto', got"):
        resolve_auto("group.name", bad, None, None, kind)
