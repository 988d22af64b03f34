"""Camera renderer for synthetic scenes: textured ground, sky, shaded boxes (painter's order).

Ground and sky are ray-traced per pixel (vectorised numpy); boxes are drawn as back-face-culled,
near-plane-clipped polygons, far to near, so nearer objects occlude farther ones. Boxes never
intersect in our scenes, so object-level painter's order is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from sparse_perception_ros.classes import CLASS_NAMES
from sparse_perception_ros.data.rig import CameraSpec
from sparse_perception_ros.data.scene import SYNTH_CLASSES, ObjectStates
from sparse_perception_ros.geometry.boxes import BOX_FACES, box_corners, boxes_from_wlh
from sparse_perception_ros.geometry.camera import pixel_rays

__all__ = ["Road", "CameraRenderer", "road_texture"]

_PAINT = np.array([SYNTH_CLASSES[c].paint for c in CLASS_NAMES], dtype=np.float64)  # (10, 3) by label
_LIGHT = np.array([0.4, 0.3, 0.866])  # world direction towards the sun
_NEAR = 0.05
_SHIFT = 4  # cv2 fixed-point bits for sub-pixel polygon vertices


@dataclass(frozen=True)
class Road:
    """The straight road of a scene: ``origin`` (2,), ``heading`` rad, in the world frame."""

    origin: np.ndarray
    heading: float
    half_width: float = 7.2
    lane_lines: tuple[float, ...] = field(default=(-3.6, 0.0, 3.6))

    def local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World xy -> (along, lateral) road coordinates."""
        c, s = np.cos(self.heading), np.sin(self.heading)
        dx, dy = x - self.origin[0], y - self.origin[1]
        return c * dx + s * dy, -s * dx + c * dy


