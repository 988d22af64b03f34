"""Pillow's bicubic resize, bit for bit, computing only the rows and columns a crop keeps: a small C
kernel called through ``ctypes`` (the image preprocessing of ``model.preprocess``, issue 21).

The reference pipeline resizes each camera image with PIL's bicubic filter and then keeps the bottom
rows (``geometry.image_transform.compute_resize_crop``): for the fused preset's 440 x 248 images,
352 x 198 pixels are made and 352 x 128 kept, and PIL's resize was 1.5 of the 1.9 ms a preprocessed
image cost. ``Image.resize(box=...)`` resamples less but moves the filter centres (±1 level on some
pixels), so it is not the reference. This kernel follows Pillow's own rule (``Resample.c`` of Pillow
13: the two-pass separable convolution, horizontal pass first into an 8-bit intermediate, the bicubic
kernel with ``a = -0.5`` and support 2 scaled by the downscale factor, coefficients normalised per
output pixel in double precision and rounded to 22-bit fixed point, sums started at half a unit and
clipped to 0..255) for exactly the output pixels inside the crop, so every kept pixel is the one
Pillow would compute (``test/test_ops_resize_cpu.py`` compares them with Pillow on many sizes). The
vertical pass runs across whole rows, which the compiler vectorises.

Pillow 13 picks the order of the two passes itself, and takes the vertical one first when the height
shrinks much more than the width (measured: 83 x 61 -> 120 x 30 or -> 80 x 20); this kernel always
runs the horizontal one first, which is Pillow's order for the reference's resizes (one scale for both
axes). :func:`matches_pillow` checks a size once against Pillow, and ``model.preprocess`` uses the
kernel only where it does.
"""

from __future__ import annotations

import ctypes

import numpy as np

from sparse_perception_ros.ops.dfa_cpu import CLibrary

__all__ = ["available", "matches_pillow", "resize_crop_bicubic"]

KERNEL_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FIXED_BITS 22  /* 32 bits - 8 for the result - 2 for the filter's overshoot */

static double bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static inline uint8_t clip8(int32_t acc) {
    const int32_t v = acc >> FIXED_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* The taps of outputs [first, last) of a resize from in_size to out_size samples (the whole input as
   the box): start[i], count[i] and count fixed-point weights at weights[i * ksize]; returns ksize, or 0
   when out of memory. */
static int taps(int in_size, int out_size, int first, int last, int** start_p, int** count_p, int32_t** weights_p) {
    const double scale = (double)in_size / out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = 2.0 * filterscale;
    const int ksize = (int)ceil(support) * 2 + 1;
    const int n = last - first;
    int* start = (int*)malloc(sizeof(int) * (size_t)n);
    int* count = (int*)malloc(sizeof(int) * (size_t)n);
    int32_t* weights = (int32_t*)calloc((size_t)n * (size_t)ksize, sizeof(int32_t));
    double* k = (double*)malloc(sizeof(double) * (size_t)ksize);
    if (!start || !count || !weights || !k) { free(start); free(count); free(weights); free(k); return 0; }
    for (int i = 0; i < n; ++i) {
        const int xx = first + i;
        const double center = (xx + 0.5) * scale;
        const double ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) { k[x] = bicubic((x + xmin - center + 0.5) * ss); ww += k[x]; }
        for (int x = 0; x < xmax; ++x) {
            const double v = ww != 0.0 ? k[x] / ww : k[x];
            weights[i * ksize + x] = v < 0 ? (int32_t)(-0.5 + v * (1 << FIXED_BITS)) : (int32_t)(0.5 + v * (1 << FIXED_BITS));
        }
        start[i] = xmin;
        count[i] = xmax;
    }
    free(k);
    *start_p = start; *count_p = count; *weights_p = weights;
    return ksize;
}

/* img [h, w, 3] uint8 -> out [cy1 - cy0, cx1 - cx0, 3] uint8: the pixels (cx0..cx1, cy0..cy1) of the
   image resized to rw x rh. A pass whose size does not change is a copy, as in Pillow. Returns 0, or 2
   when out of memory. */
