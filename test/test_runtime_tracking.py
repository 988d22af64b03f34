"""Track-id re-association of new instances (runtime/tracking.py) and its place in the Pipeline.

Exact checks on hand-made tracks (world frame, constant-velocity prediction, class and one-use
rules, the bank-id map surviving while the bank keeps the instance), the per-track class vote of
``temporal.track_class_vote`` and the duplicate suppression of ``temporal.duplicate_iou``."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers.frames import T0, make_frame
from helpers.pipeline import pipeline_config

from sparse_perception_ros.geometry.boxes import bev_iou
from sparse_perception_ros.runtime.tracking import (
    TrackClassVotes,
    TrackMemory,
    reassociate,
    suppress_duplicates,
    track_evidence,
    vote_track_classes,
)

S = 1_000_000_000


def boxes(*rows, size=(4.5, 1.9)):
    """rows of (x, y, vx, vy) -> (N, 10) boxes in the model frame, footprint ``size`` (w, l; a car)."""
    out = np.zeros((len(rows), 10))
    for i, (x, y, vx, vy) in enumerate(rows):
        out[i, [0, 1, 3, 4, 5, 7, 8]] = [x, y, *size, 1.5, vx, vy]
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


@pytest.mark.parametrize("window_s,expect_kept", [(0.0, False), (0.5, True)])
def test_a_track_missing_for_a_frame_is_continued_within_the_window(window_s, expect_kept):
    """20 Hz: a car moving at 10 m/s (instance 5) is missing from one frame, then comes back as new
    instance 8 at its predicted place. With the window it keeps its id; without, only the previous
    frame counts and the car changes id. Past the window the lost track is forgotten."""
    pose, dt = np.eye(4), S // 20
    _, mem = reassociate(np.array([5, 6]), boxes((0, 0, 10, 0), (30, 0, 0, 0)), np.array([0, 0]), pose, 0,
                         carried=set(), alive={5, 6}, memory=None, max_distance=4.0, window_s=window_s)
    _, mem = reassociate(np.array([6]), boxes((30, 0, 0, 0)), np.array([0]), pose, dt, carried={5, 6}, alive={6},
                         memory=mem, max_distance=4.0, window_s=window_s)
    assert (mem.lost is not None and mem.lost.ids.tolist() == [5]) == expect_kept
    ids, mem = reassociate(np.array([6, 8]), boxes((30, 0, 0, 0), (1.0, 0, 10, 0)), np.array([0, 0]), pose, 2 * dt,
                           carried={6}, alive={6, 8}, memory=mem, max_distance=4.0, window_s=window_s)
    assert ids.tolist() == ([6, 5] if expect_kept else [6, 8])
    assert mem.lost is None or 5 not in mem.lost.ids.tolist()  # continued: no longer lost
    if expect_kept:  # a lost track older than the window is forgotten
        _, gone = reassociate(np.array([6]), boxes((30, 0, 0, 0)), np.array([0]), pose, 3 * dt, carried={6, 8},
                              alive={6}, memory=mem, max_distance=4.0, window_s=window_s)
        assert gone.lost.ids.tolist() == [5]
        later, _ = reassociate(np.array([6, 9]), boxes((30, 0, 0, 0), (7.0, 0, 10, 0)), np.array([0, 0]), pose,
                               3 * dt + S, carried={6}, alive={6, 9}, memory=gone, max_distance=4.0,
                               window_s=window_s)
        assert later.tolist() == [6, 9]


def test_a_track_that_left_the_bank_is_continued_only_by_a_box_that_reaches_it():
    """Issue 20: a pedestrian walks out of view while a neighbour 1.5 m away appears: the neighbour
    keeps its own id (their footprints' circumscribed circles, 0.49 m each, do not meet); a new box
    0.5 m from the lost track continues it, and a track the bank still holds is continued at the
    plain 4 m gate."""
    pose, ped = np.eye(4), (0.7, 0.7)
    _, mem = reassociate(np.array([1]), boxes((0, 0, 0, 0), size=ped), np.array([5]), pose, 0, carried=set(),
                         alive={1}, memory=None, max_distance=4.0)
    assert mem.reach == pytest.approx([0.5 * np.hypot(0.7, 0.7)])
    apart, _ = reassociate(np.array([2]), boxes((1.5, 0, 0, 0), size=ped), np.array([5]), pose, S // 2, carried={1},
                           alive={2}, memory=mem, max_distance=4.0)
    near, _ = reassociate(np.array([2]), boxes((0.5, 0, 0, 0), size=ped), np.array([5]), pose, S // 2, carried={1},
                          alive={2}, memory=mem, max_distance=4.0)
    held, _ = reassociate(np.array([2]), boxes((3.0, 0, 0, 0), size=ped), np.array([5]), pose, S // 2, carried={1},
                          alive={1, 2}, memory=mem, max_distance=4.0)
    assert (apart.tolist(), near.tolist(), held.tolist()) == ([2], [1], [1])


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


@pytest.mark.parametrize("gap_ns,speed,expect", [
    (S // 2, 0.0, 7),  # 2 Hz, fixed 4 m gate: 5 m away is a new object
    (S // 2, 4.0, 42),  # 2 Hz, 4 + 4 x 0.5 = 6 m: the same object
    (S // 20, 4.0, 7),  # 20 Hz: 4.2 m, still a new object
])
def test_gate_grows_with_the_time_since_the_track_was_seen(gap_ns, speed, expect):
    """``temporal.reassociate_speed``: the gate is ``distance + speed * gap``, per candidate."""
    pose = np.eye(4)
    mem = TrackMemory(0, np.array([[10.0, 0.0]]), np.array([[0.0, 0.0]]), np.array([1]), np.array([42]))
    ids, _ = reassociate(np.array([7]), boxes((15.0, 0, 0, 0)), np.array([1]), pose, gap_ns, carried=set(),
                         alive={7}, memory=mem, max_distance=4.0, speed=speed)
    assert ids.tolist() == [expect]
    ids, _ = reassociate(np.array([7]), boxes((10.5, 0, 0, 0)), np.array([1]), pose, gap_ns, carried=set(),
                         alive={7}, memory=mem, max_distance=0.0, speed=speed)
    assert ids.tolist() == [7]  # a distance of 0 still turns re-association off


def test_pipeline_default_keeps_model_ids_and_resets_forget_tracks():
    from sparse_perception_ros.model import CLASS_NAMES, build_model
    from sparse_perception_ros.runtime.backends import torch_stepper
    from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState

    torch.manual_seed(0)
    model = torch_stepper(build_model("tiny"))
    with pytest.raises(ValueError, match="reassociate_distance"):
        pipeline_config(reassociate_distance=-1.0)
    plain = Pipeline(model, CLASS_NAMES, pipeline_config(max_detections=16))
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



def test_track_class_vote_takes_the_largest_summed_score():
    # track 4: car 0.6, then truck 0.3 (car still leads 0.6 : 0.3), then truck 0.4 (truck 0.7 > 0.6);
    # track 9 appears in frame 2 and keeps its own class on its first frame
    lab, v = vote_track_classes(np.array([4]), np.array([0]), np.array([0.6]), None, keep={4}, num_classes=3)
    assert lab.tolist() == [0]
    lab, v = vote_track_classes(np.array([9, 4]), np.array([2, 1]), np.array([0.5, 0.3]), v, keep={4, 9},
                                num_classes=3)
    assert lab.tolist() == [2, 0]
    lab, v = vote_track_classes(np.array([4]), np.array([1]), np.array([0.4]), v, keep={4}, num_classes=3)
    assert lab.tolist() == [1]
    assert set(v.class_score) == {4} and v.class_score[4] == pytest.approx([0.6, 0.7, 0.0])
    # an id left out of keep is forgotten: it starts afresh
    lab, _ = vote_track_classes(np.array([4]), np.array([2]), np.array([0.1]), replace(v, class_score={}),
                                keep={4}, num_classes=3)
    assert lab.tolist() == [2]
    with pytest.raises(ValueError, match="labels must be in"):
        vote_track_classes(np.array([1]), np.array([3]), np.array([0.5]), None, keep=set(), num_classes=3)


def test_pipeline_track_class_vote_on_and_off():
    from sparse_perception_ros.model import CLASS_NAMES, build_model
    from sparse_perception_ros.runtime.backends import torch_stepper
    from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState

    torch.manual_seed(0)
    model = torch_stepper(build_model("tiny"))
    off = Pipeline(model, CLASS_NAMES, pipeline_config(max_detections=16))
    on = Pipeline(model, CLASS_NAMES, pipeline_config(max_detections=16, track_class_vote=True))
    s_off, s_on = PipelineState.empty(), PipelineState.empty()
    acc: dict[int, np.ndarray] = {}
    changed = 0
    for k in range(4):
        d_off, s_off = off.step(make_frame(T0 + k * S // 2), s_off)
        d_on, s_on = on.step(make_frame(T0 + k * S // 2), s_on)
        assert s_off.class_votes is None and s_on.class_votes is not None
        assert d_on.track_ids.tolist() == d_off.track_ids.tolist()
        assert d_on.scores.tolist() == d_off.scores.tolist()  # scores are the model's
        for tid, lab, sc, pub in zip(d_off.track_ids.tolist(), d_off.labels.tolist(), d_off.scores.tolist(),
                                     d_on.labels.tolist(), strict=True):
            acc.setdefault(tid, np.zeros(len(CLASS_NAMES)))[lab] += sc
            assert pub == int(np.argmax(acc[tid]))
            changed += pub != lab
    assert changed >= 1  # the vote overrode the model's class at least once (random weights, seed 0)
    d, _ = on.step(make_frame(T0 - S), s_on)  # time jump: the history is forgotten
    assert d.reset == "time_jump_backward"
    assert d.labels.tolist() == off.step(make_frame(T0 - S), s_off)[0].labels.tolist()


def footprints(*rows):
    """rows of (x, y, w, l, yaw) -> (N, 10) boxes (w along the heading)."""
    out = np.zeros((len(rows), 10))
    for i, (x, y, w, l_, yaw) in enumerate(rows):
        out[i, [0, 1, 3, 4, 5, 6]] = [x, y, w, l_, 1.0, yaw]
    return out


def test_suppress_duplicates_keeps_the_track_with_more_evidence():
    b = footprints((0.0, 0, 4.5, 1.9, 0), (1.5, 0, 4.5, 1.9, 0), (1.0, 0.5, 4.5, 1.9, 0), (30.0, 0, 4.5, 1.9, 0),
                   (30.5, 0, 4.5, 1.9, 0))
    labels = np.array([0, 0, 1, 0, 0])
    # box 1 scores higher this frame but its track has less history than box 0's: box 0 stays;
    # box 2 overlaps as much but is of another class; boxes 3 and 4 tie on evidence: the higher score wins
    evidence = np.array([2.0, 0.9, 0.1, 1.0, 1.0])
    scores = np.array([0.4, 0.9, 0.3, 0.5, 0.6])
    assert suppress_duplicates(b, labels, evidence, scores, 0.1).tolist() == [True, False, True, False, True]
    # strictly more than max_iou: IoU(0, 1) = 3 / 6 = 0.5, IoU(3, 4) = 4 / 5 = 0.8; 1 keeps everything
    assert suppress_duplicates(b, labels, evidence, scores, 0.5).tolist() == [True, True, True, False, True]
    assert suppress_duplicates(b, labels, evidence, scores, 1.0).all()
    # a hidden box does not hide others: a chain 0 - 1 - 2 of overlapping cars keeps 0 and 2
    chain = suppress_duplicates(footprints((0.0, 0, 4.5, 1.9, 0), (3.0, 0, 4.5, 1.9, 0), (6.0, 0, 4.5, 1.9, 0)),
                                np.zeros(3), np.array([3.0, 2.0, 1.0]), np.ones(3), 0.0)
    assert chain.tolist() == [True, False, True]
    assert suppress_duplicates(np.zeros((0, 10)), np.zeros(0), np.zeros(0), np.zeros(0), 0.1).shape == (0,)
    with pytest.raises(ValueError, match="max_iou"):
        suppress_duplicates(b, labels, evidence, scores, -0.1)
    with pytest.raises(ValueError, match="same length"):
        suppress_duplicates(b, labels[:2], evidence, scores, 0.1)


@pytest.mark.parametrize("name,w,l_", [("traffic cones", 0.4, 0.4), ("pedestrians", 0.7, 0.7), ("cars", 4.6, 1.9)])
def test_neighbours_that_do_not_overlap_are_never_hidden_however_close(name, w, l_):
    """Issue 20: objects side by side (cones in a row, people abreast, parked cars) all stay, at any
    spacing and heading that keeps their footprints apart, even at max_iou 0; a second box on one
    object goes."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        yaw = rng.uniform(-np.pi, np.pi)
        gap = rng.uniform(0.01, 0.3)
        side = np.array([-np.sin(yaw), np.cos(yaw)])  # the lateral axis (size l)
        row = [(*(k * (l_ + gap) * side), w, l_, yaw) for k in range(6)]  # six abreast, gap apart
        kept = suppress_duplicates(footprints(*row), np.zeros(6), rng.uniform(0, 5, 6), rng.uniform(0, 1, 6), 0.0)
        assert kept.all(), name
    twin = footprints((0.0, 0.0, w, l_, 0.3), (0.25 * w, 0.1 * l_, w, l_, 0.5))  # a second instance on one object
    assert suppress_duplicates(twin, np.zeros(2), np.array([2.0, 1.0]), np.ones(2), 0.1).tolist() == [True, False]


def test_keep_by_evidence_checks_its_shapes():
    from sparse_perception_ros.runtime.tracking import keep_by_evidence

    assert keep_by_evidence(np.zeros((0, 0), bool), np.zeros(0), np.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="conflict"):
        keep_by_evidence(np.zeros((2, 3), bool), np.zeros(2), np.zeros(2))


def test_track_evidence_sums_all_classes_of_the_history():
    _, v = vote_track_classes(np.array([4, 7]), np.array([0, 1]), np.array([0.6, 0.2]), None, keep={4, 7},
                              num_classes=3)
    _, v = vote_track_classes(np.array([4]), np.array([2]), np.array([0.3]), v, keep={4, 7}, num_classes=3)
    assert track_evidence(np.array([4, 7, 99]), v) == pytest.approx([0.9, 0.2, 0.0])


def test_pipeline_duplicate_iou_hides_boxes_only_from_the_output():
    from sparse_perception_ros.model import CLASS_NAMES, build_model
    from sparse_perception_ros.runtime.backends import torch_stepper
    from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState

    torch.manual_seed(0)
    model = torch_stepper(build_model("tiny"))
    kw = dict(max_detections=32, track_class_vote=True)
    off = Pipeline(model, CLASS_NAMES, pipeline_config(**kw))
    # any overlap: random weights put many same-class boxes on top of each other
    on = Pipeline(model, CLASS_NAMES, pipeline_config(duplicate_iou=0.0, **kw))
    s_off, s_on = PipelineState.empty(), PipelineState.empty()
    hidden = 0
    for k in range(4):
        d_off, s_off = off.step(make_frame(T0 + k * S // 2), s_off)
        d_on, s_on = on.step(make_frame(T0 + k * S // 2), s_on)
        assert d_off.counters["duplicates_suppressed"] == 0
        # the tracker state is the same with and without: only the output is filtered
        assert s_on.temporal == s_off.temporal
        for f in ("xy", "vel", "labels", "ids"):
            assert np.array_equal(getattr(s_on.tracks, f), getattr(s_off.tracks, f)), f
        assert s_on.tracks.id_map == s_off.tracks.id_map
        votes_on, votes_off = s_on.class_votes.class_score, s_off.class_votes.class_score
        assert votes_on.keys() == votes_off.keys()
        assert all(np.array_equal(votes_on[t], votes_off[t]) for t in votes_on)
        rows = {t: i for i, t in enumerate(d_off.track_ids.tolist())}
        assert set(d_on.track_ids.tolist()) <= set(rows)
        for t, lab, sc in zip(d_on.track_ids.tolist(), d_on.labels.tolist(), d_on.scores.tolist(), strict=True):
            assert lab == d_off.labels[rows[t]] and sc == d_off.scores[rows[t]]
        # what was hidden is exactly what suppress_duplicates says
        want = suppress_duplicates(d_off.boxes, d_off.labels, track_evidence(d_off.track_ids, s_off.class_votes),
                                   d_off.scores, 0.0)
        assert d_on.track_ids.tolist() == d_off.track_ids[want].tolist()
        # no two published boxes of one class overlap
        for c in set(d_on.labels.tolist()):
            b = d_on.boxes[d_on.labels == c]
            assert (bev_iou(b, b)[~np.eye(len(b), dtype=bool)] == 0).all()
        assert d_on.counters["duplicates_suppressed"] == len(d_off.track_ids) - len(d_on.track_ids)
        hidden += len(d_off.track_ids) - len(d_on.track_ids)
    assert hidden >= 1
    with pytest.raises(ValueError, match="duplicate_iou"):
        pipeline_config(duplicate_iou=1.5)


def test_tracking_config_validates_and_track_frame_off_is_the_model_output():
    from sparse_perception_ros.runtime.tracking import TrackingConfig, track_frame

    with pytest.raises(ValueError, match="num_classes"):
        TrackingConfig(0.0, False, 1.0, num_classes=0)
    off = TrackingConfig(0.0, False, 1.0, num_classes=3)
    b = footprints((0.0, 0, 1.0, 1.0, 0), (0.5, 0, 1.0, 1.0, 0))  # IoU 1/3
    out = track_frame(b.astype(np.float32), np.float32([0.9, 0.8]), np.array([1, 1]), np.array([5, 6]), np.eye(4), 0,
                      carried=set(), alive={5, 6}, tracks=None, class_votes=None, config=off)
    assert out.track_ids.tolist() == [5, 6] and out.labels.tolist() == [1, 1] and out.suppressed == 0
    assert out.class_votes is None and out.tracks.ids.tolist() == [5, 6]
    on = TrackingConfig(0.0, True, 0.1, num_classes=3)
    out = track_frame(b.astype(np.float32), np.float32([0.9, 0.8]), np.array([1, 1]), np.array([5, 6]), np.eye(4), 0,
                      carried=set(), alive={5, 6}, tracks=None, class_votes=None, config=on)
    assert out.track_ids.tolist() == [5] and out.suppressed == 1 and set(out.class_votes.class_score) == {5, 6}


# ------------------------------------------------------------------------------ velocity from tracks
def test_track_velocity_is_the_least_squares_slope_and_needs_a_span():
    from sparse_perception_ros.runtime.tracking import track_velocity

    t = np.array([0.0, 0.5, 1.0, 1.5])
    rows = np.c_[t, 3.0 + 2.0 * t, -1.0 - 0.5 * t]
    hist = {7: rows, 8: rows[-1:], 9: rows[:2]}
    v = track_velocity(hist, np.array([7, 8, 9, 10]), min_span_s=0.75)
    np.testing.assert_allclose(v[0], [2.0, -0.5], atol=1e-9)
    assert np.isnan(v[1:]).all()  # one position; a 0.5 s span below 0.75 s; no history at all


def test_blend_keeps_static_objects_still_and_gives_missed_motion():
    from sparse_perception_ros.runtime.tracking import blend_velocity

    model = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.3, 0.0]])
    track = np.array([[0.2, -0.1], [6.0, 0.0], [1.0, 0.0], [np.nan, np.nan]])
    out = blend_velocity(model, track, noise=0.5)
    assert np.linalg.norm(out[0]) < 0.05  # jitter of a parked car: shrunk to ~0 (gain 0.05/0.30)
    assert out[1, 0] == pytest.approx(6.0 * 36 / 36.25, rel=1e-9)  # a moving car the model missed
    np.testing.assert_allclose(out[2:], model[2:])  # agreement, and no track estimate


def test_track_frame_publishes_the_measured_velocity_of_a_moving_object_in_the_model_frame():
    """A car driving at (4, 3) m/s in the world, and a parked one, seen from an ego that drives and
    turns; the model (a stand-in) reports zero velocity with 0.2 m position jitter. With a 1.5 s
    window the moving car's published velocity (model frame, rotated back to the world) comes
    within 0.5 m/s of the truth once the track spans 0.75 s; the parked car stays under 0.3 m/s.
    Window 0 publishes the model's zero velocity."""
    from sparse_perception_ros.geometry.transforms import invert_transform, make_transform
    from sparse_perception_ros.runtime.tracking import TrackingConfig, track_frame

    rng = np.random.default_rng(0)
    cfg = TrackingConfig(4.0, True, 0.0, num_classes=3, velocity_window=1.5, velocity_noise=0.5)
    off = replace(cfg, velocity_window=0.0)
    tracks = votes = None
    tracks_off = votes_off = None
    errors, parked = [], []
    for k in range(12):  # 12 Hz
        t = k / 12.0
        yaw = 0.2 * t
        R = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1.0]])
        T_world_from_model = make_transform(R, np.array([8.0 * t, 0.0, 0.0]))
        world = np.array([[20.0 + 4.0 * t, 5.0 + 3.0 * t, 0.0, 1.0], [30.0, -6.0, 0.0, 1.0]])
        local = (invert_transform(T_world_from_model) @ world.T).T[:, :2] + rng.normal(0, 0.2, (2, 2))
        b = boxes((*local[0], 0.0, 0.0), (*local[1], 0.0, 0.0)).astype(np.float32)
        args = (b, np.float32([0.9, 0.8]), np.array([0, 0]), np.array([1, 2]), T_world_from_model, int(t * S),
                {1, 2} if k else set(), {1, 2})
        out = track_frame(*args, tracks, votes, cfg)
        tracks, votes = out.tracks, out.class_votes
        ref = track_frame(*args, tracks_off, votes_off, off)
        tracks_off, votes_off = ref.tracks, ref.class_votes
        assert np.abs(ref.boxes[:, 7:9]).max() == 0.0
        v_world = out.boxes[:, 7:10].astype(np.float64) @ R.T
        if t >= 0.75:
            errors.append(np.linalg.norm(v_world[0, :2] - [4.0, 3.0]))
            parked.append(np.linalg.norm(v_world[1, :2]))
        assert len(out.tracks.history[1]) <= 1.5 * 12 + 1  # the window bounds the memory
    assert max(errors) < 0.5 and max(parked) < 0.3, (errors, parked)


