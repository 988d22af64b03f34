"""The fused preset's pillar encoder (``model.lidar.PillarEncoder``) as one C function called through
``ctypes``: the node's LiDAR runner on the CPU (``runtime.lidar_features.Bf16LidarBranchRunner``).

Why (issue 21, bench/RESULTS.md sixteenth measurement): the exported encoder is ~80 ONNX nodes
(column gathers, the per-point MLP, one ``ScatterND(add)``, the mean, ``log1p``, a concatenation),
each a pass over the sweep or the 180 x 180 grid: 5.1 ms in ONNX Runtime for a 23k-point sweep. This
kernel makes one pass over the points (cell, features, the two-layer MLP, the sums) and one over the
occupied cells, holds no GIL while it runs, and takes 1.4 ms (``bench/bench_pillar_kernel.py``).

Semantics are :class:`~sparse_perception_ros.model.lidar.PillarEncoder`'s, which stays the reference
(training, export, the torch runner):

- a point goes to cell ``(floor((y - y0) / s), floor((x - x0) / s))`` if that is inside the grid and
  ``z0 <= z < z1`` (a NaN or infinite position fails these tests); other points and rows past ``n``
  contribute nothing (the reference's dropped dump cell);
- its features are ``[x, y, z, intensity / 255, dt..., x - cell centre x, y - cell centre y]`` with
  missing columns 0, extra columns ignored, and a NaN or infinite intensity / dt taken as 0;
- ``relu(W2 relu(W1 f + b1) + b2)`` per point, summed per cell with a count;
- output ``[ny, nx, C + 1]`` float32, channels last: the cell's mean feature, then ``log1p(count)``
  (empty cells all 0).

The float32 arithmetic follows the reference's operation order; the MLP's dot products are summed in
another order than torch's GEMM, so results agree within ~1e-6 relative (``test/test_ops_pillars_cpu.py``).
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import torch

from sparse_perception_ros.ops.dfa_cpu import CLibrary, FastDFAUnavailable

__all__ = ["PillarKernel", "available"]

KERNEL_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* C (channels) and F (= point_dims + 2 input features) are compile-time constants, so the MLP's
   accumulators stay in vector registers; one library is built per (C, F). */
#define C PILLAR_C
#define F PILLAR_F

/* points [n_rows, point_cols] float32 row-major; the first n used. w1t [F, C], b1 [C], w2t [C, C], b2 [C]
   (torch Linear weights transposed: in x out). out [ny, nx, C + 1], written whole. grid: x0, y0, z0,
   z1, pillar size, nx, ny. Returns 0, or 2 when out of memory. */
int pillars_forward(const float* points, int64_t n, int64_t point_cols,
                    const float* w1t, const float* b1, const float* w2t, const float* b2,
                    float x0, float y0, float z0, float z1, float ps, int64_t nx, int64_t ny, float* out) {
    const int64_t cells = nx * ny;
    memset(out, 0, (size_t)cells * (C + 1) * sizeof(float));  /* sums, then the count, per cell */
    int64_t* occupied = (int64_t*)malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    if (!occupied) return 2;
    int64_t n_occupied = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float* p = points + i * point_cols;
        const float px = p[0], py = p[1], pz = p[2];
        const float fx = floorf((px - x0) / ps), fy = floorf((py - y0) / ps);
        if (!(fx >= 0.0f && fx < (float)nx && fy >= 0.0f && fy < (float)ny && pz >= z0 && pz < z1)) continue;
        const int64_t cell = (int64_t)fy * nx + (int64_t)fx;
        float f[F];
        f[0] = px; f[1] = py; f[2] = pz;
        for (int k = 3; k < F - 2; ++k) {
            float v = k < point_cols ? p[k] : 0.0f;
            if (!isfinite(v)) v = 0.0f;
            f[k] = k == 3 ? v / 255.0f : v;
        }
        f[F - 2] = px - (x0 + (fx + 0.5f) * ps);
        f[F - 1] = py - (y0 + (fy + 0.5f) * ps);
        /* output-major accumulation over the transposed weights: the inner loops run across outputs,
           which vectorises without reassociating any sum (each output adds its terms in input order,
           then its bias, as a dot product would) */
        float h[C], g[C];
        for (int o = 0; o < C; ++o) h[o] = 0.0f;
        for (int k = 0; k < F; ++k)
            for (int o = 0; o < C; ++o) h[o] += w1t[k * C + o] * f[k];
        for (int o = 0; o < C; ++o) { const float a = h[o] + b1[o]; h[o] = a > 0.0f ? a : 0.0f; }
        for (int o = 0; o < C; ++o) g[o] = 0.0f;
        for (int k = 0; k < C; ++k)
            for (int o = 0; o < C; ++o) g[o] += w2t[k * C + o] * h[k];
        float* s = out + cell * (C + 1);
        if (s[C] == 0.0f) occupied[n_occupied++] = cell;
        for (int o = 0; o < C; ++o) { const float a = g[o] + b2[o]; s[o] += a > 0.0f ? a : 0.0f; }
        s[C] += 1.0f;
    }
    for (int64_t j = 0; j < n_occupied; ++j) {  /* empty cells stay 0: a 0 mean and log1p(0) */
        float* s = out + occupied[j] * (C + 1);
        const float count = s[C];
        const float denom = count > 1.0f ? count : 1.0f;
        for (int o = 0; o < C; ++o) s[o] = s[o] / denom;
        s[C] = log1pf(count);
    }
    free(occupied);
    return 0;
}
"""

