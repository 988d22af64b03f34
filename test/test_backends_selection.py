"""Backend selection and the TensorRT code paths that can be checked without TensorRT.

The TensorRT modules must import cleanly on a machine without TensorRT; choosing that backend
(or ``build-engine``) fails with a one-line explanation. Real TensorRT runs are in
``test_backends_parity.py`` (skipped without TensorRT + GPU).
"""

import importlib.util
import subprocess
import sys

import pytest
import torch

from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.runtime.backends import (
    BackendUnavailable,
    OrtBackend,
    TorchBackend,
    available_backends,
    create_backend,
)
from sparse_perception_ros.runtime.export import export_cached

CFG = get_preset("tiny")
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def test_tensorrt_modules_import_without_tensorrt():
    import sparse_perception_ros.cli.build_engine  # noqa: F401
    import sparse_perception_ros.runtime.tensorrt_backend as trt_backend
    import sparse_perception_ros.runtime.tensorrt_plugin as trt_plugin

    assert trt_plugin.PLUGIN_ID == "sparse_perception::DeformableAggregation"
    assert trt_backend.sidecar_path("a/b.engine").name == "b.engine.json"


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the missing-TensorRT message cannot be checked")
def test_choosing_tensorrt_without_it_says_why(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed|no CUDA GPU"):
        create_backend("tensorrt", engine_path=engine)
    with pytest.raises(BackendUnavailable, match="engine file"):
        create_backend("tensorrt")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: build-engine would really build")
def test_build_engine_cli_without_tensorrt_is_one_line_not_a_traceback(tmp_path):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"placeholder")
    proc = subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "build-engine", str(onnx_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TensorRT" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    missing = subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "build-engine",
                              str(tmp_path / "nope.onnx")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr and "no ONNX file" in missing.stderr


def test_auto_prefers_onnxruntime_then_torch(head, tmp_path, tmp_path_factory):
    assert available_backends()[-1] == "torch"
    if not HAVE_TRT:
        assert "tensorrt" not in available_backends()
    backend = create_backend("auto", module=head, cfg=CFG)  # no ONNX file: falls through to torch
    assert isinstance(backend, TorchBackend)
    path = export_cached(head, CFG, tmp_path_factory.getbasetemp() / "onnx_cache")  # shared in the session
    backend = create_backend("auto", module=head, cfg="tiny", onnx_path=path)
    assert isinstance(backend, OrtBackend if not HAVE_TRT else type(backend))
    with pytest.raises(BackendUnavailable, match="sparse-perception export"):
        create_backend("onnxruntime", onnx_path=tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="unknown backend"):
        create_backend("openvino")
    with pytest.raises(BackendUnavailable, match="module"):
        create_backend("torch")


def test_build_stepper_exports_once_and_plugs_into_the_step_api(tmp_path):
    from sparse_perception_ros.model import TemporalState, build_model
    from sparse_perception_ros.runtime.backends import StepRunner, build_stepper
    from sparse_perception_ros.runtime.example_inputs import synthetic_sequence

    torch.manual_seed(2)
    model = build_model("tiny")
    runner = build_stepper("onnxruntime", "tiny", module=model, cache_dir=tmp_path)
    assert isinstance(runner, StepRunner) and isinstance(runner.backend, OrtBackend)
    assert runner.cfg.input_wh == CFG.input_wh and runner.cfg.head.num_cams == 6  # what Pipeline reads
    files = sorted(tmp_path.glob("tiny_full_*.onnx"))
    assert len(files) == 1
    inode = files[0].stat().st_ino  # an export writes a new file and renames it over: a new inode
    build_stepper("onnxruntime", "tiny", module=model, cache_dir=tmp_path)  # same weights: reused
    assert files[0].stat().st_ino == inode and len(list(tmp_path.glob("*.onnx"))) == 1
    frame = synthetic_sequence(CFG, 1, with_backbone=True)[0]
    args = (torch.from_numpy(frame.images[0]), torch.from_numpy(frame.projection_mat),
            torch.from_numpy(frame.image_wh), frame.timestamp, frame.T_world_from_model, TemporalState.empty())
    out, state = runner.step(*args)
    ref, ref_state = model.step(*args)
    torch.testing.assert_close(out.classification, ref.classification, atol=1e-4, rtol=0)
    assert state.next_track_id == ref_state.next_track_id
    torch_runner = build_stepper("torch", "tiny", module=model)
    assert isinstance(torch_runner.backend, TorchBackend)


def test_auto_keeps_the_fastest_measured_backend(head, tmp_path_factory):
    """build_stepper("auto") builds every usable backend, times interleaved synthetic steps and keeps
    the lowest median; a backend made 100 ms slower per step loses, and the reason names the times. (The
    margin asserted is half the added time: on a loaded 2-core host a 40 ms handicap once measured only
    29.9 ms apart in the medians.)"""
    import time

    from sparse_perception_ros.runtime.backend_probe import probe_fastest
    from sparse_perception_ros.runtime.backends import StepRunner, build_stepper

    class Slow(StepRunner):
        def step(self, *args, **kwargs):
            time.sleep(0.1)
            return super().step(*args, **kwargs)

    fast = StepRunner(TorchBackend(head, CFG), CFG)
    choice = probe_fastest({"slow": Slow(TorchBackend(head, CFG), CFG), "torch": fast}, "tiny", budget_s=0.0,
                           skipped={"tensorrt": "no GPU"})
    assert choice.backend == "torch" and choice.step_ms["slow"] > choice.step_ms["torch"] + 50
    assert "auto picked torch" in str(choice) and "slow " in str(choice) and "tensorrt (no GPU)" in str(choice)
    only = probe_fastest({"torch": fast}, "tiny")
    assert only.backend == "torch" and "only usable backend" in only.reason and not only.step_ms

    runner = build_stepper("auto", "tiny", module=head, cache_dir=tmp_path_factory.getbasetemp() / "onnx_cache")
    picked = runner.auto_choice
    assert runner.name == picked.backend == min(picked.step_ms, key=picked.step_ms.get)
    assert set(picked.step_ms) == set(available_backends()) - {"tensorrt"}  # no engine given: TensorRT skipped
