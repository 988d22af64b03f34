"""SilenceWatch: a camera silent while the rest of the rig sends is reported once, and again when it
returns; a pause of the whole rig is not silence."""

import pytest

from sparse_perception_ros.runtime.silence import SilenceWatch

MS = 1_000_000
CAMS = ("front", "back")


def feed(w, t_ms, sources):
    events = []
    for s in sources:
        events += w.arrived(s, t_ms * MS)
    return events


def test_a_camera_silent_past_the_threshold_is_reported_once_and_again_when_it_returns():
    w = SilenceWatch(CAMS, 1_000 * MS)
    events = []
    for k in range(30):  # 100 ms frames; back stops after 0.5 s
        events += feed(w, 100 * k, ["front", "points"] + (["back"] if k <= 5 else []))
    assert events == [("silent", "back", 1_100 * MS)]  # first arrival more than 1 s after its last image
    assert w.silent() == ["back"]
    events = feed(w, 3_000, ["back"])
    assert events == [("back", "back", 2_500 * MS)] and w.silent() == []


def test_a_pause_of_the_whole_rig_is_not_silence():
    w = SilenceWatch(CAMS, 1_000 * MS)
    feed(w, 0, ["front", "back", "points"])
    assert feed(w, 5_000, ["front", "points"]) == []  # the rig paused 5 s: timers restart
    assert feed(w, 5_050, ["back"]) == []
    assert feed(w, 5_900, ["front"]) == []


def test_a_camera_that_never_sends_goes_silent_and_a_backward_clock_restarts():
    w = SilenceWatch(CAMS, 1_000 * MS)
    events = []
    for k in range(12):
        events += feed(w, 100 * k, ["front"])
    assert events == [("silent", "back", 1_100 * MS)]
    assert feed(w, 50, ["front"]) == []  # clock ran back (a looping player): nothing new is silent
    assert w.silent() == ["back"]


def test_threshold_must_be_positive():
    with pytest.raises(ValueError, match="silent_after_ns"):
        SilenceWatch(CAMS, 0)
