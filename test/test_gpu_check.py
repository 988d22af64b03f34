"""``scripts/gpu_check.sh --cpu-smoke``: the prepared GPU check runs its code paths on the CPU.

The smoke run makes the modules the GPU machines lack (ROS, PyYAML, Pillow, SciPy, ...) unimportable,
so passing here means the check imports and runs there too. It must exit 0, write both files, run
every CPU-capable part and report the CUDA-only ones as skipped with a reason.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "from_env"))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    md = (tmp_path / "gpu_check.md").read_text()
    assert report["mode"] == "cpu-smoke" and "| preset | variant |" in md and md in proc.stdout
    assert report["environment"]["ros_modules_imported"] == []
    dfa = report["dfa"]
    assert dfa["status"] == "skipped" and "CUDA" in dfa["reason"]
    assert dfa["cpu_fast_max_abs_err"] <= 1e-5  # the C kernel against the reference at the smoke size
    assert report["preprocess"]["status"] == "ok" and report["preprocess"]["max_abs_err_vs_cpu"] <= 1e-3
    rows = {r["variant"]: r for r in report["steps"]}
    assert set(rows) >= {"eager fp32", "cuda graph fp32", "eager fp16 autocast", "eager bf16 autocast",
                         "torch.compile fp32"}
    eager = rows["eager fp32"]
    assert eager["status"] == "ok" and eager["frames"] == 3 and eager["state_carried"], eager
    assert eager["p50_ms"] > 0 and eager["p99_ms"] >= eager["p50_ms"]
    for name in ("cuda graph fp32", "cuda graph fp16 autocast"):
        assert rows[name]["status"] == "skipped" and "CUDA" in rows[name]["reason"], rows[name]
    for name in ("eager fp16 autocast", "eager bf16 autocast"):  # ran, compared with fp32 over 3 frames
        r = rows[name]
        assert r["status"] == "ok" and r["frames_compared"] == 3, r
        assert 0 < r["raw_max_abs_first"] < 5 and 0 <= r["score_max_abs"] < 0.5, r
    assert rows["torch.compile fp32"]["status"] == "skipped"
