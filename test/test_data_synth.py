"""Synthetic generator -> nuScenes-format dataset: devkit loading, DetectionEval / TrackingEval of GT vs
itself, timing of the sensor streams, persistent instances, LiDAR points inside their boxes.

The small dataset (2 scenes x 10 keyframes, 320x180, sweeps on) is made once per session through
the CLI and shared with the bag tests (``small_dataset``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparse_perception_ros.data.generator import SynthConfig

SMALL = SynthConfig(seed=7, scenes=2, keyframes=10, width=320, height=180, azimuth_steps=540, objects=40)
VERSION = "v1.0-synth"


def small_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """(nuScenes root, bag folder) of ``SMALL``, generated once per session by ``sparse-perception synth``."""
    base = tmp_path_factory.getbasetemp() / "synth_small"
    root, bags = base / "nuscenes", base / "bags"
    if not (root.exists() and bags.exists()):
        cmd = [sys.executable, "-m", "sparse_perception_ros.cli", "synth", "--out", str(root), "--bag-out", str(bags),
               "--seed", str(SMALL.seed), "--scenes", str(SMALL.scenes), "--keyframes", str(SMALL.keyframes),
               "--width", str(SMALL.width), "--height", str(SMALL.height),
               "--azimuth-steps", str(SMALL.azimuth_steps), "--objects", str(SMALL.objects), "--version", VERSION]
        subprocess.run(cmd, check=True, timeout=240, capture_output=True)
    return root, bags


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def nusc(dataset):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=VERSION, dataroot=str(dataset[0]), verbose=False)


def test_all_tables_and_files(dataset, nusc):
    root = dataset[0]
    for t in ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
              "scene", "sample", "sample_data", "sample_annotation", "map"):
        assert (root / VERSION / f"{t}.json").is_file(), t
    assert len(nusc.scene) == 2 and len(nusc.sample) == 20
    splits = json.loads((root / VERSION / "splits.json").read_text())
    assert sorted(splits["synth_all"]) == sorted(s["name"] for s in nusc.scene)
    assert (root / nusc.map[0]["filename"]).is_file()
    for sd in nusc.sample_data:
        assert (root / sd["filename"]).is_file()
        assert sd["filename"].startswith("samples/" if sd["is_key_frame"] else "sweeps/")
    lidar = [sd for sd in nusc.sample_data if sd["filename"].endswith(".pcd.bin")]
    pts = np.fromfile(root / lidar[0]["filename"], dtype=np.float32)
    assert pts.size % 5 == 0 and pts.size > 1000


def test_stream_rates_and_camera_offsets(nusc):
    scene = nusc.scene[0]
    sample = nusc.get("sample", scene["first_sample_token"])
    stamps = {}
    for ch, tok in sample["data"].items():
        ts = []
        while tok:
            sd = nusc.get("sample_data", tok)
            ts.append(sd["timestamp"])
            tok = sd["next"]
        stamps[ch] = np.array(ts)
    np.testing.assert_allclose(np.diff(stamps["LIDAR_TOP"]), 50_000, atol=1)  # 20 Hz
    np.testing.assert_allclose(np.diff(stamps["CAM_FRONT"]), 1e6 / 12, atol=1)  # 12 Hz
    key = {ch: nusc.get("sample_data", tok)["timestamp"] - sample["timestamp"] for ch, tok in sample["data"].items()}
    offsets = [key[c] for c in ("CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT",
                                "CAM_BACK_RIGHT")]
    assert offsets == sorted(offsets) and len(set(offsets)) == 6 and 0 <= offsets[0] and offsets[-1] < 50_000
    samples = np.array([s["timestamp"] for s in nusc.sample if s["scene_token"] == scene["token"]])
    np.testing.assert_allclose(np.diff(np.sort(samples)), 500_000, atol=1)  # 2 Hz


def test_instances_persist_and_link(nusc):
    multi = [i for i in nusc.instance if i["nbr_annotations"] > 1]
    assert len(multi) > 10
    for inst in multi[:20]:
        tok, n = inst["first_annotation_token"], 0
        while tok:
            ann = nusc.get("sample_annotation", tok)
            assert ann["instance_token"] == inst["token"]
            assert ann["num_lidar_pts"] > 0
            tok, n = ann["next"], n + 1
        assert n == inst["nbr_annotations"]
    classes = {nusc.get("category", i["category_token"])["name"] for i in nusc.instance}
    assert len(classes) >= 6


def _gt_submission(nusc, tracking: bool) -> dict:
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.eval.tracking.utils import category_to_tracking_name

    results = {}
    for s in nusc.sample:
        boxes = []
        for tok in s["anns"]:
            a = nusc.get("sample_annotation", tok)
            v = np.nan_to_num(nusc.box_velocity(tok)[:2])
            box = {"sample_token": s["token"], "translation": a["translation"], "size": a["size"],
                   "rotation": a["rotation"], "velocity": [float(v[0]), float(v[1])]}
            if tracking:
                name = category_to_tracking_name(a["category_name"])
                if name is None:
                    continue
                box.update(tracking_name=name, tracking_score=1.0, tracking_id=a["instance_token"])
            else:
                attrs = [nusc.get("attribute", t)["name"] for t in a["attribute_tokens"]]
                box.update(detection_name=category_to_detection_name(a["category_name"]), detection_score=1.0,
                           attribute_name=attrs[0] if attrs else "")
            boxes.append(box)
        results[s["token"]] = boxes
    meta = {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    return {"meta": meta, "results": results}


def test_detection_eval_gt_against_itself_is_perfect(nusc, tmp_path):
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    path = tmp_path / "gt_as_results.json"
    path.write_text(json.dumps(_gt_submission(nusc, tracking=False)))
    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(path), eval_set="synth_all",
                       output_dir=str(tmp_path / "det"), verbose=False)
    metrics, _ = ev.evaluate()
    present = sorted({b.detection_name for b in ev.gt_boxes.all})
    assert len(present) >= 5
    for name in present:
        assert metrics.mean_dist_aps[name] == pytest.approx(1.0), name
    assert np.mean([metrics.mean_dist_aps[n] for n in present]) == pytest.approx(1.0)


def test_tracking_eval_runs(nusc, tmp_path):
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.tracking.evaluate import TrackingEval

    path = tmp_path / "gt_tracks.json"
    path.write_text(json.dumps(_gt_submission(nusc, tracking=True)))
    ev = TrackingEval(config_factory("tracking_nips_2019"), str(path), eval_set="synth_all",
                      output_dir=str(tmp_path / "trk"), nusc_version=VERSION, nusc_dataroot=str(nusc.dataroot),
                      verbose=False)
    metrics = ev.main(render_curves=False)
    assert metrics["amota"] > 0.9


def test_lidar_points_on_objects_lie_inside_their_boxes(nusc):
    """Every point above the ground (z > 0.15 m in the global frame) lies in some GT box (devkit geometry)."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    checked_boxes = 0
    for s in nusc.sample[::3]:
        sd = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
        pc = LidarPointCloud.from_file(str(Path(nusc.dataroot) / sd["filename"]))
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ep = nusc.get("ego_pose", sd["ego_pose_token"])
        from pyquaternion import Quaternion

        pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
        pc.translate(np.array(cs["translation"]))
        pc.rotate(Quaternion(ep["rotation"]).rotation_matrix)
        pc.translate(np.array(ep["translation"]))
        xyz = pc.points[:3]
        above = xyz[2] > 0.15
        inside_any = np.zeros(xyz.shape[1], dtype=bool)
        for tok in s["anns"]:
            box = nusc.get_box(tok)
            box.wlh = box.wlh + 0.1  # 5 cm margin: range noise is clipped at 3 x 1 cm
            inside = points_in_box(box, xyz)
            inside_any |= inside
            ann = nusc.get("sample_annotation", tok)
            n_in = int((inside & above).sum())
            assert n_in <= ann["num_lidar_pts"] + 2
            checked_boxes += ann["num_lidar_pts"] > 20 and n_in > 0
        assert above.sum() > 100
        outside = above & ~inside_any
        assert outside.sum() == 0, f"{outside.sum()} elevated points outside every GT box in {sd['filename']}"
    assert checked_boxes > 20