def test_heading_from_motion_turns_only_fast_boxes_that_face_backwards():
    from sparse_perception_ros.runtime.tracking import heading_from_motion

    b = np.zeros((6, 10), np.float32)
    # yaw, vx, vy: backwards at 5 m/s; backwards but slow; forwards; 110 deg off (sideways-ish: kept);
    # wrapped; backwards in y
    b[:, 6:9] = [[np.pi, 5.0, 0.0], [np.pi, 0.3, 0.0], [0.1, 5.0, 0.0], [np.radians(110), 5.0, 0.0],
                 [-3.0, 2.0, 0.0], [np.pi / 2, 0.0, -1.5]]
    out = heading_from_motion(b, 1.0)
    np.testing.assert_allclose(out[:, 6], [0.0, np.pi, 0.1, np.radians(110), np.pi - 3.0, -np.pi / 2], atol=1e-6)
    turned = out[[0, 4, 5], 6].astype(np.float64)
    assert np.all((turned >= -np.pi - 1e-6) & (turned < np.pi))  # wrapped
    assert np.array_equal(out[:, [0, 1, 2, 3, 4, 5, 7, 8, 9]], b[:, [0, 1, 2, 3, 4, 5, 7, 8, 9]])  # only yaw
    assert b[0, 6] == np.float32(np.pi)  # a copy
    assert heading_from_motion(np.zeros((0, 10), np.float32), 1.0).shape == (0, 10)


