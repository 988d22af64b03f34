"""NodeDiagnostics (no DDS): the status level comes from a recent window while the counters stay
cumulative, only counters appear as values, the CameraInfo start-up race is not a refusal, and
silent cameras are counted and keep the level at WARN."""

from types import SimpleNamespace

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus

from sparse_perception_ros.ros.convert import ConversionError
from sparse_perception_ros.ros.diagnostics import NodeDiagnostics
from sparse_perception_ros.runtime.frame_builder import InputRefused

S = 1_000_000_000


class Log:
    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(("warning", text))

    info = error = warning


class Clock:
    t = 0

    def __call__(self):
        return self.t


def make(**kw):
    clock, log = Clock(), Log()
    return NodeDiagnostics("perception", log, clock=clock, **kw), clock, log


def status(diag):
    (st,) = diag.status(0, {"sync/frames": 3}).status
    return st, {kv.key: kv.value for kv in st.values}


def built(present=(True, True), refused=(), awaiting=()):
    return SimpleNamespace(frame=SimpleNamespace(present=np.array(present)), refused=list(refused),
                           calibration_changed=[], awaiting_calibration=list(awaiting))


def test_level_comes_from_the_last_10_s_and_counters_stay_cumulative():
    diag, clock, log = make()
    st, values = status(diag)
    assert st.level == DiagnosticStatus.OK and st.message == "ok"
    diag.refuse("image/front", ConversionError("encoding", "rgba8", "unsupported"))
    st, values = status(diag)
    assert st.level == DiagnosticStatus.WARN and "refused/image/front:encoding" in st.message
    clock.t = 9 * S
    assert status(diag)[0].level == DiagnosticStatus.WARN
    clock.t = 11 * S  # nothing new for more than the window: OK again, the totals kept
    st, values = status(diag)
    assert st.level == DiagnosticStatus.OK
    assert values["refused/image/front:encoding"] == "1" and values["refused_total"] == "1"
    diag.refuse("image/front", ConversionError("encoding", "rgba8", "unsupported"))
    st, values = status(diag)
    assert st.level == DiagnosticStatus.WARN and values["refused/image/front:encoding"] == "2"
    assert sum("refused image/front" in text for _, text in log.lines) == 1  # logged once


def test_only_counters_are_values():
    diag, clock, log = make()
    for _ in range(2):
        diag.refuse("points", ConversionError("data", "3 bytes", "truncated"))
        diag.detections(SimpleNamespace(counters={"duplicates_suppressed": 1}, reset="time_gap"))
        diag.frame_error(5, RuntimeError("boom"))
        diag.bad_transform("odom->base_link: zero quaternion")
        diag.built(built(present=(True, False)))
    _, values = status(diag)
    assert values == {"refused_total": "2", "refused/points:data": "2", "duplicates_suppressed": "2",
                      "reset/time_gap": "2", "frame_error_total": "2", "frame_error/RuntimeError": "2",
                      "tf_refused:odom->base_link": "2", "camera_masked": "2", "sync/frames": "3"}
    assert len(log.lines) == 4  # each kind logged once


def test_a_camera_info_arriving_with_the_first_image_is_not_a_refusal():
    diag, clock, log = make()
    diag.built(built(present=(False, True), awaiting=["front"]))  # image first, CameraInfo a moment later
    clock.t = S
    diag.built(built(present=(False, True), awaiting=["front"]))
    clock.t = 2 * S
    diag.built(built())  # the CameraInfo came
    st, values = status(diag)
    assert st.level == DiagnosticStatus.OK and values["camera_info_pending/front"] == "2"
    assert not any(k.startswith("refused") for k in values) and log.lines == []


def test_a_camera_info_that_never_comes_is_refused_after_the_grace():
    diag, clock, log = make(calibration_grace_s=5.0)
    for k in range(8):
        clock.t = k * S
        diag.built(built(present=(False, True), awaiting=["front"]))
    st, values = status(diag)
    assert st.level == DiagnosticStatus.WARN
    assert values["camera_info_pending/front"] == "6" and values["refused/camera/front:camera_info"] == "2"
    assert len(log.lines) == 1 and "no CameraInfo received within 5 s" in log.lines[0][1]


def test_a_silent_camera_is_counted_and_warns_while_silent():
    diag, clock, log = make()
    diag.camera_silence([("silent", "back", int(1.2 * S))])
    diag.set_silent(["back"])
    st, values = status(diag)
    assert st.level == DiagnosticStatus.WARN and "silent camera(s): back" in st.message
    assert values["camera_silent/back"] == "1"
    clock.t = 30 * S
    assert status(diag)[0].level == DiagnosticStatus.WARN  # still silent: still WARN
    diag.camera_silence([("back", "back", 30 * S)])
    diag.set_silent([])
    clock.t = 41 * S
    assert status(diag)[0].level == DiagnosticStatus.OK
    assert [kind for kind, _ in log.lines] == ["warning", "warning"] and "again" in log.lines[1][1]


def test_refusal_kinds_for_input_refused():
    diag, _, _ = make()
    diag.refuse("image/back", InputRefused("image size", "80x45", "CameraInfo says 160x90"))
    assert status(diag)[1]["refused/image/back:image size"] == "1"
