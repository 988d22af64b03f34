"""FrameAssembler: matching, masking, waiting, bounded buffers, time jumps, and a jittered rig stress test."""

import numpy as np
import pytest

from sparse_perception_ros.runtime.assembler import AssemblerConfig, FrameAssembler

CAMS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
MS = 1_000_000


def config(**kw) -> AssemblerConfig:
    """Explicit test settings (lidar trigger, mask mode, 150 ms match window, no fallback); ``kw`` overrides."""
    base = dict(cameras=CAMS, trigger="lidar", max_camera_time_diff_ns=150 * MS, incomplete="mask",
                wait_timeout_ns=100 * MS, buffer_size=8, max_reorder_ns=500 * MS, fallback_timeout_ns=0)
    return AssemblerConfig(**{**base, **kw})


def assembler(**kw) -> FrameAssembler:
    return FrameAssembler(config(**kw))


def feed_cameras(a, t0, offsets_ms, now_ns):
    out = []
    for cam, off in zip(CAMS, offsets_ms, strict=True):
        if off is not None:
            out += a.add_image(cam, t0 + off * MS, f"{cam}@{t0 + off * MS}", now_ns)
    return out


def test_complete_frame_uses_closest_images_and_keeps_their_stamps():
    a = assembler()
    t = 1_000 * MS
    feed_cameras(a, t, [-90, -70, -50, -30, -10, 10], now_ns=t)
    feed_cameras(a, t - 83 * MS, [0] * 6, now_ns=t)  # a second, older set: each camera now has two candidates
    frames = a.add_points(t + 5 * MS, "sweep", now_ns=t + 20 * MS)
    assert len(frames) == 1
    f = frames[0]
    assert f.complete and f.present.all() and f.points == "sweep" and f.stamp_ns == t + 5 * MS
    expected = [t - 83 * MS, t - 70 * MS, t - 50 * MS, t - 30 * MS, t - 10 * MS, t + 10 * MS]
    assert f.camera_stamps_ns.tolist() == expected
    assert f.images[2] == f"CAM_FRONT_LEFT@{t - 50 * MS}"


def test_a_camera_whose_closest_image_waits_behind_others_gives_its_closest_ready_image():
    """Under load (the feature thread behind): camera 1's newest image waits, its older one is ready;
    the frame takes the older one with its own stamp. Cameras whose closest image is ready, unknown or
    without a ready alternative keep the closest; without the hook nothing changes."""
    t = 1_000 * MS
    states = {(1, t): "behind", (1, t - 83 * MS): "ready", (2, t): "behind", (3, t): "ready"}

    def run(hook):
        a = FrameAssembler(config(), image_state=hook)
        feed_cameras(a, t - 83 * MS, [0, 0, 200, 0, 0, 0], now_ns=t)  # camera 2: its other image is not ready
        feed_cameras(a, t, [0] * 6, now_ns=t)
        (f,) = a.add_points(t + 5 * MS, "sweep", now_ns=t + 5 * MS)
        return a, f

    a, f = run(lambda cam, stamp: states.get((cam, stamp), "unknown"))
    assert f.camera_stamps_ns.tolist() == [t, t - 83 * MS, t, t, t, t]
    assert f.images[1] == f"CAM_FRONT_RIGHT@{t - 83 * MS}" and a.stats["older_ready_images"] == 1
    a, f = run(None)
    assert f.camera_stamps_ns.tolist() == [t] * 6 and a.stats["older_ready_images"] == 0


def test_mask_mode_emits_at_once_with_missing_cameras_masked():
    a = assembler(incomplete="mask")
    t = 10_000 * MS
    feed_cameras(a, t, [0, 0, None, 0, 400, 0], now_ns=t)  # FRONT_LEFT missing, BACK_LEFT too far in time
    (f,) = a.add_points(t, "sweep", now_ns=t)
    assert f.present.tolist() == [True, True, False, True, False, True]
    assert f.camera_stamps_ns[2] == -1 and f.images[4] is None and not f.complete
    assert a.stats["incomplete_frames"] == 1 and a.stats["missing_camera"] == 2


def test_wait_mode_completes_when_late_images_arrive():
    a = assembler(incomplete="wait", wait_timeout_ns=100 * MS)
    t = 10_000 * MS
    assert feed_cameras(a, t, [0, 0, 0, None, None, None], now_ns=t) == []
    assert a.add_points(t, "sweep", now_ns=t + 1 * MS) == []  # waiting for 3 cameras
    assert a.poll(t + 50 * MS) == []
    assert feed_cameras(a, t, [None, None, None, 20, 30, None], now_ns=t + 60 * MS) == []
    (f,) = a.add_image("CAM_BACK_RIGHT", t + 40 * MS, "late", now_ns=t + 70 * MS)
    assert f.complete and not f.timed_out and f.images[5] == "late"