def test_heading_from_motion_in_track_frame_is_off_at_zero_and_validated():
    from sparse_perception_ros.runtime.tracking import TrackingConfig, track_frame

    cfg = TrackingConfig(4.0, False, 1.0, num_classes=3, heading_from_motion=1.0)
    b = boxes((10.0, 0.0, -4.0, 0.0)).astype(np.float32)  # yaw 0, driving towards -x: faces backwards
    args = (b, np.float32([0.9]), np.array([0]), np.array([1]), np.eye(4), T0, set(), {1}, None, None)
    assert abs(abs(track_frame(*args, cfg).boxes[0, 6]) - np.pi) < 1e-6
    assert track_frame(*args, replace(cfg, heading_from_motion=0.0)).boxes[0, 6] == 0.0
    with pytest.raises(ValueError, match="heading_from_motion"):
        replace(cfg, heading_from_motion=-1.0)


def test_the_weights_velocity_span_is_read_from_their_json_and_validated(tmp_path):
    import json

    from sparse_perception_ros.params import ParameterError
    from sparse_perception_ros.runtime.loading import load_velocity_min_span, load_weight_facts

    w = tmp_path / "w.pt"
    assert load_velocity_min_span(w) is None and load_weight_facts(w).velocity_min_span is None  # no json
    (tmp_path / "w.pt.json").write_text(json.dumps({"velocity_min_span": {"value": 0.1}}))
    assert load_velocity_min_span(w) == 0.1 and load_weight_facts(w).velocity_min_span == 0.1
    for bad in ({"value": -1}, {"value": "short"}, 0.1):
        (tmp_path / "w.pt.json").write_text(json.dumps({"velocity_min_span": bad}))
        with pytest.raises(ValueError, match="w.pt.json"):
            load_velocity_min_span(w)
        with pytest.raises(ParameterError, match="velocity span") as err:
            load_weight_facts(w)
        assert err.value.name == "model.checkpoint"


