"""The TensorRT builder against a real TensorRT-family library: TensorRT-RTX (requirements/tensorrt.txt).

On this CPU-only machine TensorRT-RTX parses ONNX and builds engines ahead-of-time for an RTX target.
Checked here: the exported tiny step graph (head, 1 camera) parses with the real ONNX parser and
builds and serialises an SM89 engine with every op except the DFA, which is replaced by a stand-in of
the same shape (the plugin is blocked, see runtime/tensorrt_plugin.RTX_BLOCKER); asking for the plugin
fails with that reason instead of aborting the process; and the abort itself is pinned, so a library
that fixes it makes this test fail and say so.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="tensorrt_rtx is not installed (pip install -r requirements/tensorrt.txt)")


@pytest.fixture(scope="module")
def step_onnx(tmp_path_factory):
    from sparse_perception_ros.model.config import get_preset, with_num_cams
    from sparse_perception_ros.runtime.export import export_step

    path = tmp_path_factory.mktemp("rtx") / "tiny_head_1cam.onnx"
    meta = export_step(path, with_num_cams(get_preset("tiny"), 1), with_backbone=False)
    assert meta["dfa"]["nodes"] == 3
    return path


@pytest.fixture(scope="module")
def standin_engine(step_onnx):
    from sparse_perception_ros.runtime.tensorrt_backend import build_engine

    engine = step_onnx.with_suffix(".engine")
    return engine, build_engine(step_onnx, engine, target="SM89", dfa="standin")


def test_step_graph_builds_aot_with_the_dfa_stand_in(standin_engine):
    from sparse_perception_ros.runtime.tensorrt_backend import EngineMismatch, TensorRTBackend

    engine, meta = standin_engine
    assert meta["tensorrt_module"] == "tensorrt_rtx" and meta["target"] == "SM89"
    assert meta["dfa_plugin"].startswith("STAND-IN: 3 DFA node(s)")
    assert meta["layers"] > 1000  # the whole head: every other op parsed into TensorRT layers
    assert engine.stat().st_size > 1_000_000
    assert json.loads(Path(str(engine) + ".json").read_text())["onnx_sha256"] == meta["onnx_sha256"]
    if torch.cuda.is_available():  # the runner must never load a stand-in engine
        with pytest.raises(EngineMismatch, match="stand-in"):
            TensorRTBackend(engine)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour of deserialisation")
def test_deserialising_needs_a_gpu_and_fails_cleanly(standin_engine):
    """TensorRT-RTX cannot deserialise without a CUDA driver: it returns None (logged), no abort."""
    import tensorrt_rtx as trt

    engine, _ = standin_engine
    runtime = trt.Runtime(trt.Logger(trt.Logger.INTERNAL_ERROR))
    assert runtime.deserialize_cuda_engine(engine.read_bytes()) is None


def test_plugin_request_fails_with_the_blocker_not_an_abort(step_onnx, tmp_path):
    from sparse_perception_ros.runtime.tensorrt_backend import EngineBuildError, build_engine

    with pytest.raises(EngineBuildError, match="std::terminate"):
        build_engine(step_onnx, tmp_path / "p.engine", target="SM89")
    with pytest.raises(ValueError, match="unknown target"):
        build_engine(step_onnx, tmp_path / "p.engine", target="SM90", dfa="standin")


PROBE = r'''
import onnx, tensorrt_rtx as trt
from onnx import helper, TensorProto as T
N, NS = "DeformableAggregation", "sparse_perception"
g = helper.make_graph(
    [helper.make_node(N, ["f", "s", "i", "l", "w"], ["o"], domain=NS, plugin_namespace=NS, plugin_version="1")], "g",
    [helper.make_tensor_value_info("f", T.FLOAT, [1, 100, 8]), helper.make_tensor_value_info("l", T.FLOAT, [1, 4, 2, 2, 2]),
     helper.make_tensor_value_info("w", T.FLOAT, [1, 4, 2, 2, 1, 2])],
    [helper.make_tensor_value_info("o", T.FLOAT, [1, 4, 8])],
    [helper.make_tensor("s", T.INT64, [2, 1, 2], [5, 10, 5, 10]), helper.make_tensor("i", T.INT64, [2, 1], [0, 50])])
model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(NS, 1)])
class P(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
    def __init__(self):
        for base in (trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
            base.__init__(self)
        self.num_outputs, self.plugin_namespace, self.plugin_name, self.plugin_version = 1, NS, N, "1"
    def get_capability_interface(self, t):
        print("PLUGIN_METHOD_CALLED", flush=True); return self
    def clone(self):
        c = P(); c.__dict__.update(self.__dict__); return c
class C(trt.IPluginCreatorV3One):
    def __init__(self):
        trt.IPluginCreatorV3One.__init__(self)
        self.name, self.plugin_namespace, self.plugin_version = N, NS, "1"
        self.field_names = trt.PluginFieldCollection([])
    def create_plugin(self, name, fc, phase):
        print("CREATED", flush=True); KEEP.append(P()); return KEEP[-1]
KEEP, creator = [], C()
trt.get_plugin_registry().register_creator(creator, NS)
logger = trt.Logger(trt.Logger.ERROR)
net = trt.Builder(logger).create_network(0)
print("PARSED", trt.OnnxParser(net, logger).parse(model.SerializeToString()), flush=True)
'''


def test_python_plugin_abort_is_still_there():
    """The blocker, pinned: TensorRT-RTX 1.7.1's ONNX parser creates our Python IPluginV3 (plugin and
    creator kept alive, all attributes set) and then aborts inside libtensorrt_onnxparser_rtx before any
    plugin method runs. If this starts to pass the parse, enable the plugin path (RTX_BLOCKER)."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert "CREATED" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode != 0 and "PARSED" not in proc.stdout and "PLUGIN_METHOD_CALLED" not in proc.stdout, (
        "TensorRT-RTX no longer aborts after creating the Python plugin: revisit RTX_BLOCKER", proc.stdout, proc.stderr)
    assert "terminate called without an active exception" in proc.stderr


