"""The torch backend runs the exported step function: eager (the node's default), the static-shape
form the exporter captures, and ``torch.compile`` agree; ``head.step`` is that same step.

Tolerances: the eager and static forms compute the same ops and select with ``where``, so they are
compared exactly; ``torch.compile`` fuses and reorders float ops, so 1e-4 on raw outputs.
"""

import numpy as np
import pytest
import torch
from helpers.pipeline import pipeline_config

from sparse_perception_ros.model import TemporalState, build_head, build_model
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.runtime.backends import StepRunner, TorchBackend, torch_stepper
from sparse_perception_ros.runtime.example_inputs import level_shapes, synthetic_sequence
from sparse_perception_ros.runtime.export import StepGraph, example_args
from sparse_perception_ros.runtime.pipeline import Pipeline

CFG = get_preset("tiny")
RAW = ("classification", "prediction", "quality")


def run(stepper, frames, feature_input=True):
    state, outs = TemporalState.empty(), []
    for f in frames:
        images = [torch.from_numpy(x) for x in f.images] if feature_input else torch.from_numpy(f.images[0])
        out, state = stepper.step(images, torch.from_numpy(f.projection_mat), torch.from_numpy(f.image_wh),
                                  f.timestamp, f.T_world_from_model, state)
        outs.append(out)
    return outs, state


def test_static_graph_form_equals_the_eager_branch_exactly(head):
    """prev_valid False and True: the where-selected graph gives the eager branch's numbers bit for bit."""
    args = list(example_args(CFG, with_backbone=False))
    level_hw = level_shapes(CFG.input_wh, CFG.head.num_levels)
    eager = StepGraph(head, static=False, dfa_impl="fast", level_hw=level_hw)
    static = StepGraph(head, static=True, dfa_impl="fast", level_hw=level_hw)
    for valid in (False, True):
        args[-1] = torch.tensor([valid])
        with torch.no_grad():
            a, b = eager(*args), static(*args)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_head_step_is_the_torch_backend_step(head):
    """The public head.step and the node's torch backend are one function: same numbers, ids and state."""
    frames = synthetic_sequence(CFG, 3, seed=2)
    backend_outs, backend_state = run(StepRunner(TorchBackend(head, CFG, dfa_impl="fast"), CFG), frames)
    state = TemporalState.empty()
    for f, ref in zip(frames, backend_outs, strict=True):
        out, state = head.step([torch.from_numpy(x) for x in f.images], torch.from_numpy(f.projection_mat),
                               torch.from_numpy(f.image_wh), f.timestamp, f.T_world_from_model, state,
                               dfa_impl="fast")
        for name in ("boxes", "scores", "labels", "instance_ids", *RAW):
            torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=0, rtol=0)
    assert state == backend_state


def test_compiled_step_matches_eager(head):
    frames = synthetic_sequence(CFG, 2, seed=4)
    eager, _ = run(torch_stepper(head, "tiny"), frames)
    compiled_stepper = torch_stepper(head, "tiny", compile=True)
    assert compiled_stepper.backend.compiled and compiled_stepper.backend.dfa_impl == "fast"
    compiled, _ = run(compiled_stepper, frames)
    for i, (e, c) in enumerate(zip(eager, compiled, strict=True)):
        for name in RAW:
            # atol 3e-4: inductor's vectorised kernels sum in another order than eager; this random-weights
            # head amplifies that to 1.85e-4 on an AVX2-only AMD EPYC (under 1e-4 on an AVX-512 Intel host)
            np.testing.assert_allclose(getattr(c, name).numpy(), getattr(e, name).numpy(), atol=3e-4, rtol=0,
                                       err_msg=f"frame {i} {name}")
        assert torch.equal(c.instance_ids.sort().values, e.instance_ids.sort().values)


def test_pipeline_takes_a_stepper_not_a_raw_module():
    config = pipeline_config(score_threshold=0.3, max_detections=10)
    with pytest.raises(TypeError, match="Stepper"):
        Pipeline(build_model("tiny"), ("car",), config)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def test_cuda_graph_needs_a_cuda_device(head):
    """Asking for a CUDA graph on the CPU is an error naming the device, not a silent eager run."""
    from sparse_perception_ros.runtime.backends import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="CUDA device"):
        TorchBackend(head, CFG, dfa_impl="fast", cuda_graph=True)
    assert TorchBackend(head, CFG, dfa_impl="fast").mode == "eager"  # the CPU default is unchanged


@needs_cuda
def test_cuda_graph_replay_matches_cpu_eager_over_frames(head):
    """model.device cuda: the step is captured once and replayed; 4 frames with the state carried
    match the CPU eager step (atol 1e-3 on raw outputs: Triton vs the C kernel, cuBLAS vs CPU GEMM)."""
    frames = synthetic_sequence(CFG, 4, seed=3)
    ref, _ = run(StepRunner(TorchBackend(head, CFG, dfa_impl="fast"), CFG), frames)
    gpu_head = build_head("tiny")
    gpu_head.load_state_dict(head.state_dict())
    backend = TorchBackend(gpu_head.cuda(), CFG, device="cuda")
    outs, state = run(StepRunner(backend, CFG), frames)
    assert backend.mode == "CUDA graph" and backend._captured is not None, backend.mode
    assert state.anchors.device.type == "cuda"
    for a, b in zip(ref, outs, strict=True):
        for name in RAW:
            torch.testing.assert_close(getattr(b, name).cpu(), getattr(a, name), atol=1e-3, rtol=1e-3)