def test_the_velocity_span_parameter_is_validated_by_name():
    from sparse_perception_ros.params import ParameterError, default_flat, load_params, params_from_flat

    assert load_params().temporal.velocity_min_span == "auto"
    assert params_from_flat({**default_flat(), "temporal.velocity_min_span": 0.25}).temporal.velocity_min_span == 0.25
    for bad in (-1.0, "fast"):
        with pytest.raises(ParameterError, match="temporal.velocity_min_span"):
            params_from_flat({**default_flat(), "temporal.velocity_min_span": bad})


@pytest.mark.parametrize("preset", ["tiny", "tiny_fusion"])
def test_the_bundled_weights_store_the_span_chosen_at_the_sensors_rate(preset):
    from sparse_perception_ros.runtime.loading import bundled_weights_path, load_velocity_min_span

    path = bundled_weights_path(preset)
    if path is None:
        pytest.skip(f"no models/{preset}.pt bundled")
    span = load_velocity_min_span(path)
    assert span is not None and 0.0 < span <= 0.5
    if preset == "tiny_fusion":  # LiDAR positions jitter little: three 20 Hz positions measure motion
        assert span < 0.5


def test_the_published_velocity_and_the_predicted_one_have_their_own_spans():
    """A car at 6 m/s along x, seen at 20 Hz by a model that reports no velocity. With a 0.1 s
    published span and a 0.5 s prediction span, the published velocity is measured from the third
    frame on, while the velocity the next frame's re-association extrapolates (``tracks.vel``) stays
    the model's until the track spans 0.5 s; with one span for both they move together."""
    from sparse_perception_ros.runtime.tracking import TrackingConfig, track_frame

    split = TrackingConfig(4.0, True, 0.0, num_classes=3, velocity_window=2.0, velocity_noise=1.0,
                           velocity_min_span=0.1, predict_min_span=0.5)
    shared = replace(split, predict_min_span=0.1)
    memories = {"split": None, "shared": None}
    for k in range(12):  # 0 .. 0.55 s
        t = k / 20.0
        b = boxes((10.0 + 6.0 * t, 3.0, 0.0, 0.0)).astype(np.float32)
        for name, cfg in (("split", split), ("shared", shared)):
            out = track_frame(b, np.float32([0.9]), np.array([0]), np.array([1]), np.eye(4), int(t * S),
                              {1} if k else set(), {1}, memories[name], None, cfg)
            memories[name] = out.tracks
            published, predicted = out.boxes[0, 7], out.tracks.vel[0, 0]
            if t < 0.1 - 1e-9:
                assert published == 0.0 and predicted == 0.0  # too young for either span
            elif name == "shared":
                assert published == pytest.approx(predicted) and published > 5.0
            elif t < 0.5 - 1e-9:
                assert published > 5.0 and predicted == 0.0  # measured for the output, not yet for the gate
            else:
                assert published > 5.0 and predicted > 5.0


