"""The exported step graph: structure (one DFA node type in our domain with the TensorRT plugin
attributes, static shapes, onnx.checker), the prev-valid flag replacing a first-frame graph, and
the full-model (images) variant running in ONNX Runtime.

Tolerances: StepGraph in torch vs ``head.step`` is exact (same ops); ONNX Runtime vs torch on one
frame: atol 1e-4 on raw outputs.
"""

import json

import numpy as np
import onnx
import pytest
import torch

from sparse_perception_ros.model import TemporalState, build_model
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.ops.deformable_aggregation import flatten_feature_maps
from sparse_perception_ros.ops.dfa_onnx import DOMAIN, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION
from sparse_perception_ros.runtime.example_inputs import level_shapes, synthetic_sequence
from sparse_perception_ros.runtime.export import (
    StepGraph,
    export_cached,
    export_step,
    host_step_inputs,
    input_names,
    output_names,
)

CFG = get_preset("tiny")
LEVEL_HW = level_shapes(CFG.input_wh, CFG.head.num_levels)


@pytest.fixture(scope="module")
def exported(head, tmp_path_factory):
    # shared with the other modules that export the same seeded head (same session temp dir)
    path = export_cached(head, CFG, tmp_path_factory.getbasetemp() / "onnx_cache")
    return path, json.loads(path.with_name(path.name + ".json").read_text())


def graph_args(frame, state):
    host = host_step_inputs(frame.timestamp, frame.T_world_from_model, state, CFG)
    flat = flatten_feature_maps([torch.from_numpy(m) for m in frame.images])[0]  # mc_ms_feat
    vals = [flat, frame.projection_mat, frame.image_wh, *(host[k] for k in input_names(CFG, False)[-6:])]
    return [v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v)) for v in vals]


def test_graph_has_one_dfa_node_type_in_our_domain_with_plugin_attributes(exported):
    path, meta = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    custom = {(n.domain, n.op_type) for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    assert custom == {(DOMAIN, OP_TYPE)}
    dfa = [n for n in model.graph.node if n.op_type == OP_TYPE]
    assert len(dfa) == CFG.head.num_decoder  # one per decoder layer
    for node in dfa:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"plugin_namespace": PLUGIN_NAMESPACE.encode(), "plugin_version": PLUGIN_VERSION.encode()}
        assert len(node.input) == 5 and len(node.output) == 1
    assert {(o.domain, o.version) for o in model.opset_import if o.domain == DOMAIN} == {(DOMAIN, 1)}
    # the instance bank's top-k (update, cache) and the decoder's top-k + sort are in the graph
    assert sum(n.op_type == "TopK" for n in model.graph.node) >= 4
    assert not any(n.op_type in ("If", "Loop") for n in model.graph.node), "one straight graph, no control flow"
    assert meta["dfa"]["nodes"] == CFG.head.num_decoder


def test_inputs_outputs_and_static_shapes(exported):
    path, meta = exported
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == input_names(CFG, with_backbone=False)
    assert [o.name for o in model.graph.output] == output_names()
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") and d.dim_value > 0 for d in dims), f"{value.name} is not static"
    assert model.graph.input[-1].type.tensor_type.elem_type == onnx.TensorProto.BOOL  # prev_valid
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["inputs"]["prev_anchors"] == [1, CFG.head.num_temp_instances, 11]
    assert sidecar["state"] == {"inputs": ["prev_anchors", "prev_features", "prev_confidence"],
                                "outputs": ["next_anchors", "next_features", "next_confidence"]}
    assert len(sidecar["sha256"]) == 64 and not any(p.suffix == ".data" for p in path.parent.iterdir())


def test_prev_valid_false_is_the_first_frame_and_true_is_head_step(head):
    """One graph for both: exactly head.step's numbers with an empty and with a carried state."""
    graph = StepGraph(head, level_hw=LEVEL_HW)
    frames = synthetic_sequence(CFG, 3)
    state = TemporalState.empty()
    for frame in frames:
        feats = [torch.from_numpy(x) for x in frame.images]
        ref, new_state = head.step(feats, torch.from_numpy(frame.projection_mat), torch.from_numpy(frame.image_wh),
                                   frame.timestamp, frame.T_world_from_model, state)
        with torch.no_grad():
            out = dict(zip(output_names(), graph(*graph_args(frame, state)), strict=True))
        for name in ("classification", "prediction", "quality", "boxes", "scores", "cls_scores", "labels"):
            torch.testing.assert_close(out[name], getattr(ref, name), atol=0, rtol=0, msg=name)
        torch.testing.assert_close(out["next_anchors"], new_state.anchors, atol=0, rtol=0)
        torch.testing.assert_close(out["next_confidence"], new_state.confidence, atol=0, rtol=0)
        state = new_state
    # garbage in the prev tensors is ignored when prev_valid is False
    args = graph_args(frames[0], TemporalState.empty())
    noisy = list(args)
    for i in (-4, -3, -2):
        noisy[i] = torch.randn_like(noisy[i]) * 100
    with torch.no_grad():
        clean, dirty = graph(*args), graph(*noisy)
    for a, b in zip(clean, dirty, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_full_model_variant_runs_in_onnxruntime(tmp_path):
    from sparse_perception_ros.runtime.backends import OrtBackend

    torch.manual_seed(1)
    model = build_model("tiny")
    path = tmp_path / "tiny_full.onnx"
    meta = export_step(path, "tiny", with_backbone=True, module=model)
    assert meta["inputs"]["img"] == [1, 6, 3, CFG.input_wh[1], CFG.input_wh[0]]
    frame = synthetic_sequence(CFG, 1, with_backbone=True)[0]
    ref, _ = model.step(torch.from_numpy(frame.images[0]), torch.from_numpy(frame.projection_mat),
                        torch.from_numpy(frame.image_wh), frame.timestamp, frame.T_world_from_model,
                        TemporalState.empty())
    backend = OrtBackend(path)
    host = host_step_inputs(frame.timestamp, frame.T_world_from_model, TemporalState.empty(), CFG)
    out = backend.run({"img": frame.images[0], "projection_mat": frame.projection_mat, "image_wh": frame.image_wh,
                       **host})
    for name in ("classification", "prediction", "quality"):
        np.testing.assert_allclose(out[name], getattr(ref, name).numpy(), atol=1e-4, rtol=0, err_msg=name)


def test_export_cli_writes_file_and_sidecar(tmp_path, capsys):
    from sparse_perception_ros.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["export", str(out), "--preset", "tiny"]) == 0
    assert out.is_file() and out.with_name("cli.onnx.json").is_file()
    assert "DeformableAggregation" in capsys.readouterr().out


