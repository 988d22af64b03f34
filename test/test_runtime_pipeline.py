"""Pipeline.step: reset rules, masked cameras, filtering, id bookkeeping (tiny preset, random weights)."""

import numpy as np
import pytest
import torch
from helpers.frames import T0, make_frame
from helpers.pipeline import pipeline_config

from sparse_perception_ros.model import CLASS_NAMES, build_model
from sparse_perception_ros.runtime.backends import torch_stepper
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineConfig, PipelineState

S = 1_000_000_000


@pytest.fixture(scope="module")
def pipeline():
    torch.manual_seed(0)
    return Pipeline(torch_stepper(build_model("tiny")), CLASS_NAMES, pipeline_config(max_detections=20))


def test_first_frame_and_continuation(pipeline):
    det, state = pipeline.step(make_frame(), PipelineState.empty())
    assert det.reset is None and det.stamp_ns == T0
    assert det.boxes.shape == (20, 10) and det.boxes.dtype == np.float32 and np.isfinite(det.boxes).all()
    assert len(set(det.track_ids.tolist())) == len(det.track_ids)  # unique within a message
    assert (np.diff(det.scores) <= 0).all()
    assert set(det.timings_ms) == {"preprocess", "infer", "decode"}
    det2, state2 = pipeline.step(make_frame(T0 + S // 2, pose_x=1.0), state)
    assert det2.reset is None and state2.last_stamp_ns == T0 + S // 2
    assert state2.temporal.next_track_id >= state.temporal.next_track_id
    carried = set(state.temporal.track_ids[0].tolist()) - {-1}
    assert carried & set(state2.temporal.track_ids[0].tolist())  # ids are carried by the bank


@pytest.mark.parametrize("stamp,reason", [(T0 - S, "time_jump_backward"), (T0 + 3 * S, "time_gap")])
def test_time_rules_reset_but_keep_ids_unique(pipeline, stamp, reason):
    _, state = pipeline.step(make_frame(), PipelineState.empty(next_track_id=1000))
    used = state.temporal.next_track_id
    det, new = pipeline.step(make_frame(stamp), state)
    assert det.reset == reason
    assert (det.track_ids >= used).all()  # after a reset every id is new: never reused


def test_missing_ego_pose_resets_and_carries_nothing(pipeline):
    _, state = pipeline.step(make_frame(), PipelineState.empty())
    frame = make_frame(T0 + S // 2)
    frame.T_world_from_model = None
    det, new = pipeline.step(frame, state)
    assert det.reset == "missing_ego_pose" and new.temporal.is_empty
    assert new.temporal.next_track_id > state.temporal.next_track_id


def test_calibration_change_resets(pipeline):
    _, state = pipeline.step(make_frame(), PipelineState.empty())
    frame = make_frame(T0 + S // 2)
    frame.K = frame.K.copy()
    frame.K[2, 0, 0] *= 1.1
    det, _ = pipeline.step(frame, state)
    assert det.reset == "calibration_changed"


def test_masked_camera_content_has_no_effect(pipeline):
    a = make_frame(present=[True, True, False, True, True, True])
    b = make_frame(present=[True, True, False, True, True, True])
    b.images[2] = 255 - b.images[2]  # the masked camera's pixels change completely
    c = make_frame()  # same images, camera 2 present
    c.images[2] = b.images[2]
    da, _ = pipeline.step(a, PipelineState.empty())
    db, _ = pipeline.step(b, PipelineState.empty())
    dc, _ = pipeline.step(c, PipelineState.empty())
    np.testing.assert_array_equal(da.boxes, db.boxes)
    np.testing.assert_array_equal(da.scores, db.scores)
    assert not np.array_equal(db.scores, dc.scores)  # when present, that camera does matter


def test_missing_image_is_masked_like_absent(pipeline):
    a = make_frame(present=[True] * 5 + [False])
    b = make_frame()
    b.images[5] = None
    da, _ = pipeline.step(a, PipelineState.empty())
    db, _ = pipeline.step(b, PipelineState.empty())
    np.testing.assert_array_equal(da.scores, db.scores)


def test_score_threshold_and_limits():
    torch.manual_seed(0)
    model = torch_stepper(build_model("tiny"))
    full, _ = Pipeline(model, CLASS_NAMES, pipeline_config(max_detections=32)).step(make_frame(), PipelineState.empty())
    thr = float(np.median(full.scores))
    cut, _ = Pipeline(model, CLASS_NAMES, pipeline_config(score_threshold=thr, max_detections=5)).step(make_frame(),
                                                                                             PipelineState.empty())
    assert len(cut.scores) == min(5, int((full.scores >= thr).sum())) and (cut.scores >= thr).all()
    np.testing.assert_array_equal(cut.boxes, full.boxes[: len(cut.boxes)])
    with pytest.raises(ValueError, match="score_threshold"):
        pipeline_config(score_threshold=1.5)


def test_wrong_camera_count_is_refused(pipeline):
    frame = make_frame()
    frame.images = frame.images[:5]
    with pytest.raises(ValueError, match="5 cameras"):
        pipeline.step(frame, PipelineState.empty())


def test_given_calibration_key_ignores_per_frame_extrinsics(pipeline):
    """Ego-motion-compensated T_cam_from_model changes every frame; the rig's calibration does not."""
    from sparse_perception_ros.runtime.pipeline import calibration_key

    first = make_frame()
    key = calibration_key(first.K, first.T_cam_from_model)
    first.calibration_key = key
    _, state = pipeline.step(first, PipelineState.empty())
    moved = make_frame(T0 + S // 2)
    moved.T_cam_from_model = moved.T_cam_from_model.copy()
    moved.T_cam_from_model[:, 0, 3] += 0.3  # as if the ego moved 0.3 m between trigger and exposure
    moved.calibration_key = key
    det, _ = pipeline.step(moved, state)
    assert det.reset is None
    moved.calibration_key = None  # without the key, the same change is a calibration change
    det, _ = pipeline.step(moved, state)
    assert det.reset == "calibration_changed"


def test_warm_up_leaves_no_state_and_takes_first_frame_costs(pipeline):
    seconds = pipeline.warm_up()
    assert seconds > 0
    det, state = pipeline.step(make_frame(), PipelineState.empty())
    assert det.reset is None and state.temporal.next_track_id > 0


def test_config_comes_from_the_parameters_and_has_no_defaults_of_its_own():
    import dataclasses

    from sparse_perception_ros.params import load_params

    p = dataclasses.replace(load_params(), output=dataclasses.replace(load_params().output, score_threshold=0.25))
    c = PipelineConfig.from_params(p)
    assert (c.score_threshold, c.max_detections, c.max_time_gap_s, c.sensors) == (
        p.output.score_threshold, p.output.max_detections, p.temporal.max_time_gap, p.model.sensors)
    assert (c.reassociate_distance, c.reassociate_speed, c.track_class_vote, c.duplicate_iou) == (
        p.temporal.reassociate_distance, p.temporal.reassociate_speed, p.temporal.track_class_vote,
        p.temporal.duplicate_iou)
    # only resize_method (not a node parameter) has a default: nothing can drift from the YAML
    defaults = {f.name for f in dataclasses.fields(PipelineConfig) if f.default is not dataclasses.MISSING}
    assert defaults == {"resize_method"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.score_threshold = 0.5
    with pytest.raises(TypeError):
        Pipeline(torch_stepper(build_model("tiny")), CLASS_NAMES)  # no config, no silent defaults


def test_counters_report_per_frame_events_without_mutating_the_pipeline(pipeline):
    det, _ = pipeline.step(make_frame(), PipelineState.empty())
    assert det.counters == {"duplicates_suppressed": 0, "points_thinned": 0}
    assert not hasattr(pipeline, "duplicates_suppressed") and not hasattr(pipeline, "points_thinned")


def test_frame_without_pose_carries_only_the_id_counter_and_the_stream_bookkeeping(pipeline):
    _, state = pipeline.step(make_frame(), PipelineState.empty())
    frame = make_frame(T0 + S // 2)
    frame.T_world_from_model = None
    det, new = pipeline.step(frame, state)
    assert new.temporal.is_empty and new.tracks is None and new.class_votes is None
    assert new.last_stamp_ns == T0 + S // 2 and new.calibration == frame.calibration_signature()
    det2, _ = pipeline.step(make_frame(T0), new)  # the stream rules still see the frame: a jump back
    assert det2.reset == "time_jump_backward"


def test_score_threshold_auto_takes_the_weights_own_and_a_number_overrides_it():
    import dataclasses

    from sparse_perception_ros.params import load_params
    from sparse_perception_ros.runtime.pipeline import DEFAULT_SCORE_THRESHOLD, resolve_score_threshold
    from sparse_perception_ros.runtime.sidecar import WeightFacts

    p = load_params()
    assert p.output.score_threshold == "auto"  # the shipped default
    assert PipelineConfig.from_params(p, WeightFacts(score_threshold=0.42)).score_threshold == 0.42
    assert PipelineConfig.from_params(p).score_threshold == DEFAULT_SCORE_THRESHOLD == 0.3  # weights without one
    fixed = dataclasses.replace(p, output=dataclasses.replace(p.output, score_threshold=0.1))
    assert PipelineConfig.from_params(fixed, WeightFacts(score_threshold=0.42)).score_threshold == 0.1
    torch.manual_seed(0)
    pipe = Pipeline.from_params(torch_stepper(build_model("tiny")), CLASS_NAMES, p, WeightFacts(score_threshold=0.05))
    assert pipe.config.score_threshold == 0.05
    assert resolve_score_threshold(0, None) == 0.0 and isinstance(resolve_score_threshold(1, 0.5), float)
    with pytest.raises(ValueError, match="auto"):
        resolve_score_threshold("0.3", None)


def test_state_interval_carries_the_state_only_from_frames_that_far_apart(pipeline):
    """temporal.state_interval 0.45 s at 20 Hz: every frame publishes, but the kept state (the bank the
    next frame starts from) is replaced only at frames 0.45 s or more after it; ids stay unique."""
    held = Pipeline(pipeline.model, CLASS_NAMES, pipeline_config(max_detections=20, state_interval=0.45))
    state, kept, ids_seen = PipelineState.empty(), [], []
    for k in range(21):  # 1 s at 20 Hz
        det, state = held.step(make_frame(T0 + k * S // 20, pose_x=0.05 * k), state)
        assert len(det.scores) == 20  # every frame publishes
        kept.append(round(state.temporal.timestamp - T0 * 1e-9, 3))
        ids_seen.append(state.temporal.next_track_id)
    assert sorted(set(kept)) == [0.0, 0.45, 0.9]  # frames 0, 9 and 18 replaced the state
    assert ids_seen == sorted(ids_seen)  # the id counter still advances with every frame
    every, state = Pipeline(pipeline.model, CLASS_NAMES, pipeline_config(max_detections=20)), PipelineState.empty()
    for k in range(3):
        _, state = every.step(make_frame(T0 + k * S // 20, pose_x=0.05 * k), state)
    assert round(state.temporal.timestamp - T0 * 1e-9, 3) == 0.1  # 0: every frame's state is carried


def test_state_interval_auto_takes_the_weights_own_and_a_number_overrides_it(tmp_path):
    import dataclasses
    import json

    from sparse_perception_ros.params import ParameterError, default_flat, load_params, params_from_flat
    from sparse_perception_ros.runtime.loading import bundled_weights_path, load_state_interval, load_weight_facts
    from sparse_perception_ros.runtime.pipeline import DEFAULT_STATE_INTERVAL, resolve_state_interval
    from sparse_perception_ros.runtime.sidecar import WeightFacts

    p = load_params()
    assert p.temporal.state_interval == "auto"  # the shipped default
    assert PipelineConfig.from_params(p, WeightFacts(state_interval=0.5)).state_interval == 0.5
    assert PipelineConfig.from_params(p).state_interval == DEFAULT_STATE_INTERVAL == 0.45  # weights without one
    fixed = dataclasses.replace(p, temporal=dataclasses.replace(p.temporal, state_interval=0.0))
    assert PipelineConfig.from_params(fixed, WeightFacts(state_interval=0.5)).state_interval == 0.0
    for bad in ("slow", -0.1, True):
        with pytest.raises(ValueError, match="state_interval"):
            resolve_state_interval(bad, None)
    for bad in (-1.0, "slow"):
        with pytest.raises(ParameterError, match="temporal.state_interval"):
            params_from_flat({**default_flat(), "temporal.state_interval": bad})
    # the weights' json: read, validated, named
    w = tmp_path / "w.pt"
    assert load_state_interval(w) is None and load_weight_facts(w).state_interval is None
    (tmp_path / "w.pt.json").write_text(json.dumps({"state_interval": {"value": 0.5}}))
    assert load_state_interval(w) == 0.5 and load_weight_facts(w).state_interval == 0.5
    (tmp_path / "w.pt.json").write_text(json.dumps({"state_interval": {"value": -2}}))
    with pytest.raises(ParameterError, match="state interval") as err:
        load_weight_facts(w)
    assert err.value.name == "model.checkpoint"
    # the bundled weights: the camera model carries every 0.5 s as trained (0.475 s: jittered stamps still
    # carry), the fused one from 0.45 s
    for preset, interval in (("tiny", 0.475), ("tiny_fusion", 0.45)):
        path = bundled_weights_path(preset)
        if path is not None:
            assert load_state_interval(path) == interval, preset


def test_velocity_min_span_auto_takes_the_weights_own_and_a_number_overrides_it():
    import dataclasses

    from sparse_perception_ros.params import load_params
    from sparse_perception_ros.runtime.sidecar import WeightFacts
    from sparse_perception_ros.runtime.tracking import DEFAULT_VELOCITY_MIN_SPAN, resolve_velocity_min_span

    p = load_params()
    assert p.temporal.velocity_min_span == "auto"  # the shipped default
    assert PipelineConfig.from_params(p, WeightFacts(velocity_min_span=0.1)).velocity_min_span == 0.1
    assert PipelineConfig.from_params(p).velocity_min_span == DEFAULT_VELOCITY_MIN_SPAN == 0.5  # weights without one
    fixed = dataclasses.replace(p, temporal=dataclasses.replace(p.temporal, velocity_min_span=0.25))
    config = PipelineConfig.from_params(fixed, WeightFacts(velocity_min_span=0.1))
    assert config.velocity_min_span == 0.25 and config.tracking(3).velocity_min_span == 0.25  # reaches the tracker
    assert resolve_velocity_min_span(0, 0.1) == 0.0 and isinstance(resolve_velocity_min_span(1, None), float)
    for bad in ("fast", -0.1, True):
        with pytest.raises(ValueError, match="velocity_min_span"):
            resolve_velocity_min_span(bad, None)


def _state_with_tracks():
    """A temporal state of 4 carried rows (bank ids 5, 7, 9, -1) whose frame is turned 90° in the world,
    and the tracks: bank 5 published as id 50 moving +x (world), id 7 lost moving +y, id 9 with a
    velocity not yet measured (NaN)."""
    from sparse_perception_ros.model.instance_bank import TemporalState
    from sparse_perception_ros.runtime.tracking import LostTracks, TrackMemory

    pose = np.eye(4)
    pose[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]  # model x = world y, model y = world -x
    anchors = torch.zeros(1, 4, 11)
    anchors[0, :, 8:11] = torch.tensor([0.1, 0.2, 0.3])  # the model's own velocity
    temporal = TemporalState(anchors=anchors, features=torch.zeros(1, 4, 8), confidence=torch.ones(1, 4),
                             track_ids=torch.tensor([[5, 7, 9, -1]]), timestamp=1.0, T_world_from_model=pose,
                             next_track_id=10)
    lost = LostTracks(np.array([0]), np.zeros((1, 2)), np.array([[0.0, 2.0]]), np.array([0]), np.array([7]),
                      np.ones(1), np.ones(1))
    tracks = TrackMemory(0, np.zeros((2, 2)), np.array([[3.0, 0.0], [np.nan, np.nan]]), np.zeros(2, np.int64),
                         np.array([50, 9]), id_map={5: 50}, lost=lost)
    return temporal, tracks


def test_carried_anchors_take_their_tracks_velocity_in_their_own_frame():
    from sparse_perception_ros.runtime.pipeline import with_track_velocities

    temporal, tracks = _state_with_tracks()
    before = temporal.anchors.clone()
    out = with_track_velocities(temporal, tracks)
    torch.testing.assert_close(out.anchors[0, 0, 8:10], torch.tensor([0.0, -3.0]))  # world +x 3 m/s: model -y
    torch.testing.assert_close(out.anchors[0, 1, 8:10], torch.tensor([2.0, 0.0]))  # lost, world +y 2 m/s: model +x
    torch.testing.assert_close(out.anchors[0, 2:], before[0, 2:])  # NaN velocity, no bank id: the model's
    assert (out.anchors[0, :, 10] == 0.3).all() and (out.anchors[0, :, :8] == 0).all()  # only vx, vy change
    torch.testing.assert_close(temporal.anchors, before)  # the input state is left alone
    assert out.track_ids is temporal.track_ids and out.features is temporal.features


def test_carry_track_velocity_reaches_the_model_only_when_on(pipeline):
    """Pipeline.step hands the model the state with the tracks' velocities (option on) or as it was."""
    from dataclasses import replace

    from sparse_perception_ros.runtime.tracking import TrackMemory

    _, state = pipeline.step(make_frame(), PipelineState.empty())
    bank = state.temporal.track_ids[0].tolist()
    rows = [r for r, b in enumerate(bank) if b >= 0][:2]
    v_world = np.array([[3.0, 0.0], [0.0, -1.0]])
    state = replace(state, tracks=TrackMemory(T0, np.zeros((2, 2)), v_world, np.zeros(2, np.int64),
                                              np.array([bank[r] for r in rows])))
    seen, real = [], pipeline.model.step

    def step(*args, **kw):  # the real step, recording the state it is given
        seen.append(args[5].anchors.clone())
        return real(*args, **kw)

    for on in (False, True):
        piped = Pipeline(pipeline.model, CLASS_NAMES, pipeline_config(max_detections=20, carry_track_velocity=on))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pipeline.model, "step", step)
            piped.step(make_frame(T0 + S // 2, pose_x=1.0), state)
    anchors = state.temporal.anchors
    assert torch.equal(seen[0], anchors)
    R = np.asarray(state.temporal.T_world_from_model)[:2, :2]
    torch.testing.assert_close(seen[1][0, rows, 8:10], torch.as_tensor(v_world @ R, dtype=torch.float32))
    others = [r for r in range(anchors.shape[1]) if r not in rows]
    assert torch.equal(seen[1][0, others], anchors[0, others])
    # a held state (temporal.state_interval) is kept as the model left it; only the model's copy moves
    held = Pipeline(pipeline.model, CLASS_NAMES, pipeline_config(max_detections=20, carry_track_velocity=True,
                                                                 state_interval=10.0))
    _, after = held.step(make_frame(T0 + S // 2, pose_x=1.0), state)
    assert torch.equal(after.temporal.anchors, anchors)


def test_carry_track_velocity_auto_takes_the_weights_own(tmp_path):
    import dataclasses
    import json

    from sparse_perception_ros.params import ParameterError, default_flat, load_params, params_from_flat
    from sparse_perception_ros.runtime.loading import (
        bundled_weights_path,
        load_carry_track_velocity,
        load_weight_facts,
    )
    from sparse_perception_ros.runtime.pipeline import resolve_carry_track_velocity
    from sparse_perception_ros.runtime.sidecar import WeightFacts

    p = load_params()
    assert p.temporal.carry_track_velocity == "auto"  # the shipped default
    assert PipelineConfig.from_params(p, WeightFacts(carry_track_velocity=True)).carry_track_velocity is True
    assert PipelineConfig.from_params(p).carry_track_velocity is False  # weights without one: the reference
    off = dataclasses.replace(p, temporal=dataclasses.replace(p.temporal, carry_track_velocity=False))
    assert PipelineConfig.from_params(off, WeightFacts(carry_track_velocity=True)).carry_track_velocity is False
    for bad in ("yes", 1):
        with pytest.raises(ValueError, match="carry_track_velocity"):
            resolve_carry_track_velocity(bad, None)
        with pytest.raises(ParameterError, match="temporal.carry_track_velocity"):
            params_from_flat({**default_flat(), "temporal.carry_track_velocity": bad})
    w = tmp_path / "w.pt"
    assert load_carry_track_velocity(w) is None
    (tmp_path / "w.pt.json").write_text(json.dumps({"carry_track_velocity": {"value": True}}))
    assert load_weight_facts(w).carry_track_velocity is True
    (tmp_path / "w.pt.json").write_text(json.dumps({"carry_track_velocity": {"value": "true"}}))
    with pytest.raises(ParameterError, match="carried velocity") as err:
        load_weight_facts(w)
    assert err.value.name == "model.checkpoint"
    for preset, carry in (("tiny", False), ("tiny_fusion", True)):  # chosen on validation (models/README.md)
        path = bundled_weights_path(preset)
        if path is not None:
            assert load_carry_track_velocity(path) is carry, preset