def test_generation_is_deterministic(tmp_path):
    from sparse_perception_ros.data.generator import _window

    cfg = SynthConfig(seed=3, scenes=1, keyframes=2, width=64, height=36, azimuth_steps=90, objects=10)
    a, b = _window(cfg, 0, 1), _window(cfg, 0, 1)
    assert [r.__class__ for r in a] == [r.__class__ for r in b]
    for ra, rb in zip(a, b, strict=True):
        if hasattr(ra, "jpeg"):
            assert ra.jpeg == rb.jpeg and ra.token == rb.token
        elif hasattr(ra, "points"):
            np.testing.assert_array_equal(ra.points, rb.points)


def test_render_example_picture(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "render-example", "--out",
                        str(tmp_path / "ex.png"), "--width", "160", "--height", "90"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    import cv2

    img = cv2.imread(str(tmp_path / "ex.png"))
    assert img.shape == (180, 3 * 160 + 4 + 180, 3)
    assert img[:, :480].std() > 20 and (img[:, 484:] > 100).any()  # cameras and BEV both have content


def test_synth_refuses_bad_rates(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "synth", "--out", str(tmp_path / "x"),
                        "--camera-hz", "5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "camera_hz" in r.stderr and not (tmp_path / "x").exists()


def test_class_weights_change_the_class_mix():
    """--class-weights: overridden classes are placed more often, the default mix stays the default, and
    an all-zero class is never placed (over 12 scenes of 40 objects)."""
    from collections import Counter

    from sparse_perception_ros.classes import CLASS_NAMES
    from sparse_perception_ros.data.scene import CLASS_WEIGHT, make_scene, parse_class_weights

    def counts(mix):
        c = Counter()
        for i in range(12):
            c.update(CLASS_NAMES[int(lab)] for lab in make_scene(1, i, 20.0, 40, mix).obj_label)
        return c

    default = counts(None)
    assert counts(tuple(CLASS_WEIGHT.items())) == default  # the explicit default is the default
    boosted = counts(parse_class_weights("bus=8,truck=6,car=0"))
    assert boosted["bus"] > 2 * default["bus"] and boosted["truck"] > 1.5 * default["truck"]
    assert boosted["car"] == 0 and default["car"] > 0


def test_parse_class_weights_names_the_bad_entry():
    from sparse_perception_ros.data.scene import CLASS_WEIGHT, parse_class_weights

    mix = dict(parse_class_weights("bus=3, truck=4.5"))
    assert mix["bus"] == 3.0 and mix["truck"] == 4.5 and mix["car"] == CLASS_WEIGHT["car"]
    for bad, words in (("lorry=2", "'lorry=2'"), ("bus", "CLASS=WEIGHT"), ("bus=x", "not a number"),
                       ("bus=-1", ">= 0"), ("bus=nan", ">= 0")):
        with pytest.raises(ValueError, match=words):
            parse_class_weights(bad)
    with pytest.raises(ValueError, match="all zero"):
        parse_class_weights(",".join(f"{n}=0" for n in CLASS_WEIGHT))


def test_synth_refuses_bad_class_weights(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "synth", "--out", str(tmp_path / "x"),
                        "--class-weights", "bus=-2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--class-weights" in r.stderr and not (tmp_path / "x").exists()