def test_wait_mode_times_out_to_a_masked_frame():
    a = assembler(incomplete="wait", wait_timeout_ns=100 * MS)
    t = 10_000 * MS
    feed_cameras(a, t, [0, 0, 0, 0, 0, None], now_ns=t)
    assert a.add_points(t, "sweep", now_ns=t) == []
    assert a.poll(t + 99 * MS) == []
    (f,) = a.poll(t + 100 * MS)
    assert f.timed_out and f.present.tolist() == [True] * 5 + [False]
    assert a.poll(t + 200 * MS) == []  # emitted exactly once
    assert a.stats["timed_out"] == 1


def test_newer_trigger_pushes_out_the_waiting_frame():
    a = assembler(incomplete="wait", wait_timeout_ns=10_000 * MS)
    t = 10_000 * MS
    feed_cameras(a, t, [0, 0, 0, 0, 0, None], now_ns=t)
    a.add_points(t, "sweep0", now_ns=t)
    frames = a.add_points(t + 50 * MS, "sweep1", now_ns=t + 50 * MS)
    assert [f.points for f in frames] == ["sweep0"] and frames[0].timed_out
    assert a.stats["superseded"] == 1


def test_camera_trigger_attaches_the_closest_sweep_when_in_window():
    a = assembler(trigger="CAM_FRONT")
    t = 10_000 * MS
    a.add_points(t - 40 * MS, "sweep_a", now_ns=t)
    a.add_points(t + 10 * MS, "sweep_b", now_ns=t)
    feed_cameras(a, t, [None, 0, 0, 0, 0, 0], now_ns=t)
    (f,) = a.add_image("CAM_FRONT", t, "front", now_ns=t)
    assert f.complete and f.images[0] == "front" and f.points == "sweep_b" and f.points_stamp_ns == t + 10 * MS
    (g,) = a.add_image("CAM_FRONT", t + 1_000 * MS, "front2", now_ns=t)  # nothing near: camera-only frame
    assert g.points is None and g.points_stamp_ns == -1 and not g.complete


def test_buffers_are_bounded_and_old_samples_evicted():
    a = assembler(buffer_size=4)
    t = 10_000 * MS
    for k in range(200):
        a.add_image("CAM_BACK", t + k * 10 * MS, k, now_ns=t)
    assert a.buffered()["CAM_BACK"] == 4 and a.stats["evicted"] > 0
    a.add_points(t + 5_000 * MS, "sweep", now_ns=t)
    assert a.buffered()["CAM_BACK"] == 0  # all far older than any future trigger can use


def test_backward_time_jump_clears_buffers_and_is_counted():
    a = assembler()
    t = 10_000 * MS
    feed_cameras(a, t, [0] * 6, now_ns=t)
    a.add_points(t, "sweep", now_ns=t)
    feed_cameras(a, t + 500 * MS, [0] * 6, now_ns=t)  # images from "before the loop"
    (f,) = a.add_points(1_000 * MS, "looped", now_ns=t)  # bag looped back 9 s
    assert a.stats["time_jumps"] == 1 and not f.present.any()  # stale future images were not matched
    feed_cameras(a, 1_040 * MS, [0] * 6, now_ns=t)
    (g,) = a.add_points(1_050 * MS, "after", now_ns=t)  # and it keeps working after the jump
    assert g.complete and a.stats["time_jumps"] == 1


@pytest.mark.parametrize("mode", ["mask", "wait"])
def test_images_received_before_the_post_jump_trigger_are_kept(mode):
    """A bag loop: the post-jump images arrive before the first post-jump sweep. They are older than
    the last trigger (so they look stale), yet the first frame after the jump has every camera."""
    a = assembler(incomplete=mode)
    t = 10_000 * MS
    feed_cameras(a, t, [0] * 6, now_ns=t)
    (first,) = a.add_points(t, "sweep", now_ns=t)
    assert first.complete
    feed_cameras(a, t + 60 * MS, [0] * 6, now_ns=t)  # pre-jump images no sweep will use
    loop = 1_000 * MS
    feed_cameras(a, loop, [-40, -30, -20, -10, 0, 10], now_ns=t + 100 * MS)  # post-jump images, before the sweep
    assert a.buffered()["CAM_FRONT"] >= 1
    (f,) = a.add_points(loop, "looped", now_ns=t + 110 * MS)
    assert a.stats["time_jumps"] == 1
    assert f.complete and f.present.all() and f.points == "looped"
    assert f.camera_stamps_ns.tolist() == [loop - 40 * MS, loop - 30 * MS, loop - 20 * MS, loop - 10 * MS, loop,
                                           loop + 10 * MS]
    assert all(img.endswith(str(stamp)) for img, stamp in zip(f.images, f.camera_stamps_ns, strict=True))


