"""GPU-side preprocessing (``preprocess_images_torch``) against the reference PIL path.

Tolerance: torch's antialiased bicubic is PIL-compatible but not bit-identical; after rounding to
uint8 levels, at most 5 levels (0.09 after normalisation) at sharp edges and noise, 0.01 on average.
Projection matrices and image sizes are computed by the same host code: equal exactly.
"""

import numpy as np
import pytest
import torch

from sparse_perception_ros.model.preprocess import preprocess_images, preprocess_images_torch


def images(n=2, hw=(450, 800)):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:hw[0], 0:hw[1]]
    out = []
    for i in range(n):
        base = 127 + 100 * np.sin(x / 17.0 + i) * np.cos(y / 11.0)
        im = np.stack([base, base[::-1], 255 - base], -1)
        im[hw[0] // 4: hw[0] // 4 + 20, 100:220] = rng.integers(0, 256, (20, 120, 3))  # noise and hard edges
        out.append(np.clip(im, 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_torch_preprocessing_matches_the_pil_reference(order):
    ims = images()
    proj = np.tile(np.eye(4), (2, 1, 1)) + 0.1
    a = preprocess_images(ims, proj, (352, 128), order)
    b = preprocess_images_torch(ims, proj, (352, 128), order, device="cpu")
    assert b[0].shape == a[0].shape == (1, 2, 3, 128, 352)
    diff = (a[0] - b[0]).abs()
    assert float(diff.max()) <= 5 / 57.12 and float(diff.mean()) <= 0.01, (float(diff.max()), float(diff.mean()))
    torch.testing.assert_close(b[1], a[1], atol=0, rtol=0)
    torch.testing.assert_close(b[2], a[2], atol=0, rtol=0)
    swapped = preprocess_images_torch(ims, proj, (352, 128), "bgr" if order == "rgb" else "rgb")[0]
    assert float((swapped - b[0]).abs().max()) > 1.0  # the channel order is applied, not ignored


def test_same_size_image_is_not_resampled():
    """An image already at the input size is only normalised: equal to PIL's path to float rounding."""
    ims = images(1, (128, 352))
    a = preprocess_images(ims, np.eye(4)[None], (352, 128), "rgb")[0]
    b = preprocess_images_torch(ims, np.eye(4)[None], (352, 128), "rgb")[0]
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_cuda_preprocessing_from_pinned_memory_matches_cpu():
    """On CUDA (pinned upload, GPU resize) the result equals the CPU torch path to 1e-4 (bicubic
    kernels differ in float summation order only) and lives on the GPU."""
    ims = images()
    proj = np.tile(np.eye(4), (2, 1, 1))
    cpu = preprocess_images_torch(ims, proj, (352, 128), "rgb", device="cpu")
    for _ in range(2):  # the second call reuses the pinned buffers
        gpu = preprocess_images_torch(ims, proj, (352, 128), "rgb", device="cuda")
    assert all(t.device.type == "cuda" for t in gpu)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=0)