def road_texture(road: Road, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground albedo (N, 3) float64 RGB in 0..255 and a LiDAR reflectivity (N,) for world xy."""
    along, lat = road.local(x, y)
    on_road = np.abs(lat) < road.half_width
    tile = ((np.floor(along / 2.0) + np.floor(lat / 2.0)) % 2).astype(np.float64)
    grass = np.stack([70 + 15 * tile, 120 + 15 * tile, 60 + 10 * tile], axis=-1)
    asphalt = np.stack([95 + 8 * tile] * 3, axis=-1)
    rgb = np.where(on_road[:, None], asphalt, grass)
    refl = np.where(on_road, 12.0, 25.0)
    dash = (along % 6.0) < 3.0
    marking = np.zeros_like(on_road)
    for ll in road.lane_lines:
        marking |= (np.abs(lat - ll) < 0.08) & (dash if ll != 0.0 else True)
    edge = np.abs(np.abs(lat) - road.half_width) < 0.1
    marking |= edge
    rgb = np.where(marking[:, None], 235.0, rgb)
    refl = np.where(marking, 90.0, refl)
    return rgb, refl


_TILE_RES = 0.05  # metres per texel
_TILE_ALONG = 12.0  # period of the road pattern along the road (checker 4 m, dashes 6 m)
_TILE_LAT = 48.0
_HORIZON = np.array([200.0, 210.0, 225.0], dtype=np.float32)
_ZENITH = np.array([90.0, 140.0, 220.0], dtype=np.float32)


def _road_tile(road: Road) -> np.ndarray:
    """(2*_TILE_LAT/res, _TILE_ALONG/res, 3) float32 albedo; texel (i, j) centre at lat, along."""
    a = (np.arange(int(round(_TILE_ALONG / _TILE_RES))) + 0.5) * _TILE_RES
    lat = (np.arange(int(round(2 * _TILE_LAT / _TILE_RES))) + 0.5) * _TILE_RES - _TILE_LAT
    aa, ll = np.meshgrid(a, lat)
    c, s = np.cos(road.heading), np.sin(road.heading)
    x = road.origin[0] + c * aa - s * ll
    y = road.origin[1] + s * aa + c * ll
    rgb, _ = road_texture(road, x.reshape(-1), y.reshape(-1))
    return rgb.reshape(len(lat), len(a), 3).astype(np.float32)


class CameraRenderer:
    """Renders one camera. Build once per camera; call :meth:`render` per frame."""

    def __init__(self, cam: CameraSpec, road: Road):
        self.cam = cam
        self.road = road
        self._rays = pixel_rays(cam.K, cam.width, cam.height).reshape(-1, 3)  # (H*W, 3) camera frame
        self._tile: np.ndarray | None = None

    def _albedo(self, gx: np.ndarray, gy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Ground colour (N, 3) float32 for world xy, looked up in a pre-rendered periodic tile.

        The road pattern repeats every ``_TILE_ALONG`` m along the road; across it the tile spans
        +-``_TILE_LAT`` m and farther grass is folded back onto the tile's outer 4 m (same checker).
        """
        if self._tile is None:
            self._tile = _road_tile(self.road)
        along, lat = self.road.local(gx, gy)
        edge = _TILE_LAT - 4.0
        alat = np.abs(lat)
        lat = np.where(alat > edge, np.sign(lat) * (edge + np.mod(alat - edge, 4.0)), lat)
        u = (np.mod(along, _TILE_ALONG) / _TILE_RES - 0.5).astype(np.float32)
        v = ((lat + _TILE_LAT) / _TILE_RES - 0.5).astype(np.float32)
        out = cv2.remap(self._tile, u.reshape(shape), v.reshape(shape), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_WRAP)
        return out.reshape(-1, 3)

    def render(self, t_world_from_base: np.ndarray, objs: ObjectStates) -> tuple[np.ndarray, np.ndarray]:
        """Render one frame.

        Returns:
            rgb: (H, W, 3) uint8.
            ids: (H, W) int32, object index + 1 per pixel, 0 for ground/sky.
        """
        cam = self.cam
        h, w = cam.height, cam.width
        t_wc = t_world_from_base @ cam.T_base_from_cam
        r, o = t_wc[:3, :3], t_wc[:3, 3]
        d = self._rays @ r.T  # (HW, 3) world directions (unnormalised)
        dz = d[:, 2]
        ground = dz < -1e-6
        tg = np.where(ground, -o[2] / np.where(ground, dz, -1.0), 0.0)
        gx = o[0] + tg * d[:, 0]
        gy = o[1] + tg * d[:, 1]
        albedo = self._albedo(gx, gy, (h, w))  # (HW, 3) float32
        norm = np.sqrt(np.einsum("ij,ij->i", d, d)).astype(np.float32)
        fog = np.clip((tg * norm).astype(np.float32) / 150.0, 0.0, 1.0)[:, None]
        ground_rgb = albedo + (_HORIZON - albedo) * fog
        elev = np.clip(dz.astype(np.float32) / norm, 0.0, 1.0)[:, None]
        sky = _HORIZON + (_ZENITH - _HORIZON) * elev
        img = np.where(ground[:, None], ground_rgb, sky).reshape(h, w, 3)
        img = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
        ids = np.zeros((h, w), dtype=np.int32)
        if len(objs):
            self._draw_objects(img, ids, t_wc, objs)
        return img, ids

    def _draw_objects(self, img: np.ndarray, ids: np.ndarray, t_wc: np.ndarray, objs: ObjectStates) -> None:
        cam = self.cam
        t_cw = np.linalg.inv(t_wc)
        cam_pos = t_wc[:3, 3]
        corners_w = box_corners(boxes_from_wlh(objs.center, objs.wlh, objs.yaw))  # (N, 8, 3)
        corners_c = corners_w @ t_cw[:3, :3].T + t_cw[:3, 3]
        dist = np.linalg.norm(objs.center - cam_pos, axis=1)
        fx = cam.K[0, 0]
        half_w = cam.width / (2 * fx) + 0.1
        order = np.argsort(-dist)
        scale = float(1 << _SHIFT)
        for i in order:
            cc = corners_c[i]
            z = cc[:, 2]
            if z.max() <= _NEAR or dist[i] > 120.0:
                continue
            if np.all(cc[:, 0] > half_w * np.maximum(z, _NEAR) + 1) or np.all(-cc[:, 0] > half_w * np.maximum(z, _NEAR) + 1):
                continue
            base = _PAINT[objs.label[i]]
            name = CLASS_NAMES[objs.label[i]]
            cw = corners_w[i]
            centre_w = objs.center[i]
            for f_idx, face in enumerate(BOX_FACES):
                fc_w = cw[list(face)].mean(axis=0)
                normal = fc_w - centre_w
                normal /= np.linalg.norm(normal) + 1e-12
                if np.dot(normal, cam_pos - fc_w) <= 0:
                    continue
                poly = _clip_near(cc[list(face)])
                if poly is None:
                    continue
                uv = self._project(poly)
                shade = 0.35 + 0.65 * max(0.0, float(np.dot(normal, _LIGHT)))
                color = tuple(float(c) for c in np.clip(base * shade, 0, 255))
                pts = np.round(uv * scale).astype(np.int32)
                cv2.fillConvexPoly(img, pts, color, lineType=cv2.LINE_8, shift=_SHIFT)
                cv2.fillConvexPoly(ids, pts, int(i) + 1, lineType=cv2.LINE_8, shift=_SHIFT)
                if f_idx < 4:  # side faces get a darker band (windows / reflective stripe)
                    band = _face_band(cw[list(face)], name)
                    bpoly = _clip_near(band @ t_cw[:3, :3].T + t_cw[:3, 3])
                    if bpoly is not None:
                        bcol = (255.0, 255.0, 255.0) if name == "traffic_cone" else tuple(c * 0.45 for c in color)
                        bpts = np.round(self._project(bpoly) * scale).astype(np.int32)
                        cv2.fillConvexPoly(img, bpts, bcol, lineType=cv2.LINE_8, shift=_SHIFT)
                cv2.polylines(img, [pts], True, tuple(c * 0.6 for c in color), 1, cv2.LINE_8, _SHIFT)

    def _project(self, pts_c: np.ndarray) -> np.ndarray:
        uvw = pts_c @ self.cam.K.T
        uv = uvw[:, :2] / uvw[:, 2:3]
        return np.clip(uv, -4 * self.cam.width, 4 * self.cam.width)


def _face_band(quad_w: np.ndarray, name: str) -> np.ndarray:
    """(4, 3) sub-quad of a vertical face: a horizontal band (windows, cone stripe)."""
    zs = quad_w[:, 2]
    zmin, zmax = zs.min(), zs.max()
    lo, hi = (0.35, 0.6) if name == "traffic_cone" else (0.55, 0.85)
    bottom = quad_w[zs <= zmin + 1e-6]
    if len(bottom) != 2:
        return quad_w
    a, b = bottom[0].copy(), bottom[1].copy()
    inset = 0.1 * (b - a)
    a, b = a + inset, b - inset
    z0, z1 = zmin + lo * (zmax - zmin), zmin + hi * (zmax - zmin)
    return np.array([[a[0], a[1], z0], [b[0], b[1], z0], [b[0], b[1], z1], [a[0], a[1], z1]])


def _clip_near(poly: np.ndarray) -> np.ndarray | None:
    """Sutherland-Hodgman clip of a (K, 3) camera-frame polygon against z >= near."""
    inside = poly[:, 2] >= _NEAR
    if inside.all():
        return poly
    if not inside.any():
        return None
    out = []
    k = len(poly)
    for j in range(k):
        p, q = poly[j], poly[(j + 1) % k]
        pin, qin = p[2] >= _NEAR, q[2] >= _NEAR
        if pin:
            out.append(p)
        if pin != qin:
            s = (_NEAR - p[2]) / (q[2] - p[2])
            out.append(p + s * (q - p))
    return np.array(out) if len(out) >= 3 else None
