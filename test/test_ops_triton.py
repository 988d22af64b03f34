"""Triton DFA kernel: parity under the interpreter, ahead-of-time PTX for sm_80 / sm_90, and a GPU run.

- Interpreter (``TRITON_INTERPRET=1``, CPU tensors) vs the torch reference: atol 1e-5. It runs
  in a child process because the interpreter is chosen when the kernel is decorated. Size:
  2 x 24 anchors x 1 channel block = 48 programs per case, 2 cases (~100 programs in all).
- AOT: ``triton.compile`` with a CUDA target needs no GPU; the PTX must name the target and
  have the (inputs, scalars, output) parameter layout the TensorRT AOT plugin launches.
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from sparse_perception_ros.ops.dfa_triton import triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed (requirements/ml.txt)")


def _has_cuda_driver() -> bool:
    if not triton_available() or not torch.cuda.is_available():
        return False
    try:
        import triton

        triton.runtime.driver.active.get_current_device()
    except Exception:  # "0 active drivers" on machines without libcuda
        return False
    return True


INTERPRETER_CHECK = textwrap.dedent(
    """
    import torch
    from sparse_perception_ros.ops.deformable_aggregation import deformable_aggregation, flatten_feature_maps
    from sparse_perception_ros.ops.dfa_triton import deformable_aggregation_triton

    worst = 0.0
    for seed, (bs, cams, groups, channels, level_hw) in enumerate([
        (2, 2, 4, 16, [(6, 10), (3, 5), (2, 3), (1, 2)]),
        (1, 3, 2, 12, [(5, 7), (2, 3)]),  # channels not a power of two: masked lanes
    ]):
        gen = torch.Generator().manual_seed(seed)
        maps = [torch.randn(bs, cams, channels, h, w, generator=gen) for h, w in level_hw]
        loc = -0.3 + 1.6 * torch.rand(bs, 24, 3, cams, 2, generator=gen)
        loc[0, 0, 0, 0] = torch.tensor([0.0, 0.5])  # exactly on the border: dropped
        loc[0, 1, 0, 0] = torch.tensor([1e-4, 0.9999])  # just inside: partial neighbours
        logits = torch.randn(bs, 24, 3, cams, len(level_hw), groups, generator=gen)
        weights = logits.flatten(2, 4).softmax(2).reshape(logits.shape)
        flat = flatten_feature_maps(maps)
        out = deformable_aggregation_triton(*flat, loc, weights)
        ref = deformable_aggregation(*flat, loc, weights)
        assert out.shape == ref.shape, (out.shape, ref.shape)
        worst = max(worst, float((out - ref).abs().max()))
    print("MAXDIFF", worst)
    """
)


@needs_triton
def test_triton_kernel_matches_reference_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = float(re.search(r"MAXDIFF (\S+)", proc.stdout).group(1))
    assert diff <= 1e-5, f"triton (interpreter) vs reference: max |diff| {diff}"


@needs_triton
@pytest.mark.parametrize("arch", [80, 90])
def test_aot_compiles_to_ptx_without_a_gpu(arch):
    from sparse_perception_ros.ops.dfa_triton import KERNEL_NAME, compile_ptx

    k = compile_ptx(channels=256, groups=8, num_pts=13, num_cams=6, num_levels=4, arch=arch)
    assert k.name == KERNEL_NAME and k.arch == arch
    assert re.search(rf"\.target sm_{arch}a?\b", k.ptx), "PTX does not target the requested architecture"
    assert re.search(rf"\.entry {KERNEL_NAME}\(", k.ptx)
    params = re.findall(rf"\.param \.(\w+)(?: \.ptr[^,\n]*)? {KERNEL_NAME}_param_(\d+)", k.ptx)
    kinds = [kind for kind, _ in params]
    # 5 input pointers, 2 int32 scalars (rows, num_anchor), the output pointer; Triton may append
    # its own scratch pointers after those.
    assert kinds[:8] == ["u64"] * 5 + ["u32"] * 2 + ["u64"], kinds
    assert k.cubin, "ptxas (bundled with triton) should also produce a cubin"
    assert k.num_warps == 4 and k.shared >= 0


@pytest.mark.skipif(not _has_cuda_driver(), reason="no CUDA GPU/driver on this machine")
def test_triton_kernel_on_gpu_matches_reference():
    from sparse_perception_ros.ops.deformable_aggregation import deformable_aggregation, flatten_feature_maps
    from sparse_perception_ros.ops.dfa_triton import deformable_aggregation_triton

    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(1, 6, 256, h, w, generator=gen) for h, w in [(64, 176), (32, 88), (16, 44), (8, 22)]]
    loc = torch.rand(1, 900, 13, 6, 2, generator=gen) * 1.2 - 0.1
    weights = torch.randn(1, 900, 13, 6, 4, 8, generator=gen).flatten(2, 4).softmax(2).reshape(1, 900, 13, 6, 4, 8)
    flat = flatten_feature_maps(maps)
    ref = deformable_aggregation(*flat, loc, weights)
    out = deformable_aggregation_triton(*(t.cuda() for t in flat), loc.cuda(), weights.cuda())
    torch.testing.assert_close(out.cpu(), ref, atol=1e-5, rtol=0)
