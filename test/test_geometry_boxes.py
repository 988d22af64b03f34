"""Box encode/decode/corners and the test-time resize/crop of camera matrices."""

import numpy as np
import pytest

from sparse_perception_ros.geometry.boxes import (
    BOX_EDGES,
    BOX_FACES,
    bev_iou,
    bev_overlap,
    box_corners,
    boxes_from_wlh,
    decode_boxes,
    encode_boxes,
)
from sparse_perception_ros.geometry.image_transform import (
    adjust_intrinsics,
    adjust_projection,
    augmentation_matrix,
    compute_resize_crop,
)


def make_boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            rng.uniform(-50, 50, (n, 3)),
            rng.uniform(0.3, 12.0, (n, 3)),
            rng.uniform(-np.pi + 1e-6, np.pi, (n, 1)),
            rng.uniform(-10, 10, (n, 3)),
        ],
        axis=1,
    )


def test_encode_decode_round_trip():
    boxes = make_boxes(200)
    state = encode_boxes(boxes)
    assert state.shape == (200, 11)
    np.testing.assert_allclose(state[:, 6], np.sin(boxes[:, 6]))  # sin before cos
    np.testing.assert_allclose(state[:, 7], np.cos(boxes[:, 6]))
    np.testing.assert_allclose(decode_boxes(state), boxes, rtol=0, atol=1e-9)
    np.testing.assert_allclose(encode_boxes(decode_boxes(state)), state, rtol=0, atol=1e-9)


def test_decode_uses_raw_sin_cos_and_rejects_bad_sizes():
    state = np.zeros((1, 11))
    state[0, 6:8] = [2.0, 2.0]  # non-unit pair: yaw is still atan2
    assert decode_boxes(state)[0, 6] == pytest.approx(np.pi / 4)
    with pytest.raises(ValueError):
        encode_boxes(np.array([[0, 0, 0, 0.0, 1, 1, 0, 0, 0, 0]]))


