"""LiDAR ray caster for synthetic scenes: ground + yaw-only boxes, intensity, noise, dropout.

A sweep is cast from one pose (no motion distortion); the ``time`` field of the point cloud
still follows the rotating-sensor model of :func:`sparse_perception_ros.data.rig.lidar_point_time`.
"""

from __future__ import annotations

import numpy as np

from sparse_perception_ros.classes import CLASS_NAMES
from sparse_perception_ros.data.render import Road, road_texture
from sparse_perception_ros.data.rig import LidarSpec
from sparse_perception_ros.data.scene import SYNTH_CLASSES, ObjectStates
from sparse_perception_ros.geometry.boxes import box_corners, boxes_from_wlh

__all__ = ["LidarCaster"]

_REFL = np.array([SYNTH_CLASSES[c].reflectivity for c in CLASS_NAMES])  # (10,) by label


class LidarCaster:
    """Casts ``beams x azimuth_steps`` rays. Build once per rig; call :meth:`cast` per sweep."""

    def __init__(self, spec: LidarSpec, road: Road):
        self.spec = spec
        self.road = road
        el = spec.elevations()  # (B,)
        az = np.arange(spec.azimuth_steps) * (2 * np.pi / spec.azimuth_steps) - np.pi  # (A,) lidar frame
        self._az = az
        ce = np.cos(el)
        # (A, B, 3) directions in the lidar frame, azimuth-major.
        self._dirs = np.stack(
            [np.cos(az)[:, None] * ce[None], np.sin(az)[:, None] * ce[None], np.broadcast_to(np.sin(el), (len(az), len(el)))],
            axis=-1,
        )
        self._ring = np.broadcast_to(np.arange(spec.beams, dtype=np.float32), (len(az), spec.beams))

    def cast(
        self, t_world_from_base: np.ndarray, objs: ObjectStates, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """One sweep.

        Returns:
            points: (N, 5) float32 [x, y, z, intensity, ring] in the LiDAR frame (metres, 0..255, index).
            hit: (N,) int64 object index per point, -1 for ground.
        """
        spec = self.spec
        t_wl = t_world_from_base @ spec.T_base_from_lidar
        r_wl, o = t_wl[:3, :3], t_wl[:3, 3]
        a_n, b_n = self._dirs.shape[:2]
        dirs_w = self._dirs.reshape(-1, 3) @ r_wl.T  # (R, 3) unit
        best_t = np.full(a_n * b_n, np.inf)
        best_id = np.full(a_n * b_n, -1, dtype=np.int64)
        best_refl = np.zeros(a_n * b_n)
        dz = dirs_w[:, 2]
        down = dz < -1e-9
        tg = np.where(down, -o[2] / np.where(down, dz, -1.0), np.inf)
        best_t = np.minimum(best_t, tg)
        self._cast_boxes(o, t_wl, dirs_w, objs, best_t, best_id, best_refl)
        valid = best_t < spec.max_range
        valid &= rng.uniform(size=valid.shape) >= spec.dropout
        idx = np.nonzero(valid)[0]
        t = best_t[idx]
        noise = np.clip(rng.normal(0.0, spec.range_noise, size=t.shape), -3 * spec.range_noise, 3 * spec.range_noise)
        t_noisy = t + noise
        pts_l = self._dirs.reshape(-1, 3)[idx] * t_noisy[:, None]
        hit = best_id[idx]
        ground = hit < 0
        refl = best_refl[idx]
        if ground.any():
            gp = o + dirs_w[idx[ground]] * t[ground, None]
            refl[ground] = road_texture(self.road, gp[:, 0], gp[:, 1])[1]
        # Lambertian-ish falloff with incidence, plus a little speckle.
        cos_inc = np.where(ground, np.abs(dirs_w[idx, 2]), 0.7)
        inten = refl * (0.5 + 0.5 * cos_inc) + rng.normal(0, 1.5, size=t.shape)
        inten = np.clip(inten, 0, 255)
        ring = self._ring.reshape(-1)[idx]
        points = np.concatenate([pts_l, inten[:, None], ring[:, None]], axis=1).astype(np.float32)
        return points, hit

    def _cast_boxes(self, o, t_wl, dirs_w, objs, best_t, best_id, best_refl) -> None:
        a_n, b_n = self._dirs.shape[:2]
        if not len(objs):
            return
        corners = box_corners(boxes_from_wlh(objs.center, objs.wlh, objs.yaw))  # (N, 8, 3) world
        rel = corners - o
        r_lw = t_wl[:3, :3].T
        rel_l = rel @ r_lw.T  # in lidar axes
        step = 2 * np.pi / a_n
        dists = np.linalg.norm(objs.center - o, axis=1)
        for i in np.argsort(dists):
            if dists[i] - 0.5 * np.linalg.norm(objs.wlh[i]) > self.spec.max_range:
                continue
            az = np.arctan2(rel_l[i, :, 1], rel_l[i, :, 0])
            ref = np.arctan2(np.mean(np.sin(az)), np.mean(np.cos(az)))
            dev = np.angle(np.exp(1j * (az - ref)))
            if np.hypot(*(objs.center[i, :2] - o[:2])) < 0.6 * np.hypot(*objs.wlh[i, :2]):
                cols = np.arange(a_n)  # sensor inside the footprint radius: test all rays
            else:
                lo = int(np.floor((ref + dev.min() + np.pi) / step)) - 1
                hi = int(np.ceil((ref + dev.max() + np.pi) / step)) + 1
                cols = np.arange(lo, hi + 1) % a_n
            ray_idx = (cols[:, None] * b_n + np.arange(b_n)[None]).reshape(-1)
            d = dirs_w[ray_idx]
            c, s = np.cos(objs.yaw[i]), np.sin(objs.yaw[i])
            ob = o - objs.center[i]
            ol = np.array([c * ob[0] + s * ob[1], -s * ob[0] + c * ob[1], ob[2]])
            dl = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
            half = 0.5 * np.array([objs.wlh[i, 1], objs.wlh[i, 0], objs.wlh[i, 2]])
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / np.where(np.abs(dl) < 1e-12, 1e-12, dl)
                t1 = (-half - ol) * inv
                t2 = (half - ol) * inv
            tmin = np.minimum(t1, t2).max(axis=1)
            tmax = np.maximum(t1, t2).min(axis=1)
            hitm = (tmax >= tmin) & (tmin > 0.05) & (tmin < best_t[ray_idx])
            if not hitm.any():
                continue
            sel = ray_idx[hitm]
            best_t[sel] = tmin[hitm]
            best_id[sel] = objs.index[i]
            best_refl[sel] = _REFL[objs.label[i]]