def test_a_far_older_image_without_a_jump_is_evicted_by_the_next_trigger():
    a = assembler(buffer_size=4)
    t = 10_000 * MS
    a.add_points(t, "sweep", now_ns=t)
    a.add_image("CAM_BACK", t - 5_000 * MS, "ancient", now_ns=t)  # kept: a jump could follow
    assert a.buffered()["CAM_BACK"] == 1
    a.add_image("CAM_BACK", t - 300 * MS, "late", now_ns=t)  # merely late (within max_reorder): evicted at once
    assert a.buffered()["CAM_BACK"] == 1
    (f,) = a.add_points(t + 50 * MS, "next", now_ns=t)  # no jump came: the next sweep evicts it
    assert a.buffered()["CAM_BACK"] == 0 and not f.present[3]


def test_a_clock_running_back_emits_the_waiting_frame():
    a = assembler(incomplete="wait", wait_timeout_ns=100 * MS)
    t = 10_000 * MS
    assert a.add_points(t, "sweep", now_ns=t) == []
    assert a.poll(t + 50 * MS) == []
    (f,) = a.poll(t - 5_000 * MS)  # e.g. /clock restarted by a looping player
    assert f.timed_out and f.points == "sweep"


def test_flush_emits_the_waiting_frame_when_the_clock_stopped():
    a = assembler(incomplete="wait", wait_timeout_ns=100 * MS)
    t = 10_000 * MS
    feed_cameras(a, t, [0, 0, 0, None, 0, 0], now_ns=t)
    assert a.add_points(t, "last sweep of the bag", now_ns=t) == []
    assert a.poll(t) == []  # the clock does not move on
    (f,) = a.flush(t)
    assert f.timed_out and f.points == "last sweep of the bag" and f.present.sum() == 5
    assert a.flush(t) == [] and a.stats["timed_out"] == 1


@pytest.mark.parametrize("kwargs,field", [
    (dict(cameras=()), "cameras"), (dict(cameras=("a", "a")), "cameras"), (dict(cameras=("lidar",)), "reserved"),
    (dict(cameras=CAMS, trigger="CAM_NOPE"), "trigger"), (dict(cameras=CAMS, max_camera_time_diff_ns=0), "max_camera"),
    (dict(cameras=CAMS, incomplete="drop"), "incomplete"), (dict(cameras=CAMS, buffer_size=0), "buffer_size"),
])
def test_config_validation_names_the_parameter(kwargs, field):
    with pytest.raises(ValueError, match=field):
        config(**kwargs)


def test_unknown_camera_is_refused_by_name():
    with pytest.raises(ValueError, match="CAM_SIDE"):
        assembler().add_image("CAM_SIDE", 0, None, 0)


@pytest.mark.parametrize("mode", ["mask", "wait"])
def test_jittered_rig_every_sweep_gives_exactly_one_frame(mode):
    """12 Hz cameras fired as a 20 Hz LiDAR sweeps past them, random network delay and reordering."""
    rng = np.random.default_rng(7)
    a = assembler(incomplete=mode, wait_timeout_ns=120 * MS)
    events = []  # (arrival, kind, name, stamp)
    for k in range(100):  # 5 s of LiDAR
        stamp = k * 50 * MS
        events.append((stamp + rng.integers(5, 30) * MS, "points", None, stamp))
    for cam_i, cam in enumerate(CAMS):
        for k in range(60):
            stamp = k * 83 * MS + cam_i * 8 * MS
            if rng.random() < 0.03:
                continue  # a dropped image
            events.append((stamp + rng.integers(5, 60) * MS, "image", cam, stamp))
    events.sort(key=lambda e: e[0])
    frames = []
    for arrival, kind, name, stamp in events:
        frames += a.poll(arrival)
        if kind == "points":
            frames += a.add_points(stamp, stamp, arrival)
        else:
            frames += a.add_image(name, stamp, stamp, arrival)
    frames += a.poll(10**12)
    assert [f.stamp_ns for f in frames] == [k * 50 * MS for k in range(100)]  # one each, in order, none lost
    for f in frames:
        ok = f.camera_stamps_ns[f.present]
        assert (np.abs(ok - f.stamp_ns) <= 150 * MS).all()
        assert all(img == s for img, s, p in zip(f.images, f.camera_stamps_ns, f.present, strict=True) if p)
    complete = np.mean([f.complete for f in frames])
    assert complete > (0.85 if mode == "wait" else 0.2)
    assert max(a.buffered().values()) <= 8


