"""Test-time preprocessing: reference resize/crop/normalise and the folded projection."""

import numpy as np
import pytest
import torch
from PIL import Image

from sparse_perception_ros.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_images


def make_image(w=1600, h=900, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 37.0)[..., None] * np.cos(yy / 23.0)[..., None] * np.array([1.0, 0.6, 0.3])
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def test_matches_reference_pipeline_for_nuscenes_size():
    bgr = make_image()
    lidar2img = np.eye(4)[None].repeat(2, 0)
    lidar2img[:, 0, 0] = lidar2img[:, 1, 1] = 1000.0
    img, proj, wh = preprocess_images([bgr, bgr], lidar2img)
    assert img.shape == (1, 2, 3, 256, 704) and img.dtype == torch.float32
    assert wh.tolist() == [[[704.0, 256.0], [704.0, 256.0]]]
    # the reference: PIL bicubic resize of the BGR uint8 image, crop rows 140..395, BGR->RGB, normalise
    ref = np.asarray(Image.fromarray(bgr).resize((704, 396), Image.BICUBIC)).astype(np.float32)[140:396]
    ref = (ref[..., ::-1] - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(img[0, 0].numpy().transpose(1, 2, 0), ref, atol=1e-5)
    expected = np.array([[440.0, 0, 0, 0], [0, 440.0, -140.0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(proj[0, 1].numpy(), expected, atol=1e-4)


def test_other_resolution_and_rgb_input():
    rgb = make_image(1280, 960)
    img, proj, _ = preprocess_images([rgb], np.eye(4)[None], channel_order="rgb")
    assert img.shape == (1, 1, 3, 256, 704)
    np.testing.assert_allclose(proj[0, 0, :2, :3].numpy(), [[0.55, 0, 0], [0, 0.55, -272.0]], atol=1e-5)
    with pytest.raises(ValueError):
        preprocess_images([rgb], np.eye(4)[None].repeat(2, 0))


def test_opencv_resizes_differ_from_pil_bicubic():
    bgr = make_image(seed=1)
    pil, _, _ = preprocess_images([bgr], np.eye(4)[None])
    cubic, _, _ = preprocess_images([bgr], np.eye(4)[None], method="cv2_cubic")
    area, _, _ = preprocess_images([bgr], np.eye(4)[None], method="cv2_area")
    # cv2 INTER_CUBIC does not antialias: clearly different; INTER_AREA is closer but not equal
    assert (pil - cubic).abs().mean() > (pil - area).abs().mean() > 0
