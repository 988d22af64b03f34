"""``cameras.max_rate``: the per-camera image throttle (runtime/camera_rate.py), its ``auto`` value from
the weights' json, and the parameter's validation. The node's use of it over DDS is in
test_node_camera_rate.py; ``eval --offline --sensor-rate``'s in test_eval_sensor_rate.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparse_perception_ros.params import ParameterError, default_flat, load_params, params_from_flat
from sparse_perception_ros.runtime.camera_rate import CameraThrottle, resolve_camera_rate, throttle_stamps
from sparse_perception_ros.runtime.loading import load_camera_rate

MS = 1_000_000


def _camera_stamps(hz: float, seconds: float, jitter_ms: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, seconds, 1.0 / hz) * 1e9
    return (t + rng.uniform(-jitter_ms, jitter_ms, len(t)) * MS).astype(np.int64)


@pytest.mark.parametrize("source_hz,limit_hz,expected_hz", [
    (12.0, 6.0, 6.0),  # every second image
    (12.0, 8.0, 6.0),  # a limit between two divisors keeps the lower rate (a throttle, not a resampler)
    (12.0, 12.0, 12.0),  # at the source's own rate: every image, despite jitter
    (12.0, 4.0, 4.0),  # every third
    (20.0, 5.0, 5.0),
])
def test_a_camera_keeps_at_most_the_limit(source_hz, limit_hz, expected_hz):
    stamps = _camera_stamps(source_hz, 10.0, jitter_ms=2.0)
    kept = stamps[throttle_stamps(stamps, limit_hz)]
    assert kept[0] == stamps[0]  # the first image is always kept
    rate = (len(kept) - 1) / ((kept[-1] - kept[0]) * 1e-9)
    assert rate == pytest.approx(expected_hz, rel=0.03)
    assert np.diff(kept).min() >= 0.9e9 / limit_hz  # never closer than the tolerance allows


def test_zero_keeps_every_image():
    stamps = _camera_stamps(12.0, 2.0)
    assert throttle_stamps(stamps, 0.0).all()
    throttle = CameraThrottle(0.0)
    assert all(throttle.keep("front", int(t)) for t in stamps) and throttle.dropped == 0


def test_cameras_are_throttled_independently_and_a_backward_stamp_restarts():
    throttle = CameraThrottle(6.0)
    period = int(1e9 / 12)
    assert throttle.keep("front", 0) and throttle.keep("back", 10 * MS)  # each camera's first image
    assert not throttle.keep("front", period) and not throttle.keep("back", 10 * MS + period)
    assert throttle.keep("front", 2 * period) and throttle.keep("back", 10 * MS + 2 * period)
    assert throttle.dropped == 2
    assert throttle.keep("front", 5 * MS)  # a time jump back (bag loop): kept, the camera starts over
    assert not throttle.keep("front", 5 * MS + period)
    throttle.reset()
    assert throttle.keep("front", 5 * MS + period)  # after reset every camera's next image is kept


def test_a_negative_rate_is_refused():
    with pytest.raises(ValueError, match="max_rate"):
        CameraThrottle(-1.0)


def test_auto_takes_the_weights_rate_and_a_number_overrides_it():
    assert resolve_camera_rate("auto", None) == 0.0  # weights without one: every image
    assert resolve_camera_rate("auto", 6.0) == 6.0
    assert resolve_camera_rate(0, 6.0) == 0.0 and resolve_camera_rate(10.0, 6.0) == 10.0
    for bad in ("six", -1.0, True):
        with pytest.raises(ValueError, match="max_rate"):
            resolve_camera_rate(bad, None)


def test_the_weights_rate_is_read_from_their_json(tmp_path):
    w = tmp_path / "w.pt"
    assert load_camera_rate(w) is None  # no json: every image
    (tmp_path / "w.pt.json").write_text(json.dumps({"camera_rate": {"max_hz": 6}}))
    assert load_camera_rate(w) == 6.0
    (tmp_path / "w.pt.json").write_text(json.dumps({"camera_rate": {"max_hz": -2}}))
    with pytest.raises(ValueError, match="w.pt.json.*max_hz"):
        load_camera_rate(w)


def test_the_parameter_is_validated_by_name():
    assert load_params().cameras.max_rate == "auto"
    assert params_from_flat({**default_flat(), "cameras.max_rate": 6.0}).cameras.max_rate == 6.0
    for bad in (-1.0, "fast"):
        with pytest.raises(ParameterError, match="cameras.max_rate"):
            params_from_flat({**default_flat(), "cameras.max_rate": bad})
