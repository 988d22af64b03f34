"""The bicubic resize kernel (``ops.resize_cpu``) against Pillow: every kept pixel identical, bit for
bit, for downscales, upscales, unchanged sizes and any crop (the reference's preprocessing is Pillow's
bicubic; ``model.preprocess`` uses the kernel where it builds)."""

import numpy as np
import pytest
from PIL import Image

from sparse_perception_ros.geometry.image_transform import compute_resize_crop
from sparse_perception_ros.ops import resize_cpu

pytestmark = pytest.mark.skipif(not resize_cpu.available(), reason="no C compiler: the resize kernel cannot be built")


def pillow(image, resized_wh, crop):
    x0, y0, x1, y1 = crop
    return np.asarray(Image.fromarray(image).resize(resized_wh, Image.Resampling.BICUBIC))[y0:y1, x0:x1]


@pytest.mark.parametrize("src_wh,dst_wh", [((440, 248), (352, 128)), ((1600, 900), (704, 256)), ((1280, 720), (704, 256)),
                                           ((640, 480), (704, 256)), ((352, 198), (352, 128)), ((333, 257), (160, 96))])
def test_kernel_equals_pillow_bit_for_bit_on_the_reference_crop(src_wh, dst_wh):
    rng = np.random.default_rng(src_wh[0])
    rc = compute_resize_crop(src_wh, dst_wh)
    # noise (large overshoots, clipping) and a smooth gradient with hard edges
    noise = rng.integers(0, 256, (src_wh[1], src_wh[0], 3), dtype=np.uint8)
    yy, xx = np.mgrid[: src_wh[1], : src_wh[0]]
    smooth = np.stack([xx * 255 // src_wh[0], yy * 255 // src_wh[1], ((xx // 17 + yy // 13) % 2) * 255], -1).astype(np.uint8)
    for image in (noise, smooth):
        got = resize_cpu.resize_crop_bicubic(image, rc.resized_wh, rc.crop)
        assert got.shape == (dst_wh[1], dst_wh[0], 3)
        np.testing.assert_array_equal(got, pillow(image, rc.resized_wh, rc.crop))


def test_kernel_equals_pillow_for_any_crop_and_rejects_bad_ones():
    """Any crop of a resize Pillow runs horizontal pass first (the reference's one-scale resizes, and
    every upscale of the height); bad crops and images raise."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    for resized in ((50, 40), (83, 61), (83, 90), (120, 90), (40, 61), (60, 44), (166, 122)):
        full = pillow(image, resized, (0, 0, *resized))
        for _ in range(10):
            x0, y0 = int(rng.integers(0, resized[0] - 1)), int(rng.integers(0, resized[1] - 1))
            x1, y1 = int(rng.integers(x0 + 1, resized[0] + 1)), int(rng.integers(y0 + 1, resized[1] + 1))
            np.testing.assert_array_equal(resize_cpu.resize_crop_bicubic(image, resized, (x0, y0, x1, y1)),
                                          full[y0:y1, x0:x1])
    with pytest.raises(ValueError, match="not inside"):
        resize_cpu.resize_crop_bicubic(image, (50, 40), (0, 0, 51, 40))
    with pytest.raises(ValueError, match="uint8"):
        resize_cpu.resize_crop_bicubic(image.astype(np.float32), (50, 40), (0, 0, 50, 40))


def test_sizes_pillow_resamples_vertically_first_fall_back_to_pillow():
    """Pillow 13 runs the vertical pass first when the height shrinks much more than the width; the
    kernel does not, ``matches_pillow`` finds that once per size, and the preprocessing then uses
    Pillow, so its output is Pillow's either way."""
    from sparse_perception_ros.geometry.image_transform import ResizeCrop
    from sparse_perception_ros.model.preprocess import resize_crop_image

    image = np.random.default_rng(3).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    assert resize_cpu.matches_pillow((440, 248), (352, 198), (0, 70, 352, 198))  # the fused preset's cameras
    for resized in ((120, 30), (80, 20)):
        crop = (0, 0, *resized)
        assert not np.array_equal(resize_cpu.resize_crop_bicubic(image, resized, crop), pillow(image, resized, crop))
        assert not resize_cpu.matches_pillow((83, 61), resized, crop)
        rc = ResizeCrop(scale=resized[0] / 83, resized_wh=resized, crop=crop)
        np.testing.assert_array_equal(resize_crop_image(image, rc), pillow(image, resized, crop))
