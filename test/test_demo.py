"""`make demo` end to end on a tiny scene: synth bag -> node + recorder -> player -> summary and picture."""

import json
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "demo", "--keyframes", "4",
                          "--workdir", str(tmp_path / "work"), "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] >= 3
    assert summary["objects_per_frame"] > 0
    assert {"infer", "preprocess", "publish"} <= set(summary["latency_ms"])
    assert (out / "demo.png").stat().st_size > 20_000
    assert "demo summary" in res.stdout and "latency infer" in res.stdout and "vs GT:" in res.stdout
    gt = summary["ground_truth"]
    assert gt["frames"] >= 3 and 0.0 <= gt["recall"] <= 1.0
    from sparse_perception_ros.runtime.loading import bundled_weights_path

    if bundled_weights_path("tiny_fusion") is not None:  # the default demo model is trained: real detections
        assert "RANDOM" not in summary["model"]
        assert gt["recall"] >= 0.3 and gt["precision"] >= 0.3, gt
        assert gt["tracks_following"] >= 1, gt