int resize_crop(const uint8_t* img, int h, int w, int rw, int rh, int cx0, int cy0, int cx1, int cy1, uint8_t* out) {
    const int cw = cx1 - cx0, ch = cy1 - cy0;
    int *hs = NULL, *hc = NULL, *vs = NULL, *vc = NULL;
    int32_t *hk = NULL, *vk = NULL;
    uint8_t* tmp = NULL;
    int32_t* acc = NULL;
    int status = 2;
    const int need_h = rw != w, need_v = rh != h;
    const int hks = need_h ? taps(w, rw, cx0, cx1, &hs, &hc, &hk) : 1;
    const int vks = need_v ? taps(h, rh, cy0, cy1, &vs, &vc, &vk) : 1;
    if (!hks || !vks) goto done;
    /* the input rows the kept output rows read */
    const int y_first = need_v ? vs[0] : cy0;
    const int y_last = need_v ? vs[ch - 1] + vc[ch - 1] : cy1;
    const int rows = y_last - y_first;
    tmp = (uint8_t*)malloc((size_t)rows * (size_t)cw * 3);
    acc = (int32_t*)malloc(sizeof(int32_t) * (size_t)cw * 3);
    if (!tmp || !acc) goto done;
    for (int r = 0; r < rows; ++r) {  /* horizontal pass, rows y_first .. y_last of the input */
        const uint8_t* src = img + (size_t)(y_first + r) * w * 3;
        uint8_t* dst = tmp + (size_t)r * cw * 3;
        if (!need_h) { memcpy(dst, src + (size_t)cx0 * 3, (size_t)cw * 3); continue; }
        for (int i = 0; i < cw; ++i) {
            const int32_t* k = hk + (size_t)i * hks;
            const uint8_t* p = src + (size_t)hs[i] * 3;
            int32_t s0 = 1 << (FIXED_BITS - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < hc[i]; ++x) {
                s0 += p[3 * x] * k[x]; s1 += p[3 * x + 1] * k[x]; s2 += p[3 * x + 2] * k[x];
            }
            dst[3 * i] = clip8(s0); dst[3 * i + 1] = clip8(s1); dst[3 * i + 2] = clip8(s2);
        }
    }
    const int n = cw * 3;
    for (int j = 0; j < ch; ++j) {  /* vertical pass, across whole rows */
        uint8_t* dst = out + (size_t)j * n;
        if (!need_v) { memcpy(dst, tmp + (size_t)(cy0 + j - y_first) * n, (size_t)n); continue; }
        const int32_t* k = vk + (size_t)j * vks;
        for (int i = 0; i < n; ++i) acc[i] = 1 << (FIXED_BITS - 1);
        for (int y = 0; y < vc[j]; ++y) {
            const uint8_t* row = tmp + (size_t)(vs[j] + y - y_first) * n;
            const int32_t kv = k[y];
            for (int i = 0; i < n; ++i) acc[i] += row[i] * kv;
        }
        for (int i = 0; i < n; ++i) dst[i] = clip8(acc[i]);
    }
    status = 0;
done:
    free(hs); free(hc); free(hk); free(vs); free(vc); free(vk); free(tmp); free(acc);
    return status;
}
"""

_LIBRARY = CLibrary(KERNEL_SOURCE, "resize_cpu",
                    {"resize_crop": ([ctypes.c_void_p] + [ctypes.c_int] * 8 + [ctypes.c_void_p], ctypes.c_int)})


def available() -> bool:
    """True when the C kernel is compiled (or compiles now) and loads."""
    return _LIBRARY.available()


def resize_crop_bicubic(image: np.ndarray, resized_wh: tuple[int, int], crop: tuple[int, int, int, int]) -> np.ndarray:
    """``image (H, W, 3) uint8`` -> ``np.asarray(Image.fromarray(image).resize(resized_wh, BICUBIC))[y0:y1, x0:x1]``
    (``crop = (x0, y0, x1, y1)`` in resized pixels), computing only the kept pixels. Raises
    :class:`~.dfa_cpu.FastDFAUnavailable` without the kernel, ``ValueError`` for a bad crop or image."""
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {img.shape} {img.dtype}")
    rw, rh = (int(v) for v in resized_wh)
    x0, y0, x1, y1 = (int(v) for v in crop)
    if rw <= 0 or rh <= 0 or not (0 <= x0 < x1 <= rw and 0 <= y0 < y1 <= rh):
        raise ValueError(f"crop {crop} is not inside the resized image {resized_wh}")
    out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    status = _LIBRARY.get().resize_crop(img.ctypes.data, img.shape[0], img.shape[1], rw, rh, x0, y0, x1, y1, out.ctypes.data)
    if status != 0:
        raise MemoryError("the resize kernel could not allocate its buffers")
    return out


_checked: dict[tuple, bool] = {}


def matches_pillow(src_wh: tuple[int, int], resized_wh: tuple[int, int], crop: tuple[int, int, int, int]) -> bool:
    """Whether the kernel gives Pillow's pixels for this resize and crop: checked once per size on a
    seeded noise image (noise overshoots and clips, where a different pass order or rounding shows),
    then remembered. False where the kernel does not build."""
    key = (tuple(int(v) for v in src_wh), tuple(int(v) for v in resized_wh), tuple(int(v) for v in crop))
    known = _checked.get(key)
    if known is not None:
        return known
    ok = False
    if available():
        from PIL import Image  # lazy: the GPU check runs this package without Pillow

        w, h = key[0]
        x0, y0, x1, y1 = key[2]
        noise = np.random.default_rng(w * 65537 + h).integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(noise).resize(key[1], Image.Resampling.BICUBIC))[y0:y1, x0:x1]
        ok = bool(np.array_equal(resize_crop_bicubic(noise, key[1], key[2]), want))
    _checked[key] = ok  # a race computes the same answer twice
    return ok