def test_fp16_backbone_policy_keeps_the_head_in_fp32(tmp_path):
    """FP16 backbone / FP32 head as graph types (what a strongly typed TensorRT network builds).

    Tolerance for fp16 features: logits and box centres within 0.05 (logit / m) of fp32 torch.
    """
    from sparse_perception_ros.runtime.backends import OrtBackend

    torch.manual_seed(1)
    model = build_model("tiny")
    path = tmp_path / "tiny_full_fp16.onnx"
    meta = export_step(path, "tiny", with_backbone=True, module=model, backbone_fp16=True)
    assert meta["precision"] == "fp16-backbone"
    graph = onnx.load(str(path)).graph
    conv_weights = {i for n in graph.node if n.op_type == "Conv" for i in n.input[1:2]}
    init_types = {t.name: t.data_type for t in graph.initializer}
    assert conv_weights and all(init_types.get(w) == onnx.TensorProto.FLOAT16 for w in conv_weights if w in init_types)
    dfa = [n for n in graph.node if n.op_type == OP_TYPE]
    assert len(dfa) == CFG.head.num_decoder
    assert next(model.img_backbone.parameters()).dtype == torch.float32  # the caller's model is untouched
    frame = synthetic_sequence(CFG, 1, with_backbone=True)[0]
    ref, _ = model.step(torch.from_numpy(frame.images[0]), torch.from_numpy(frame.projection_mat),
                        torch.from_numpy(frame.image_wh), frame.timestamp, frame.T_world_from_model,
                        TemporalState.empty())
    host = host_step_inputs(frame.timestamp, frame.T_world_from_model, TemporalState.empty(), CFG)
    out = OrtBackend(path).run({"img": frame.images[0], "projection_mat": frame.projection_mat,
                                "image_wh": frame.image_wh, **host})
    assert out["classification"].dtype == np.float32 and out["next_features"].dtype == np.float32
    np.testing.assert_allclose(out["classification"], ref.classification.numpy(), atol=5e-2, rtol=0)
    np.testing.assert_allclose(out["prediction"][:, :3], ref.prediction[:, :3].numpy(), atol=5e-2, rtol=0)


def test_cache_key_holds_the_code_and_unused_graphs_are_pruned(tmp_path, monkeypatch):
    """Cached graphs are keyed by weights and graph-defining code; a use refreshes a file's mtime,
    and writing a new graph deletes those unused for CACHE_MAX_AGE_DAYS (and stale temporaries)."""
    import os
    import time

    from sparse_perception_ros.runtime import export

    head = build_model(get_preset("tiny")).head
    key = export.graph_digest(head)
    assert key.startswith(export.weights_digest(head)) and key.endswith(export.code_digest())
    export.code_digest.cache_clear()
    monkeypatch.setattr(export, "_GRAPH_SOURCES", ("model",))  # other sources: another key
    assert export.graph_digest(head) != key
    export.code_digest.cache_clear()
    monkeypatch.undo()
    # a sampling choice changes the graph without changing weights or code: another key, and back
    layer = next(m for m in head.modules() if getattr(m, "sampling", None) == "kernel")
    layer.sampling = "grid_sample"
    assert export.graph_digest(head) != key
    layer.sampling = "kernel"
    assert export.graph_digest(head) == key

    day = 86400.0
    now = time.time()
    files = {"old.onnx": 20, "old.onnx.json": 20, "fresh.onnx": 1, ".x.onnx.1.2.tmp.onnx": 2,
             ".y.onnx.1.2.tmp.onnx": 0.01}
    for name, age in files.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (now - age * day, now - age * day))
    gone = export.prune_onnx_cache(tmp_path)
    assert sorted(p.name for p in gone) == [".x.onnx.1.2.tmp.onnx", "old.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".y.onnx.1.2.tmp.onnx", "fresh.onnx"]
    # a cache hit marks the file used: it will not be pruned while it is in use
    os.utime(tmp_path / "fresh.onnx", (now - 30 * day, now - 30 * day))
    export.export_onnx_cached(head, (), tmp_path / "fresh.onnx", [], [])
    assert now - (tmp_path / "fresh.onnx").stat().st_mtime < 60
    assert export.prune_onnx_cache(tmp_path) == []