def test_pillar_pooling_is_not_parsable_by_tensorrt_rtx(tmp_path):
    """Pinned limitation of the fused graph: TensorRT-RTX 1.7.1's parser takes no reducing scatter,
    neither the exported pillar pooling (ScatterND add, the form that is fast in ONNX Runtime) nor
    the former ScatterElements(add) (full TensorRT has that one only as a plugin, and not with more
    indices than data rows, as here: points > pillars). A parser that accepts one makes this fail:
    then the fused graph can be checked here like the camera one."""
    import onnx
    import tensorrt_rtx as trt
    from onnx import TensorProto, helper

    from sparse_perception_ros.model.config import LidarConfig
    from sparse_perception_ros.model.lidar import PillarEncoder

    path = tmp_path / "pillars.onnx"
    with torch.no_grad():
        torch.onnx.export(PillarEncoder(LidarConfig(max_points=500)).eval(), (torch.zeros(1, 500, 5), torch.tensor([0])),
                          opset_version=20, dynamo=True, external_data=False, verbose=False).save(str(path),
                                                                                                 external_data=False)
    v = helper.make_tensor_value_info
    elements = helper.make_model(helper.make_graph(
        [helper.make_node("ScatterElements", ["d", "i", "u"], ["o"], axis=0, reduction="add")], "g",
        [v("d", TensorProto.FLOAT, [50, 4]), v("i", TensorProto.INT64, [40, 4]), v("u", TensorProto.FLOAT, [40, 4])],
        [v("o", TensorProto.FLOAT, [50, 4])]), opset_imports=[helper.make_opsetid("", 20)])
    logger = trt.Logger(trt.Logger.INTERNAL_ERROR)
    for model, reason in ((onnx.load(str(path)), "ScatterND with reduction is not supported"),
                          (elements, "Unsupported reduction type")):
        builder = trt.Builder(logger)  # builder and network must outlive the parser
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        assert not parser.parse(model.SerializeToString())
        assert reason in str(parser.get_error(0))
