"""Fast CPU deformable aggregation: a small C kernel (OpenMP) called through ``ctypes``.

Same signature and semantics as :func:`~.deformable_aggregation.deformable_aggregation` (the
CUDA kernel's rules: ``pos = loc * size - 0.5``, zero padding, samples with ``loc`` outside the
open unit square dropped, channel ``c`` in group ``c // (C / G)``).

Why C through ctypes (measured, ``bench/bench_dfa.py``): the vectorised torch reference
(``embedding_bag`` over kept samples) spends most of its time materialising index and weight
tensors; a plain loop that skips dropped samples and reads the 4 neighbours' channel rows in
place is several times faster, and a C file with no torch headers compiles in about a second
(a torch C++ extension takes ~1 min and numba is not in our stack). One output row per
(batch, anchor) is written by one thread, so the result is deterministic (no atomics).

The shared library is compiled on first use with the system C compiler (``$CC`` or ``cc``)
into ``$XDG_CACHE_HOME/sparse_perception_ros/`` (or ``~/.cache/...``), keyed by a hash of the
source and flags. :func:`available` says whether that worked; :func:`deformable_aggregation_fast`
raises :class:`FastDFAUnavailable` with the compiler's message when it did not.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from sparse_perception_ros.ops.dfa_shapes import check_inputs

__all__ = ["deformable_aggregation_fast", "deformable_aggregation_numpy", "available", "FastDFAUnavailable", "KERNEL_SOURCE", "CLibrary",
           "build_library"]

KERNEL_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* One kept (sample, level) pair: the output row, the sample index and the level. */
typedef struct { int32_t ba; int32_t l; int64_t s; } entry_t;

static void accumulate(const entry_t *e, const float *feat, const int64_t *shape, const int64_t *start,
                       const float *loc, const float *w, float *out, int64_t rows, int64_t C, int64_t A,
                       int64_t cams, int64_t L, int64_t G) {
  const int64_t cg = C / G;
  const int64_t s = e->s, l = e->l, cam = s % cams, b = e->ba / A;
  const float x = loc[2 * s], y = loc[2 * s + 1];
  const int64_t H = shape[(cam * L + l) * 2], W = shape[(cam * L + l) * 2 + 1];
  const float h_im = y * (float)H - 0.5f, w_im = x * (float)W - 0.5f;
  const float h0f = floorf(h_im), w0f = floorf(w_im);
  const float lh = h_im - h0f, lw = w_im - w0f;
  const int64_t h0 = (int64_t)h0f, w0 = (int64_t)w0f;
  const float *base = feat + (b * rows + start[cam * L + l]) * C;
  const int64_t hs[4] = {h0, h0, h0 + 1, h0 + 1}, wsx[4] = {w0, w0 + 1, w0, w0 + 1};
  const float bw[4] = {(1.f - lh) * (1.f - lw), (1.f - lh) * lw, lh * (1.f - lw), lh * lw};
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  const float *r[4] = {base, base, base, base};
  for (int q = 0; q < 4; ++q) {
    if (hs[q] >= 0 && hs[q] < H && wsx[q] >= 0 && wsx[q] < W) {
      c[q] = bw[q];
      r[q] = base + (hs[q] * W + wsx[q]) * C;
    }
  }
  const float *wl = w + (s * L + l) * G;
  float *acc = out + (int64_t)e->ba * C;
  for (int64_t g = 0; g < G; ++g) {
    const float wg = wl[g];
    const int64_t o = g * cg;
    const float *restrict r0 = r[0] + o, *restrict r1 = r[1] + o, *restrict r2 = r[2] + o,
                *restrict r3 = r[3] + o;
    const float c0 = c[0] * wg, c1 = c[1] * wg, c2 = c[2] * wg, c3 = c[3] * wg;
    float *restrict a = acc + o;
    if (cg == 32) { /* the release and tiny presets: a fixed trip count unrolls into 2-4 vector ops */
      for (int j = 0; j < 32; ++j) a[j] += c0 * r0[j] + c1 * r1[j] + c2 * r2[j] + c3 * r3[j];
    } else if (cg == 8) {
      for (int j = 0; j < 8; ++j) a[j] += c0 * r0[j] + c1 * r1[j] + c2 * r2[j] + c3 * r3[j];
    } else {
      for (int64_t j = 0; j < cg; ++j) a[j] += c0 * r0[j] + c1 * r1[j] + c2 * r2[j] + c3 * r3[j];
    }
  }
}

/* feat [bs, rows, C]; shape [cams, L, 2] (H, W); start [cams, L]; loc [bs, A, P, cams, 2];
   w [bs, A, P, cams, L, G]; out [bs, A, C].
   1. list the kept (sample, level) pairs (loc inside the open unit square);
   2. counting-sort them by the feature row of their top-left neighbour, so that the gathers
      stream through the feature maps instead of jumping at random (the op is memory bound);
   3. accumulate in that order; with several threads each one owns a private output buffer
      over a contiguous slice of the sorted list, summed in thread order (deterministic). */
int dfa_forward(const float *feat, const int64_t *shape, const int64_t *start, const float *loc,
                const float *w, float *out, int64_t bs, int64_t rows, int64_t C, int64_t A,
                int64_t P, int64_t cams, int64_t L, int64_t G, int nthreads) {
  const int64_t nsamples = bs * A * P * cams;
  const int64_t nkeys = bs * rows + 1;
  int64_t n = 0;
  entry_t *ent = (entry_t *)malloc(sizeof(entry_t) * (size_t)(nsamples * L + 1));
  int64_t *key = (int64_t *)malloc(sizeof(int64_t) * (size_t)(nsamples * L + 1));
  int64_t *count = (int64_t *)calloc((size_t)(nkeys + 1), sizeof(int64_t));
  entry_t *sorted = (entry_t *)malloc(sizeof(entry_t) * (size_t)(nsamples * L + 1));
  if (!ent || !key || !count || !sorted) { free(ent); free(key); free(count); free(sorted); return 1; }
  for (int64_t s = 0; s < nsamples; ++s) {
    const float x = loc[2 * s], y = loc[2 * s + 1];
    if (!(x > 0.f && x < 1.f && y > 0.f && y < 1.f)) continue;
    const int64_t cam = s % cams, ba = s / (P * cams), b = ba / A;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t H = shape[(cam * L + l) * 2], W = shape[(cam * L + l) * 2 + 1];
      int64_t h0 = (int64_t)floorf(y * (float)H - 0.5f), w0 = (int64_t)floorf(x * (float)W - 0.5f);
      h0 = h0 < 0 ? 0 : h0;
      w0 = w0 < 0 ? 0 : w0;
      const int64_t k = b * rows + start[cam * L + l] + h0 * W + w0;
      ent[n].ba = (int32_t)ba; ent[n].l = (int32_t)l; ent[n].s = s;
      key[n] = k < nkeys - 1 ? k : nkeys - 1;
      count[key[n] + 1]++;
      ++n;
    }
  }
  for (int64_t k = 0; k < nkeys; ++k) count[k + 1] += count[k];
  for (int64_t i = 0; i < n; ++i) sorted[count[key[i]]++] = ent[i];
  free(ent); free(key); free(count);
  memset(out, 0, sizeof(float) * (size_t)(bs * A * C));
  int nt = nthreads < 1 ? 1 : nthreads;
  if (n < 4096) nt = 1;
  if (nt == 1) {
    for (int64_t i = 0; i < n; ++i) accumulate(&sorted[i], feat, shape, start, loc, w, out, rows, C, A, cams, L, G);
  } else {
    const int64_t size = bs * A * C;
    float *priv = (float *)calloc((size_t)(size * (nt - 1)), sizeof(float));
    if (!priv) { free(sorted); return 1; }
#pragma omp parallel num_threads(nt)
    {
      int t = 0, T = 1;
#ifdef _OPENMP
      t = omp_get_thread_num();
      T = omp_get_num_threads();
#endif
      float *dst = t == 0 ? out : priv + (int64_t)(t - 1) * size;
      const int64_t lo = n * t / T, hi = n * (t + 1) / T;
      for (int64_t i = lo; i < hi; ++i) accumulate(&sorted[i], feat, shape, start, loc, w, dst, rows, C, A, cams, L, G);
    }
    for (int t = 1; t < nt; ++t) {
      const float *src = priv + (int64_t)(t - 1) * size;
      for (int64_t i = 0; i < size; ++i) out[i] += src[i];
    }
    free(priv);
  }
  free(sorted);
  return 0;
}
"""

_CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c99"]


class FastDFAUnavailable(RuntimeError):
    """The C kernel could not be compiled or loaded (no C compiler, no OpenMP, ...)."""


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "sparse_perception_ros"


def build_library(source: str, stem: str) -> Path:
    """Compile ``source`` (C99, :data:`_CFLAGS`) into a shared library named ``{stem}_{hash}.so`` in the
    cache folder, once per source, flags and compiler; returns its path. Raises
    :class:`FastDFAUnavailable` with the compiler's message when it cannot be built."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise FastDFAUnavailable("no C compiler found (set $CC or install gcc)")
    key = hashlib.sha256((source + " ".join(_CFLAGS) + cc).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{stem}_{key}.so"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home (CI, containers): build in the temp dir instead
        target = Path(tempfile.gettempdir()) / f"sparse_perception_ros-{os.getuid()}" / target.name
        target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src = Path(tmp) / f"{stem}.c"
            src.write_text(source)
            tmp_so = Path(tmp) / target.name
            proc = subprocess.run([cc, *_CFLAGS, str(src), "-o", str(tmp_so), "-lm"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise FastDFAUnavailable(f"compiling {stem} with {cc} failed: {proc.stderr.strip()[:500]}")
            os.replace(tmp_so, target)  # atomic: concurrent processes never see a half-written file
    return target


class CLibrary:
    """A C source built (:func:`build_library`) and loaded with ``ctypes`` on first use, once per
    process; ``functions`` gives each exported function's ``(argtypes, restype)``. A failure is
    remembered and raised again as :class:`FastDFAUnavailable` on every later use. Thread-safe.
    The kernels of this package (this module's, ``pillars_cpu``, ``resize_cpu``) share it."""

    def __init__(self, source: str, stem: str, functions: dict[str, tuple[list, object]]):
        self.source, self.stem, self.functions = source, stem, functions
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._error: str | None = None

    def get(self) -> ctypes.CDLL:
        with self._lock:
            if self._lib is None and self._error is None:
                try:
                    lib = ctypes.CDLL(str(build_library(self.source, self.stem)))
                    for name, (argtypes, restype) in self.functions.items():
                        fn = getattr(lib, name)
                        fn.argtypes, fn.restype = argtypes, restype
                    self._lib = lib
                except (OSError, FastDFAUnavailable) as exc:
                    self._error = str(exc)
            if self._lib is None:
                raise FastDFAUnavailable(self._error)
            return self._lib

    def available(self) -> bool:
        """True when the library is built (or builds now) and loads."""
        try:
            self.get()
        except FastDFAUnavailable:
            return False
        return True


_LIBRARY = CLibrary(KERNEL_SOURCE, "dfa_cpu", {
    "dfa_forward": ([ctypes.c_void_p] * 6 + [ctypes.c_int64] * 8 + [ctypes.c_int], ctypes.c_int)})


def _get_lib() -> ctypes.CDLL:
    return _LIBRARY.get()


def available() -> bool:
    """True when the C kernel is compiled (or compiles now) and loads."""
    return _LIBRARY.available()


def _run(feat, shape, start, loc, w, out, nthreads: int) -> None:
    bs, rows, c = feat.shape
    _, a, p, cams, levels, g = w.shape
    status = _get_lib().dfa_forward(
        feat.ctypes.data, shape.ctypes.data, start.ctypes.data, loc.ctypes.data, w.ctypes.data, out.ctypes.data,
        bs, rows, c, a, p, cams, levels, g, int(nthreads),
    )
    if status != 0:
        raise MemoryError("the CPU DFA kernel could not allocate its work buffers")


def deformable_aggregation_numpy(
    mc_ms_feat: np.ndarray,
    spatial_shape: np.ndarray,
    scale_start_index: np.ndarray,
    sampling_location: np.ndarray,
    weights: np.ndarray,
    num_threads: int | None = None,
) -> np.ndarray:
    """numpy in, numpy out (used by the ONNX Runtime custom op). Shapes as the torch function."""
    check_inputs(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights)
    feat = np.ascontiguousarray(mc_ms_feat, dtype=np.float32)
    shape = np.ascontiguousarray(spatial_shape, dtype=np.int64)
    start = np.ascontiguousarray(scale_start_index, dtype=np.int64)
    loc = np.ascontiguousarray(sampling_location, dtype=np.float32)
    w = np.ascontiguousarray(weights, dtype=np.float32)
    out = np.empty((feat.shape[0], loc.shape[1], feat.shape[2]), dtype=np.float32)
    _run(feat, shape, start, loc, w, out, num_threads or torch.get_num_threads())
    return out


def deformable_aggregation_fast(
    mc_ms_feat: torch.Tensor,
    spatial_shape: torch.Tensor,
    scale_start_index: torch.Tensor,
    sampling_location: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """CPU float32 DFA with kernel semantics: ``[bs, cams * sum HW, C]`` features -> ``[bs, A, C]``.

    Inputs as :func:`~.deformable_aggregation.deformable_aggregation`. Runs with
    ``torch.get_num_threads()`` OpenMP threads. Inference only (no backward): raises
    ``ValueError`` when an input requires grad with grad mode on, on inconsistent shapes or on
    non-CPU tensors; :class:`FastDFAUnavailable` when the C kernel cannot be built.
    """
    check_inputs(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (mc_ms_feat, sampling_location, weights)):
        raise ValueError("the fast CPU DFA has no backward; use impl='reference' for training")
    for t in (mc_ms_feat, sampling_location, weights):
        if t.device.type != "cpu":
            raise ValueError(f"the fast CPU DFA takes CPU tensors, got {t.device}")
    dtype = mc_ms_feat.dtype
    with torch.no_grad():
        feat = mc_ms_feat.detach().to(torch.float32).contiguous()
        loc = sampling_location.detach().to(torch.float32).contiguous()
        w = weights.detach().to(torch.float32).contiguous()
        out = torch.empty(feat.shape[0], loc.shape[1], feat.shape[2], dtype=torch.float32)
        _run(feat.numpy(), spatial_shape.to("cpu", torch.int64).contiguous().numpy(),
             scale_start_index.to("cpu", torch.int64).contiguous().numpy(), loc.numpy(), w.numpy(), out.numpy(),
             torch.get_num_threads())
    return out.to(dtype)