_lock = threading.Lock()
_libraries: dict[tuple[int, int], CLibrary] = {}


def _get_lib(channels: int = 32, features: int = 6) -> ctypes.CDLL:
    """The kernel compiled for ``channels`` (C) and ``features`` (F), built once per pair."""
    key = (int(channels), int(features))
    with _lock:
        library = _libraries.get(key)
        if library is None:
            source = f"#define PILLAR_C {key[0]}\n#define PILLAR_F {key[1]}\n" + KERNEL_SOURCE
            i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
            library = _libraries[key] = CLibrary(source, f"pillars_cpu_c{key[0]}_f{key[1]}", {
                "pillars_forward": ([ptr, i64, i64, ptr, ptr, ptr, ptr, f32, f32, f32, f32, f32, i64, i64, ptr],
                                    ctypes.c_int)})
    return library.get()


def available() -> bool:
    """True when the C kernel is compiled (or compiles now) and loads (checked for the fused preset's
    32 channels and 4 point columns; other sizes compile on first use)."""
    try:
        _get_lib()
    except FastDFAUnavailable:
        return False
    return True


class PillarKernel:
    """A :class:`~sparse_perception_ros.model.lidar.PillarEncoder`'s inference in the C kernel: its
    weights copied once (float32, contiguous) at construction. ``__call__(points (N, >=3) | None)``
    -> ``[ny, nx, C + 1]`` float32 channels last (a sweep of no points, or None: every cell 0).
    Thread-safe (no state is written after construction). Raises :class:`FastDFAUnavailable` when
    the kernel cannot be built, ``ValueError`` for an encoder it does not cover."""

    def __init__(self, encoder: torch.nn.Module):
        linears = [m for m in encoder.mlp if isinstance(m, torch.nn.Linear)]
        relus = [m for m in encoder.mlp if isinstance(m, torch.nn.ReLU)]
        if len(linears) != 2 or len(relus) != 2 or len(encoder.mlp) != 4:
            raise ValueError("the pillar kernel covers an MLP of (Linear, ReLU, Linear, ReLU) only")
        cfg = encoder.cfg
        self.cfg = cfg
        self.point_dims = cfg.point_dims
        with torch.no_grad():
            # the weights transposed to [in, out] (the kernel's loops run across outputs)
            self._w = [np.ascontiguousarray(t.detach().float().cpu().numpy())
                       for t in (linears[0].weight.T, linears[0].bias, linears[1].weight.T, linears[1].bias)]
        self.channels = self._w[0].shape[1]
        if self._w[0].shape[0] != self.point_dims + 2 or self._w[2].shape != (self.channels, self.channels):
            raise ValueError(f"pillar MLP shapes {[w.shape for w in self._w]} do not fit point_dims {self.point_dims}")
        self._lib = _get_lib(self.channels, self.point_dims + 2)

    def __call__(self, points: np.ndarray | None) -> np.ndarray:
        cfg = self.cfg
        nx, ny = cfg.grid_size
        out = np.empty((ny, nx, self.channels + 1), np.float32)
        pts = np.zeros((0, 3), np.float32) if points is None else np.ascontiguousarray(points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise ValueError(f"points must be (N, >=3), got {pts.shape}")
        x0, y0, z0, _, _, z1 = (float(v) for v in cfg.point_range)
        w1, b1, w2, b2 = self._w
        status = self._lib.pillars_forward(
            pts.ctypes.data, pts.shape[0], pts.shape[1], w1.ctypes.data, b1.ctypes.data, w2.ctypes.data,
            b2.ctypes.data, x0, y0, z0, z1, float(cfg.pillar_size), nx, ny, out.ctypes.data)
        if status != 0:
            raise MemoryError("the pillar kernel could not allocate its cell list")
        return out
