"""Triton GPU kernel of the deformable aggregation, and its ahead-of-time (PTX) compilation.

Semantics are the CUDA kernel's (see :mod:`.deformable_aggregation`). Layout as the op:
``mc_ms_feat [bs, rows, C]`` channels last, ``spatial_shape [cams, L, 2]`` int64 ``(H, W)``,
``scale_start_index [cams, L]`` int64, ``sampling_location [bs, A, P, cams, 2]``,
``weights [bs, A, P, cams, L, G]`` -> ``[bs, A, C]``.

One program computes ``BLOCK_C`` channels of one ``(batch, anchor)`` output row and loops over
points x cameras x levels (compile-time trip counts). It writes its row once, so unlike the
reference CUDA kernel (float ``atomicAdd``) the result is deterministic. Dropped samples (``loc``
outside the open unit square) and out-of-map neighbours are masked loads that touch no memory.

The kernel's non-constexpr parameters are ordered ``(inputs..., scalars..., output)``: that is
the calling convention of a TensorRT AOT plugin (``tensorrt.plugin.aot_impl``: tensor inputs,
then the ``extra_args`` scalars, then tensor outputs), so the PTX from :func:`compile_ptx` is
what the TensorRT plugin embeds in the engine (``runtime/tensorrt_plugin.py``).

Checked here without a GPU: under ``TRITON_INTERPRET=1`` against the reference
(``test/test_ops_triton.py``), and compiled to PTX for sm_80 / sm_90 with :func:`compile_ptx`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from sparse_perception_ros.ops.dfa_shapes import check_inputs

__all__ = [
    "triton_available",
    "deformable_aggregation_triton",
    "compile_ptx",
    "CompiledKernel",
    "kernel_signature",
    "KERNEL_NAME",
]

KERNEL_NAME = "dfa_kernel"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when ``triton`` imports (it may still have no GPU driver; see :func:`_launchable`)."""
    try:
        import triton  # noqa: F401  # lazy: optional dependency, probed here
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton  # lazy: optional dependency (GPU only)
    import triton.language as tl  # lazy: optional dependency (GPU only)

    @triton.jit
    def dfa_kernel(
        feat_ptr, shape_ptr, start_ptr, loc_ptr, w_ptr,  # inputs
        rows, num_anchor,  # scalars (TensorRT extra_args)
        out_ptr,  # output
        C: tl.constexpr, G: tl.constexpr, P: tl.constexpr, CAMS: tl.constexpr, L: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        ba = tl.program_id(0).to(tl.int64)  # batch * num_anchor + anchor
        offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = offs < C
        grp = offs // (C // G)
        b = ba // num_anchor
        feat_b = feat_ptr + b * rows * C
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        zero_i = tl.zeros([BLOCK_C], dtype=tl.int32)  # scalar masks are splat through this (interpreter-safe)
        for p in range(P):
            for cam in range(CAMS):
                s = (ba * P + p) * CAMS + cam
                x = tl.load(loc_ptr + 2 * s).to(tl.float32)
                y = tl.load(loc_ptr + 2 * s + 1).to(tl.float32)
                keep = (x > 0.0) & (x < 1.0) & (y > 0.0) & (y < 1.0)
                kmask = cmask & ((zero_i + keep.to(tl.int32)) > 0)
                for lvl in range(L):
                    hgt = tl.load(shape_ptr + (cam * L + lvl) * 2)
                    wid = tl.load(shape_ptr + (cam * L + lvl) * 2 + 1)
                    start = tl.load(start_ptr + cam * L + lvl)
                    h_im = y * hgt.to(tl.float32) - 0.5
                    w_im = x * wid.to(tl.float32) - 0.5
                    h0f = tl.floor(h_im)
                    w0f = tl.floor(w_im)
                    lh = h_im - h0f
                    lw = w_im - w0f
                    h0 = h0f.to(tl.int64)
                    w0 = w0f.to(tl.int64)
                    wg = tl.load(w_ptr + (s * L + lvl) * G + grp, mask=kmask, other=0.0).to(tl.float32)
                    val = tl.zeros([BLOCK_C], dtype=tl.float32)
                    for q in tl.static_range(4):
                        dh = q // 2
                        dw = q % 2
                        hh = h0 + dh
                        ww = w0 + dw
                        inside = (hh >= 0) & (hh < hgt) & (ww >= 0) & (ww < wid)
                        bw_h = lh if dh == 1 else 1.0 - lh
                        bw_w = lw if dw == 1 else 1.0 - lw
                        row = start + hh * wid + ww
                        v = tl.load(feat_b + row * C + offs, mask=kmask & ((zero_i + inside.to(tl.int32)) > 0), other=0.0).to(tl.float32)
                        val += (bw_h * bw_w) * v
                    acc += wg * val
        tl.store(out_ptr + ba * C + offs, acc.to(out_ptr.dtype.element_ty), mask=cmask)

    return dfa_kernel


def _block_c(channels: int) -> int:
    return min(128, 1 << max(0, (channels - 1).bit_length()))


def deformable_aggregation_triton(
    mc_ms_feat: torch.Tensor,
    spatial_shape: torch.Tensor,
    scale_start_index: torch.Tensor,
    sampling_location: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Launch the Triton kernel (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``).

    Returns ``[bs, A, C]`` in ``mc_ms_feat``'s dtype (accumulation in float32).
    """
    if not triton_available():
        raise RuntimeError("the Triton DFA needs the 'triton' package (pip install triton==3.7.1)")
    check_inputs(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if mc_ms_feat.device.type != "cuda" and not interpret:
        raise ValueError(f"the Triton DFA runs on CUDA tensors (or under TRITON_INTERPRET=1), got {mc_ms_feat.device}")
    bs, rows, c = mc_ms_feat.shape
    _, a, p, cams, levels, g = weights.shape
    device = mc_ms_feat.device
    feat = mc_ms_feat.contiguous()
    shape = spatial_shape.to(device=device, dtype=torch.int64).contiguous()
    start = scale_start_index.to(device=device, dtype=torch.int64).contiguous()
    loc = sampling_location.to(feat.dtype).contiguous()
    w = weights.to(feat.dtype).contiguous()
    out = torch.empty(bs, a, c, dtype=feat.dtype, device=device)
    block = _block_c(c)
    grid = (bs * a, -(-c // block))
    _kernel()[grid](feat, shape, start, loc, w, rows, a, out, C=c, G=g, P=p, CAMS=cams, L=levels, BLOCK_C=block)
    return out


def kernel_signature(dtype: str = "fp32") -> dict[str, str]:
    """Triton signature of the kernel's runtime parameters for ``dtype`` in {"fp32", "fp16"}."""
    return {
        "feat_ptr": f"*{dtype}", "shape_ptr": "*i64", "start_ptr": "*i64", "loc_ptr": f"*{dtype}",
        "w_ptr": f"*{dtype}", "rows": "i32", "num_anchor": "i32", "out_ptr": f"*{dtype}",
    }


@dataclass(frozen=True)
class CompiledKernel:
    """A kernel compiled ahead of time: ``ptx`` text, ``name`` (entry point), ``num_warps``,
    ``shared`` (bytes of dynamic shared memory), ``block_c`` and the ``arch`` it targets."""

    name: str
    ptx: str
    num_warps: int
    shared: int
    block_c: int
    arch: int
    cubin: bytes | None = None


def compile_ptx(
    channels: int,
    groups: int,
    num_pts: int,
    num_cams: int,
    num_levels: int,
    arch: int = 90,
    dtype: str = "fp32",
    num_warps: int = 4,
) -> CompiledKernel:
    """Compile the kernel to PTX (and cubin) for ``sm_<arch>`` without needing a GPU.

    ``triton.compile`` with an explicit ``GPUTarget`` runs the whole pipeline on the host
    (about 10 s the first time; Triton caches results in ``~/.triton``). ``ptxas`` ships with
    the Triton wheel. Raises ``RuntimeError`` when Triton is missing.
    """
    if not triton_available():
        raise RuntimeError("AOT compilation needs the 'triton' package (pip install triton==3.7.1)")
    import triton  # lazy: optional dependency (GPU only)
    from triton.backends.compiler import GPUTarget  # lazy: as above
    from triton.compiler import ASTSource  # lazy: as above

    block = _block_c(channels)
    constexprs = {"C": channels, "G": groups, "P": num_pts, "CAMS": num_cams, "L": num_levels, "BLOCK_C": block}
    signature = {**kernel_signature(dtype), **{k: "constexpr" for k in constexprs}}
    src = ASTSource(fn=_kernel(), signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    md = compiled.metadata
    return CompiledKernel(
        name=md.name, ptx=compiled.asm["ptx"], num_warps=md.num_warps, shared=md.shared, block_c=block, arch=arch,
        cubin=compiled.asm.get("cubin"),
    )
