"""Perception node variants over DDS: a CompressedImage rig (corrupt JPEG refused, counted, survived)
and the ONNX Runtime backend. Its own module so that no other perception node is alive on the same
/diagnostics topic.
"""

from helpers.ros_rig import Rig, start_node, stop, write_params
from test_ros_node import PERIOD, T0, run_frames


def test_corrupt_jpeg_on_a_compressed_rig(tmp_path):
    params = write_params(tmp_path, **{"cameras.compressed": True, "output.score_threshold": 0.0,
                                       "sync.lidar_fallback_timeout": 1.0})
    proc = start_node(params)
    rig = Rig(compressed=True)
    try:
        rig.wait_for_node()
        rig.publish_static()

        def corrupt(msg):
            msg.data = bytes(msg.data)[: len(msg.data) // 2]
            return msg

        got = run_frames(rig, proc, [T0, T0 + PERIOD], image_overrides={"back": corrupt})
        assert got, "no output from the compressed-image node"
        rig.spin(1.2)
        counts = rig.counts()
        assert counts.get("refused/image/back:data") == 2  # both truncated JPEGs counted
        assert counts.get("frames_published", 0) >= 2
    finally:
        rig.close()
        log = stop(proc)
    assert log.count("refused image/back") == 1, log  # but logged once
    assert "truncated or corrupt JPEG" in log


def test_onnxruntime_backend_node(tmp_path):
    params = write_params(tmp_path, **{"model.backend": "onnxruntime", "output.score_threshold": 0.0,
                                       "sync.lidar_fallback_timeout": 1.0})
    proc = start_node(params)
    rig = Rig()
    try:
        rig.wait_for_node()  # export (cached after the first run) + session start
        rig.publish_static()
        got = run_frames(rig, proc, [T0 + k * PERIOD for k in range(3)])
        assert len(got) >= 2 and all(m.detections for m in got)
    finally:
        rig.close()
        log = stop(proc)
    assert "OrtBackend" in log