VOTES = TrackClassVotes({3: np.array([0.0, 12.0]), 7: np.array([0.4, 0.0])})  # summed scores 12 and 0.4


def test_one_object_tracked_twice_continues_the_established_track():
    """``temporal.same_object_width``: two candidate tracks 0.2 m apart (cars 1.9 m wide) cannot be two
    cars side by side. A new instance's box nearer the young track still continues the one with more
    summed score; with the rule off (0) or without evidence, the nearest."""
    pose = np.eye(4)
    mem = TrackMemory(0, np.array([[10.0, 0.0], [10.2, 0.0]]), np.zeros((2, 2)), np.array([1, 1]), np.array([3, 7]),
                      width=np.array([1.9, 1.9]))
    args = dict(carried=set(), alive={20}, memory=mem, max_distance=4.0)
    box = boxes((10.19, 0, 0, 0))
    ids, new = reassociate(np.array([20]), box, np.array([1]), pose, S // 20, **args, same_object=1.0,
                           votes=VOTES)
    assert ids.tolist() == [3] and new.width.tolist() == [1.9]
    ids, _ = reassociate(np.array([20]), box, np.array([1]), pose, S // 20, **args, same_object=0.0,
                         votes=VOTES)
    assert ids.tolist() == [7]
    ids, _ = reassociate(np.array([20]), box, np.array([1]), pose, S // 20, **args, same_object=1.0)
    assert ids.tolist() == [7]
    # 0.1 x the width (0.19 m) no longer joins tracks 0.2 m apart
    ids, _ = reassociate(np.array([20]), box, np.array([1]), pose, S // 20, **args, same_object=0.1,
                         votes=VOTES)
    assert ids.tolist() == [7]


def test_neighbours_side_by_side_keep_their_own_tracks():
    """Two pedestrians 0.8 m apart (0.6 m wide) are two objects: each new box continues its own track,
    although the stronger track lies within the gate of both boxes."""
    pose = np.eye(4)
    mem = TrackMemory(0, np.array([[5.0, 0.0], [5.8, 0.0]]), np.zeros((2, 2)), np.array([8, 8]), np.array([3, 7]),
                      width=np.array([0.6, 0.6]))
    ped = boxes((5.83, 0, 0, 0), (5.05, 0, 0, 0), size=(0.6, 0.7))
    args = dict(carried=set(), alive={20, 21}, memory=mem, max_distance=4.0, votes=VOTES)
    ids, _ = reassociate(np.array([20, 21]), ped, np.array([8, 8]), pose, S // 20, **args, same_object=1.0)
    assert ids.tolist() == [7, 3]
    # a bound wider than the people themselves (2 x 0.6 m > 0.8 m) would swap them: the first box, nearer
    # its own track than the second is to its own, would take the stronger one
    ids, _ = reassociate(np.array([20, 21]), ped, np.array([8, 8]), pose, S // 20, **args, same_object=2.0)
    assert ids.tolist() == [3, 7]


def test_same_object_width_is_validated_by_name():
    with pytest.raises(ValueError, match="same_object_width"):
        pipeline_config(same_object_width=-0.5)