def test_late_trigger_is_dropped_as_out_of_order_not_a_reset():
    a = assembler()
    t = 10_000 * MS
    feed_cameras(a, t, [0] * 6, now_ns=t)
    assert len(a.add_points(t, "s1", now_ns=t)) == 1
    assert a.add_points(t - 100 * MS, "late", now_ns=t) == []  # 100 ms older: out of order
    assert a.add_points(t, "dup", now_ns=t) == []  # same stamp again
    assert a.stats["out_of_order"] == 2 and a.stats["time_jumps"] == 0
    assert a.buffered()["CAM_FRONT"] == 1  # buffers kept
    (f,) = a.add_points(t + 50 * MS, "s2", now_ns=t)
    assert f.points == "s2" and f.present.all()


def test_lidar_dropout_falls_back_to_camera_triggered_frames():
    a = assembler(fallback_timeout_ns=300 * MS, wait_timeout_ns=50 * MS)
    t = 10_000 * MS
    feed_cameras(a, t, [0] * 6, now_ns=t)
    a.add_points(t, "s0", now_ns=t)
    # the LiDAR goes silent; cameras keep coming every 100 ms, the node polls every 10 ms
    frames = []
    for k in range(1, 8):
        for j in range(10):
            frames += a.poll(t + k * 100 * MS + j * 10 * MS)
        frames += feed_cameras(a, t + k * 100 * MS, [0] * 6, now_ns=t + k * 100 * MS)
    fallback = [f for f in frames if f.trigger == "CAM_FRONT"]
    assert fallback and all(f.points is None for f in fallback)
    assert fallback[0].stamp_ns == t + 300 * MS  # starts once the timeout has passed
    assert a.stats["fallback_frames"] == len(fallback) >= 4
    # sweeps return: the LiDAR triggers again and the camera stops triggering
    frames = a.poll(t + 850 * MS)
    (g,) = a.add_points(t + 850 * MS, "s1", now_ns=t + 850 * MS)
    assert g.trigger == "lidar" and g.points == "s1"
    assert feed_cameras(a, t + 900 * MS, [0] * 6, now_ns=t + 900 * MS) == []


def test_a_late_sweep_takes_over_the_fallback_frame():
    a = assembler(fallback_timeout_ns=300 * MS, wait_timeout_ns=100 * MS)
    t = 10_000 * MS
    a.add_points(t, "s0", now_ns=t)
    later = t + 1_000 * MS
    assert feed_cameras(a, later, [0] * 6, now_ns=later) == []  # fallback frame opened, waiting
    (f,) = a.add_points(later, "late sweep", now_ns=later + 30 * MS)  # the sweep was just late
    assert f.trigger == "lidar" and f.points == "late sweep" and f.present.all()
    assert a.stats["fallback_cancelled"] == 1 and a.stats["fallback_frames"] == 0
    assert a.stats["out_of_order"] == 0 and a.poll(later + 500 * MS) == []


def test_fallback_starts_even_if_lidar_never_arrives():
    a = assembler(fallback_timeout_ns=200 * MS)
    t = 10_000 * MS
    assert feed_cameras(a, t, [0] * 6, now_ns=t) == []
    assert feed_cameras(a, t + 250 * MS, [0] * 6, now_ns=t + 250 * MS) == []  # waits for a late sweep
    assert [f.trigger for f in a.poll(t + 400 * MS)] == ["CAM_FRONT"]


@pytest.mark.parametrize("kwargs,field", [(dict(max_reorder_ns=-1), "max_reorder"),
                                          (dict(fallback_timeout_ns=-1), "fallback_timeout")])
def test_new_config_fields_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        config(**kwargs)


def test_config_comes_from_the_parameters_and_has_no_defaults_of_its_own():
    import dataclasses

    from sparse_perception_ros.params import load_params

    p = load_params()
    c = AssemblerConfig.from_params(p)
    assert c == AssemblerConfig(
        cameras=tuple(p.cameras.names), trigger=p.sync.trigger,
        max_camera_time_diff_ns=round(p.sync.max_camera_time_diff * 1e9), incomplete=p.sync.incomplete,
        wait_timeout_ns=round(p.sync.wait_timeout * 1e9), buffer_size=p.sync.buffer_size,
        max_reorder_ns=round(p.sync.max_reorder * 1e9), fallback_timeout_ns=round(p.sync.lidar_fallback_timeout * 1e9))
    assert c.incomplete == "wait" and c.max_camera_time_diff_ns == 150 * MS  # the YAML's values
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(AssemblerConfig))