def test_corners_of_rotated_box():
    # W = 4 along heading, L = 2 lateral, H = 1; yaw 90 deg: heading along +y
    box = np.array([[10.0, 0.0, 1.0, 4.0, 2.0, 1.0, np.pi / 2, 0, 0, 0]])
    c = box_corners(box)[0]
    assert c.shape == (8, 3)
    np.testing.assert_allclose(c.mean(axis=0), [10, 0, 1], atol=1e-12)
    np.testing.assert_allclose(np.ptp(c, axis=0), [2.0, 4.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(c[0], [9.0, 2.0, 0.5], atol=1e-12)  # (+W/2, +L/2, -H/2) rotated


def test_resize_crop_nuscenes_matches_reference_numbers():
    rc = compute_resize_crop((1600, 900), (704, 256))
    assert rc.scale == pytest.approx(0.44)
    assert rc.resized_wh == (704, 396)
    assert rc.crop == (0, 140, 704, 396)
    assert rc.output_wh == (704, 256)


@pytest.mark.parametrize(
    "src, expected_resized, expected_crop",
    [
        ((1920, 1080), (704, 396), (0, 140, 704, 396)),
        ((1280, 960), (704, 528), (0, 272, 704, 528)),
        ((3000, 900), (853, 256), (74, 0, 778, 256)),
    ],
)
def test_resize_crop_other_resolutions(src, expected_resized, expected_crop):
    rc = compute_resize_crop(src, (704, 256))
    assert rc.resized_wh == expected_resized
    assert rc.crop == expected_crop
    assert rc.output_wh == (704, 256)


def test_projection_adjustment_moves_pixels_like_the_image():
    rng = np.random.default_rng(1)
    k = np.array([[1266.0, 0, 816.0], [0, 1266.0, 491.0], [0, 0, 1]])
    lidar2img = np.eye(4)
    lidar2img[:3, :3] = k @ np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # camera looks along lidar +y
    pts = np.concatenate([rng.uniform(-5, 5, (20, 1)), rng.uniform(5, 40, (20, 1)), rng.uniform(-2, 2, (20, 1))], 1)
    rc = compute_resize_crop((1600, 900), (704, 256))
    hom = np.concatenate([pts, np.ones((20, 1))], 1)
    src = hom @ lidar2img.T
    dst = hom @ adjust_projection(lidar2img, rc).T
    uv_src = src[:, :2] / src[:, 2:3]
    uv_dst = dst[:, :2] / dst[:, 2:3]
    np.testing.assert_allclose(uv_dst, uv_src * 0.44 - np.array([0.0, 140.0]), atol=1e-9)
    np.testing.assert_allclose(dst[:, 2], src[:, 2])  # depth row untouched
    k_new = adjust_intrinsics(k, rc)
    np.testing.assert_allclose(k_new, [[1266 * 0.44, 0, 816 * 0.44], [0, 1266 * 0.44, 491 * 0.44 - 140], [0, 0, 1]])
    assert augmentation_matrix(rc)[1, 3] == 0.0  # the shift multiplies depth (column 2), not column 3


def test_bev_iou_matches_shapely_and_known_values():
    from shapely.geometry import Polygon

    rng = np.random.default_rng(1)
    b = make_boxes(40)
    b[:, :2] = rng.uniform(-4, 4, (40, 2))  # crowded: many overlaps
    b[:, 3:5] = rng.uniform(0.3, 5.0, (40, 2))
    iou = bev_iou(b, b)
    polys = [Polygon(c[:4, :2]) for c in box_corners(b)]
    ref = np.array([[p.intersection(q).area / p.union(q).area for q in polys] for p in polys])
    assert (ref > 0).sum() > 100
    np.testing.assert_allclose(iou, ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(iou, iou.T, rtol=0, atol=1e-12)
    # a unit square and the same square turned by 45 degrees: overlap 2 (sqrt 2 - 1), union 2 - that
    sq = np.array([[0, 0, 0, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, np.pi / 4, 0, 0, 0.0]])
    inter = 2 * (np.sqrt(2) - 1)
    assert bev_iou(sq[:1], sq[1:])[0, 0] == pytest.approx(inter / (2 - inter), abs=1e-12)
    # touching edges, far apart, masked pairs and degenerate footprints give 0; no boxes gives (N, 0)
    touching = sq[:1].copy()
    touching[0, 0] = 1.0
    assert bev_iou(sq[:1], touching)[0, 0] == pytest.approx(0.0, abs=1e-12)
    assert bev_iou(sq, sq, mask=np.eye(2, dtype=bool))[0, 1] == 0.0
    flat = sq[:1].copy()
    flat[0, 4] = 0.0
    assert bev_iou(flat, flat)[0, 0] == 0.0
    assert bev_iou(sq, np.zeros((0, 10))).shape == (2, 0)
    with pytest.raises(ValueError, match="mask"):
        bev_iou(sq, sq, mask=np.ones((1, 2), bool))


def test_bev_overlap_is_a_positive_iou():
    """The separating-axis test agrees with the exact intersection on crowded random footprints,
    including thin ones; touching, apart and degenerate footprints do not overlap."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        b = make_boxes(40)
        b[:, :2] = rng.uniform(-4, 4, (40, 2))
        b[:, 3:5] = rng.uniform(0.05, 5.0, (40, 2))
        b[:, 6] = rng.uniform(-np.pi, np.pi, 40)
        ov = bev_overlap(b, b[:25])
        assert ov.shape == (40, 25) and 50 < ov.sum() < 40 * 25
        np.testing.assert_array_equal(ov, bev_iou(b, b[:25]) > 1e-12)
    sq = np.array([[0, 0, 0, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, np.pi / 4, 0, 0, 0.0]])
    assert bev_overlap(sq, sq).all()
    touching, apart, flat = sq[:1].copy(), sq[:1].copy(), sq[:1].copy()
    touching[0, 0], apart[0, 0], flat[0, 4] = 1.0, 1.5, 0.0
    assert not bev_overlap(sq[:1], touching)[0, 0] and not bev_overlap(sq[:1], apart)[0, 0]
    assert not bev_overlap(flat, sq).any() and not bev_overlap(sq, flat).any()
    # the diamond (45 degrees) reaches 0.707 m from its centre along x: it overlaps a square at 1.2 m
    near = sq[1:].copy()
    near[0, 0] = 1.2
    assert bev_overlap(sq[:1], near)[0, 0] and bev_iou(sq[:1], near)[0, 0] > 0
    assert bev_overlap(sq, np.zeros((0, 10))).shape == (2, 0)


def test_boxes_from_wlh_gives_the_corners_of_the_old_nuscenes_formula():
    """geometry/camera.box_corners (nuScenes w/l/h, corner index 4*(x>0) + 2*(y>0) + (z>0)) was
    replaced by ``box_corners(boxes_from_wlh(...))``: the same corners, in the documented order."""
    rng = np.random.default_rng(3)
    n = 500
    center, wlh, yaw = rng.uniform(-80, 80, (n, 3)), rng.uniform(0.1, 12, (n, 3)), rng.uniform(-4, 4, n)
    signs = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=np.float64) * 2 - 1
    lx, ly, lz = 0.5 * wlh[:, 1:2] * signs[:, 0], 0.5 * wlh[:, 0:1] * signs[:, 1], 0.5 * wlh[:, 2:3] * signs[:, 2]
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    old = np.stack([c * lx - s * ly + center[:, :1], s * lx + c * ly + center[:, 1:2], lz + center[:, 2:3]], axis=-1)
    new = box_corners(boxes_from_wlh(center, wlh, yaw))
    old_to_new = [2, 6, 1, 5, 3, 7, 0, 4]  # old index -> documented corner index (same sign pattern)
    np.testing.assert_allclose(new[:, old_to_new], old, atol=1e-6)
    local = np.einsum("nij,nkj->nki", np.stack([np.stack([c[:, 0], s[:, 0]], 1), np.stack([-s[:, 0], c[:, 0]], 1)], 1),
                      (new - center[:, None])[..., :2])  # back into the box frame (x along heading)
    assert np.all(local[:, :4, 0] * [1, -1, -1, 1] > 0) and np.all(local[:, :4, 1] * [1, 1, -1, -1] > 0)
    assert np.all(new[:, 4:, 2] > new[:, :4, 2])


def test_box_faces_and_edges_index_the_documented_corners():
    corners = box_corners(np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0]]))[0]
    for face, (axis, sign) in zip(BOX_FACES, [(0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1)], strict=True):
        assert np.all(np.sign(corners[list(face), axis]) == sign)
        a, b, c = corners[list(face)][:3]
        assert np.sign(np.cross(b - a, c - b)[axis]) == sign  # counter-clockwise seen from outside
    lengths = sorted(np.linalg.norm(corners[i] - corners[j]) for i, j in BOX_EDGES)
    assert lengths == [1.0] * 4 + [2.0] * 4 + [4.0] * 4
