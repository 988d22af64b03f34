"""Track-id re-association of new instances (runtime/tracking.py) and its place in the Pipeline.

Exact checks on hand-made tracks (world frame, constant-velocity prediction, class and one-use
rules, the bank-id map surviving while the bank keeps the instance)."""

import numpy as np
import pytest
import torch

from sparse_perception_ros.runtime.tracking import TrackMemory, reassociate

S = 1_000_000_000


def boxes(*rows):
    """rows of (x, y, vx, vy) -> (N, 10) boxes in the model frame."""
    out = np.zeros((len(rows), 10))
    for i, (x, y, vx, vy) in enumerate(rows):
        out[i, [0, 1, 7, 8]] = [x, y, vx, vy]
    return out


def test_new_instance_takes_the_predicted_track_and_carried_ones_are_untouched():
    pose = np.eye(4)
    ids, mem = reassociate(np.array([5, 6]), boxes((0, 0, 2, 0), (20, 0, 0, 0)), np.array([0, 0]), pose, 0,
                           carried=set(), alive={5, 6}, memory=None, max_distance=4.0)
    assert ids.tolist() == [5, 6]
    # next frame (0.5 s later): bank id 5 is carried; the object of id 6 comes back as new instance 9
    # at 1.5 m from 6's prediction; instance 10 is new, of another class, right at 5's prediction
    ids, mem2 = reassociate(np.array([5, 9, 10]), boxes((1.0, 0, 2, 0), (21.5, 0, 0, 0), (1.0, 0, 0, 0)),
                            np.array([0, 0, 3]), pose, S // 2, carried={5, 6}, alive={5, 9, 10}, memory=mem,
                            max_distance=4.0)
    assert ids.tolist() == [5, 6, 10]
    assert mem2.id_map == {9: 6}
    # the map follows bank id 9 while it stays in the bank, and is dropped when it leaves
    ids, mem3 = reassociate(np.array([9]), boxes((21.6, 0, 0, 0)), np.array([0]), pose, S, carried={5, 9, 10},
                            alive={9}, memory=mem2, max_distance=4.0)
    assert ids.tolist() == [6]
    _, mem4 = reassociate(np.array([11]), boxes((60, 0, 0, 0)), np.array([0]), pose, 3 * S // 2, carried={9},
                          alive={11}, memory=mem3, max_distance=4.0)
    assert mem4.id_map == {}


def test_ids_stay_unique_when_an_owner_comes_back():
    pose = np.eye(4)
    mem = TrackMemory(0, np.array([[0.0, 0.0]]), np.zeros((1, 2)), np.array([0]), np.array([3]), id_map={9: 3})
    # bank id 3 (the id's owner) is back in the output next to 9, which had been given 3: the owner keeps it
    ids, new = reassociate(np.array([3, 9]), boxes((0, 0, 0, 0), (1, 0, 0, 0)), np.array([0, 0]), pose, S,
                           carried={3, 9}, alive={3, 9}, memory=mem, max_distance=4.0)
    assert sorted(ids.tolist()) == [3, 9] and new.id_map == {}
    # two instances mapped to the same id over time: the first keeps it, the other falls back
    mem = TrackMemory(0, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64),
                      id_map={9: 3, 12: 3})
    ids, new = reassociate(np.array([9, 12]), boxes((0, 0, 0, 0), (5, 0, 0, 0)), np.array([0, 0]), pose, S,
                           carried={9, 12}, alive={9, 12}, memory=mem, max_distance=4.0)
    assert ids.tolist() == [3, 12] and new.id_map == {9: 3}


def test_no_boxes():
    mem = TrackMemory(0, np.array([[1.0, 2.0]]), np.zeros((1, 2)), np.array([1]), np.array([3]))
    ids, new = reassociate(np.zeros(0, np.int64), np.zeros((0, 10), np.float32), np.zeros(0, np.int64), np.eye(4),
                           S, carried=set(), alive=set(), memory=mem, max_distance=4.0)
    assert ids.shape == (0,) and new.xy.shape == (0, 2) and new.ids.shape == (0,)


def test_gate_velocity_world_frame_and_one_use():
    yaw = np.pi / 2  # model frame rotated: model +x is world +y
    pose = np.eye(4)
    pose[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    pose[:3, 3] = [100.0, 0, 0]
    mem = TrackMemory(0, np.array([[100.0, 10.0]]), np.array([[0.0, 4.0]]), np.array([1]), np.array([42]))
    # 1 s later the prediction is world (100, 14) = model (14, 0); two new candidates: the nearer wins
    ids, _ = reassociate(np.array([7, 8]), boxes((14.5, 0, 0, 0), (13.0, 0, 0, 0)), np.array([1, 1]), pose, S,
                         carried=set(), alive={7, 8}, memory=mem, max_distance=4.0)
    assert ids.tolist() == [42, 8]
    ids, _ = reassociate(np.array([7]), boxes((19.0, 0, 0, 0)), np.array([1]), pose, S, carried=set(), alive={7},
                         memory=mem, max_distance=4.0)
    assert ids.tolist() == [7]  # 5 m from the prediction: outside the gate
    ids, _ = reassociate(np.array([7]), boxes((14.0, 0, 0, 0)), np.array([1]), pose, S, carried=set(), alive={7},
                         memory=mem, max_distance=0.0)
    assert ids.tolist() == [7]  # off


def test_pipeline_default_keeps_model_ids_and_resets_forget_tracks():
    from test_runtime_pipeline import T0, make_frame

    from sparse_perception_ros.model import CLASS_NAMES, build_model
    from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState

    torch.manual_seed(0)
    model = build_model("tiny")
    with pytest.raises(ValueError, match="reassociate_distance"):
        Pipeline(model, CLASS_NAMES, reassociate_distance=-1.0)
    plain = Pipeline(model, CLASS_NAMES, score_threshold=0.0, max_detections=16)
    det, st = plain.step(make_frame(), PipelineState.empty())
    assert st.tracks is not None and st.tracks.id_map == {} and det.track_ids.tolist() == st.tracks.ids.tolist()
    det2, st2 = plain.step(make_frame(T0 - S), st)  # time jump: reset, memory not used
    assert det2.reset == "time_jump_backward" and st2.tracks.id_map == {}


def test_ids_unique_in_every_frame_of_a_random_sequence():
    rng = np.random.default_rng(0)
    mem = None
    bank = list(range(20))
    next_id = 20
    for f in range(200):
        carried = set(bank)
        # the bank keeps most instances, drops a few, adds new ones
        bank = [b for b in bank if rng.uniform() > 0.2] + list(range(next_id, next_id + 4))
        next_id += 4
        out = sorted(rng.choice(bank, size=min(len(bank), 12), replace=False).tolist())
        n = len(out)
        xy = rng.uniform(-20, 20, (n, 2))
        ids, mem = reassociate(np.array(out), boxes(*[(x, y, 0, 0) for x, y in xy]), rng.integers(0, 3, n),
                               np.eye(4), f * S // 2, carried=carried, alive=set(bank), memory=mem, max_distance=6.0)
        assert len(set(ids.tolist())) == n, f
