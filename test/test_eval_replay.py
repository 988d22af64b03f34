"""eval/replay.py: one model run replayed through the host steps equals Pipeline.step with the same settings."""

import numpy as np
import pytest
import torch
from helpers.eval_data import make_dataset
from helpers.pipeline import pipeline_config

from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
from sparse_perception_ros.eval.offline import run_offline
from sparse_perception_ros.eval.replay import load_raw, record_raw, replay, save_raw
from sparse_perception_ros.model import CLASS_NAMES, build_model
from sparse_perception_ros.runtime.backends import torch_stepper
from sparse_perception_ros.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root, _ = make_dataset(tmp_path_factory.mktemp("eval_replay"))
    nusc = open_nuscenes(root)
    torch.manual_seed(0)
    return nusc, select_samples(nusc), torch_stepper(build_model("tiny"))


@pytest.mark.parametrize("kw", [
    dict(score_threshold=0.0, max_detections=24, reassociate_distance=4.0, track_class_vote=True, duplicate_iou=0.0),
    dict(score_threshold=0.012, max_detections=300, reassociate_distance=0.0, track_class_vote=False, duplicate_iou=1.0),
    # velocity from tracks (the node's default): recorded raw, applied once by the replay
    dict(score_threshold=0.0, max_detections=24, reassociate_distance=4.0, track_class_vote=True, duplicate_iou=0.0,
         velocity_window=2.0, velocity_noise=1.0),
])
def test_replay_equals_the_pipeline(data, kw, tmp_path):
    nusc, samples, model = data
    pipeline = Pipeline(model, CLASS_NAMES, pipeline_config(**kw))
    want = run_offline(nusc, samples, pipeline)
    frames = record_raw(nusc, samples, pipeline)
    assert [f.scene_start for f in frames].count(True) == 2 and all(f.reset is None for f in frames)
    cache = tmp_path / "raw.json"  # the scripts' cache round-trips exactly (JSON, no pickle)
    save_raw(frames, cache)
    frames = load_raw(cache)
    got = replay(frames, kw["score_threshold"], kw["max_detections"], pipeline.tracking)
    assert len(got) == len(want) == len(samples)
    shown = 0
    for g, w in zip(got, want, strict=True):
        assert g.sample_token == w.sample_token and g.stamp_ns == w.stamp_ns
        np.testing.assert_array_equal(g.boxes, w.boxes)
        np.testing.assert_array_equal(g.scores, w.scores)
        assert g.labels.tolist() == w.labels.tolist() and g.track_ids.tolist() == w.track_ids.tolist()
        np.testing.assert_array_equal(g.T_global_from_boxes, w.T_global_from_boxes)
        shown += len(g.scores)
    assert shown > 0


def test_replay_refuses_a_conflict_rule_without_the_vote(data):
    from sparse_perception_ros.runtime.tracking import TrackingConfig

    with pytest.raises(ValueError, match="conflict"):
        replay([], 0.0, 10, TrackingConfig(0.0, False, 1.0, 10), conflict=lambda b, lab: np.zeros((0, 0), bool))
