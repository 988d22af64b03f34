"""``eval --offline --sensor-rate``: every LiDAR sweep through Pipeline.step, as the node on a full-rate bag.

On a small full-rate synthetic set (every camera and LiDAR frame): the frames are the scene's LiDAR
sweeps in time order, each camera image is the one nearest the sweep, keyframes carry their
sample token, and ground truth replayed through the pipeline at that rate still scores 1.0.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.eval_data import make_dataset, score

from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples, sensor_rate_frames
from sparse_perception_ros.eval.ground_truth import gt_table
from sparse_perception_ros.eval.offline import build_pipeline, run_offline
from sparse_perception_ros.params import load_params


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root, _ = make_dataset(tmp_path_factory.mktemp("eval_sensor_rate"), sweeps=True)
    nusc = open_nuscenes(root)
    samples = select_samples(nusc)
    return nusc, samples


def test_frames_are_every_sweep_with_the_nearest_images(data):
    nusc, samples = data
    frames = list(sensor_rate_frames(nusc, samples))
    lidar = [sd for sd in nusc.sample_data if sd["channel"] == "LIDAR_TOP"]
    scenes = {s.scene_name for s in samples}
    first_last = {name: (min(s.stamp_ns for s in samples if s.scene_name == name),
                         max(s.stamp_ns for s in samples if s.scene_name == name)) for name in scenes}
    expected = sum(1 for sd in lidar for lo, hi in first_last.values() if lo <= int(sd["timestamp"]) * 1000 <= hi)
    assert len(frames) == expected > 3 * len(samples)  # sweeps between the keyframes too
    stamps = [f.stamp_ns for f, _ in frames]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))  # time order (scenes follow each other)
    assert [tok for _, tok in frames if tok] == [s.token for s in samples]  # every keyframe, once, in order
    camera_stamps = {ch: np.array(sorted(int(sd["timestamp"]) * 1000 for sd in nusc.sample_data
                                         if sd["channel"] == ch)) for ch in
                     ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")}
    for f, _ in frames:
        assert f.present.all() and f.points is not None and len(f.points)
        for c, (ch, all_stamps) in enumerate(camera_stamps.items()):
            nearest = all_stamps[np.argmin(np.abs(all_stamps - f.stamp_ns))]
            assert abs(f.camera_stamps_ns[c] - f.stamp_ns) == abs(nearest - f.stamp_ns), ch


def test_ground_truth_at_the_sensor_rate_scores_perfectly(data, tmp_path):
    nusc, samples = data
    pipeline, _ = build_pipeline(load_params(), "debug_ground_truth", gt_table(nusc, samples))
    steps = []
    step = pipeline.step
    pipeline.step = lambda frame, state: steps.append(frame.stamp_ns) or step(frame, state)
    results = run_offline(nusc, samples, pipeline, sensor_rate=True)
    assert [r.sample_token for r in results] == [s.token for s in samples]
    assert len(steps) > 3 * len(samples)
    m = score(nusc, samples, results, tmp_path)
    assert m["mAP_present"] == pytest.approx(1.0, abs=1e-9) and m["AMOTA"] == pytest.approx(1.0, abs=1e-9)
    assert m["IDS"] == 0


def test_frames_take_the_nearest_image_the_camera_throttle_keeps(data):
    """cameras.max_rate in offline evaluation: the images the node's callback would drop never reach a frame."""
    from sparse_perception_ros.runtime.camera_rate import throttle_stamps

    nusc, samples = data
    every = list(sensor_rate_frames(nusc, samples))
    frames = list(sensor_rate_frames(nusc, samples, camera_rate=6.0))
    assert [f.stamp_ns for f, _ in frames] == [f.stamp_ns for f, _ in every]  # every sweep still steps
    used_all = {int(t) for f, _ in every for t in f.camera_stamps_ns}
    used = {int(t) for f, _ in frames for t in f.camera_stamps_ns}
    assert used < used_all  # fewer distinct images
    for c, ch in enumerate(("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                            "CAM_BACK_RIGHT")):
        for scene in {s.scene_name for s in samples}:
            first = nusc.get("sample", next(s.token for s in samples if s.scene_name == scene))
            chain, tok = [], first["data"][ch]
            while tok:
                sd = nusc.get("sample_data", tok)
                chain.append(int(sd["timestamp"]) * 1000)
                tok = sd["next"]
            kept = np.array(chain)[throttle_stamps(chain, 6.0)]
            assert np.diff(kept).min() >= 0.15e9 and len(kept) < len(chain)
            for f, _ in frames:
                if chain[0] <= f.stamp_ns <= chain[-1]:
                    nearest = kept[np.argmin(np.abs(kept - f.stamp_ns))]
                    assert abs(f.camera_stamps_ns[c] - f.stamp_ns) == abs(nearest - f.stamp_ns), ch


def test_with_the_sync_window_frames_take_the_newest_image_already_there(data):
    """As the node on a bag played in time order: a frame takes the newest image at or before its sweep
    when one lies within sync.max_camera_time_diff, not a nearer one that comes after the sweep."""
    nusc, samples = data
    window = 150_000_000
    nearest = list(sensor_rate_frames(nusc, samples))
    causal = list(sensor_rate_frames(nusc, samples, max_camera_time_diff_ns=window))
    starts = np.array(sorted({min(s.stamp_ns for s in samples if s.scene_name == n) for n in
                              {s.scene_name for s in samples}}))
    later = 0
    for (f, _), (g, _) in zip(causal, nearest, strict=True):
        age = f.stamp_ns - f.camera_stamps_ns
        if not (0 <= f.stamp_ns - starts[starts <= f.stamp_ns].max() <= window):  # a scene's first sweeps
            assert ((age >= 0) & (age <= window)).all()  # may have no earlier image; all others do
        later += int((g.camera_stamps_ns > g.stamp_ns).sum())
        same = g.camera_stamps_ns <= g.stamp_ns
        assert (f.camera_stamps_ns[same] == g.camera_stamps_ns[same]).all()  # where the nearest was before: the same
    assert later > 0  # the nearest rule did take later images, which this rule does not
