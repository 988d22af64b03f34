"""The DFA as a native ONNX Runtime custom op (:mod:`sparse_perception_ros.ops.dfa_ort_native`).

A one-node graph run by a real ``onnxruntime.InferenceSession`` with the compiled library against
the C kernel called directly (the same code on the same buffers, one thread: **exactly equal**) and
against the torch reference (different summation order: atol 1e-5, rtol 0, as
``test_ops_dfa_custom_op.py``). Bad inputs come back as an ONNX Runtime error carrying our message,
never a crash; the kernel's thread count is the node's ``num_threads`` attribute.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from sparse_perception_ros.ops import dfa_cpu, dfa_ort, dfa_ort_native
from sparse_perception_ros.ops.deformable_aggregation import deformable_aggregation_reference, flatten_feature_maps
from sparse_perception_ros.ops.dfa_onnx import DOMAIN, OP_TYPE

pytestmark = pytest.mark.skipif(not dfa_ort_native.available(),
                                reason=f"the native DFA op library cannot be built here: {dfa_ort_native.unavailable_reason()}")

NAMES = ("feat", "spatial_shape", "scale_start_index", "loc", "weights")
TYPES = (TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT64, TensorProto.FLOAT, TensorProto.FLOAT)


def make_inputs(level_hw=((6, 10), (3, 5)), cams=3, anchors=11, pts=4, groups=2, channels=16, seed=0):
    """Op inputs as numpy; locations uniform in [-0.3, 1.3]^2, so ~40% of samples lie outside the image."""
    gen = torch.Generator().manual_seed(seed)
    maps = [torch.randn(1, cams, channels, h, w, generator=gen) for h, w in level_hw]
    loc = -0.3 + 1.6 * torch.rand(1, anchors, pts, cams, 2, generator=gen)
    logits = torch.randn(1, anchors, pts, cams, len(level_hw), groups, generator=gen)
    weights = logits.flatten(2, 4).softmax(2).reshape(logits.shape)
    return [t.numpy() for t in (*flatten_feature_maps(maps), loc, weights)]


def one_node_model(inputs, domain=DOMAIN):
    node = helper.make_node(OP_TYPE, list(NAMES), ["out"], domain=domain, plugin_namespace="sparse_perception",
                            plugin_version="1")
    graph = helper.make_graph([node], "dfa", [helper.make_tensor_value_info(n, t, list(a.shape))
                                              for n, t, a in zip(NAMES, TYPES, inputs, strict=True)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18),
                                                                  helper.make_opsetid(domain, 1)])


def session(model, num_threads=None):
    return ort.InferenceSession(dfa_ort_native.ort_model(model, num_threads).SerializeToString(),
                                dfa_ort_native.session_options(num_threads), providers=["CPUExecutionProvider"])


def run(sess, inputs):
    return sess.run(None, dict(zip(NAMES, inputs, strict=True)))[0]


def test_native_op_equals_the_kernel_and_the_reference():
    inputs = make_inputs()
    out = run(session(one_node_model(inputs)), inputs)
    kernel = dfa_cpu.deformable_aggregation_numpy(*inputs, num_threads=1)
    assert out.shape == (1, 11, 16) and np.array_equal(out, kernel)
    ref = deformable_aggregation_reference(*(torch.from_numpy(a) for a in inputs)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    assert np.abs(out).max() > 0.1  # samples were kept, not all dropped


def test_the_session_reuses_the_kernel_across_runs_and_inputs():
    a, b = make_inputs(seed=1), make_inputs(seed=2)
    sess = session(one_node_model(a))
    for inputs in (a, b, a):
        assert np.array_equal(run(sess, inputs), dfa_cpu.deformable_aggregation_numpy(*inputs, num_threads=1))


def test_num_threads_attribute_is_written_and_two_threads_match_one():
    inputs = make_inputs(anchors=400, pts=6)  # > 4096 kept samples, so the kernel does split the work
    model = dfa_ort_native.ort_model(one_node_model(inputs), 2)
    attrs = {a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs[dfa_ort_native.NUM_THREADS_ATTR] == 2 and attrs["plugin_version"] == b"1"
    two = run(session(one_node_model(inputs), 2), inputs)
    np.testing.assert_allclose(two, dfa_cpu.deformable_aggregation_numpy(*inputs, num_threads=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case, message", [
    ("block outside rows", "lies outside the feature rows"),
    ("weights mismatch", "weights do not match locations"),
    ("groups", "channels not divisible by groups"),
    ("rank", "input 3 must be a rank-5 float32 tensor"),
])
def test_bad_inputs_raise_with_the_op_message(case, message):
    inputs = make_inputs()
    if case == "block outside rows":
        inputs[1] = inputs[1] * 10
    elif case == "weights mismatch":
        inputs[4] = np.ascontiguousarray(inputs[4][:, :5])
    elif case == "groups":
        inputs[4] = np.ascontiguousarray(np.concatenate([inputs[4], inputs[4][..., :1]], axis=-1))
    else:
        inputs[3] = np.ascontiguousarray(inputs[3][..., None])
    sess = session(one_node_model(inputs))
    with pytest.raises(Exception, match=message):
        run(sess, inputs)
    good = make_inputs()  # the session survives a bad call
    assert np.array_equal(run(session(one_node_model(good)), good),
                          dfa_cpu.deformable_aggregation_numpy(*good, num_threads=1))


def test_session_parts_prefers_native_and_keeps_our_domain():
    inputs = make_inputs()
    model = one_node_model(inputs)
    data, options, impl = dfa_ort.session_parts(model, 1)
    assert impl == "native"
    assert onnx.load_from_string(data).graph.node[0].domain == DOMAIN
    native = run(ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]), inputs)
    data, options, impl = dfa_ort.session_parts(model, 1, impl="python")
    assert impl == "python" and onnx.load_from_string(data).graph.node[0].domain == dfa_ort.ORT_DOMAIN
    python = run(ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]), inputs)
    np.testing.assert_allclose(native, python, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="DFA op impl"):
        dfa_ort.session_parts(model, 1, impl="cuda")


def test_auto_falls_back_to_the_python_op_without_the_library(monkeypatch):
    monkeypatch.setattr(dfa_ort_native, "available", lambda: False)
    _, _, impl = dfa_ort.session_parts(one_node_model(make_inputs()), 1)
    assert impl == "python"
