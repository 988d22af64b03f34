"""Scale-out throughput in one run: training with 1 vs 2 CPU processes (torchrun, DDP over gloo) and
``eval --offline`` with ``--jobs 1`` vs ``--jobs 2``, on the same data. Optionally (``--r50``) one
training iteration of the R50 preset (forward + backward of one clip of 3 frames) on the CPU.

    PYTHONPATH=. python bench/bench_scale.py [--iters 8] [--r50]

Prints a JSON summary (and the machine load before and after); numbers go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sparse_perception_ros.data.generator import SynthConfig
from sparse_perception_ros.data.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), **{k: str(v) for k, v in extra.items()})


def _train(tmp: Path, name: str, procs: int, threads: int, iters: int) -> dict:
    """One training run; s/it from log.json (first iteration, with its warm-up, dropped)."""
    out = tmp / name
    common = ["train", "--out", str(out), "--scenes", "2", "--keyframes", "12", "--objects", "20",
              "--image-size", "400", "225", "--iters", str(iters), "--ckpt-every", str(iters), "--depth-weight", "0",
              "--data-cache", str(tmp / "train_data.pt"), "--threads", str(threads)]
    if procs == 1:
        cmd = [PY, "-m", "sparse_perception_ros.cli", *common]
    else:
        torchrun = str(Path(PY).with_name("torchrun"))
        cmd = [torchrun, "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1", "--master_port", "29731",
               "-m", "sparse_perception_ros.cli", *common]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(OMP_NUM_THREADS=threads), capture_output=True)
    wall = time.perf_counter() - t0
    secs = [h["sec"] for h in json.loads((out / "log.json").read_text())][1:]
    s_it = sum(secs) / len(secs)
    return {"processes": procs, "threads_per_process": threads, "s_per_iter": round(s_it, 3),
            "iter_per_s": round(1 / s_it, 3), "clips_per_s": round(procs / s_it, 3), "wall_s": round(wall, 1)}


def _eval(root: Path, tmp: Path, jobs: int, job_threads: int | None = None) -> dict:
    out = tmp / f"eval_{jobs}_{job_threads}"
    cmd = [PY, "-m", "sparse_perception_ros.cli", "eval", "--dataroot", str(root), "--offline", "--backend", "torch",
           "--score-threshold", "0.05", "--out", str(out), "--pictures", "0", "--no-plots", "--quiet",
           "--jobs", str(jobs)] + (["--job-threads", str(job_threads)] if job_threads else [])
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(), capture_output=True)
    wall = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())
    return {"jobs": jobs, "job_threads": job_threads or "inherited", "wall_s": round(wall, 1),
            "NDS": m["metrics"]["NDS"], "samples": m["run"]["samples"]}


def _r50_step() -> dict:
    import torch  # lazy: only --r50 needs torch and the training room (~1 s); the default run times subprocesses

    from sparse_perception_ros.train.dataset import synthetic_samples
    from sparse_perception_ros.train.trainer import TrainConfig, train

    samples = synthetic_samples(seed=0, scenes=1, keyframes=3, width=704, height=396, objects=30, with_points=True)
    cfg = TrainConfig(preset="sparse4dv3_r50", iters=1, clip_len=3, warmup_iters=1, anchor_init="default")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = train(samples, cfg, None, progress=False, log=lambda m: None)
    secs = [h["sec"] for h in res.history]
    params = sum(p.numel() for p in res.model.parameters())
    return {"threads": torch.get_num_threads(), "s_per_iter_clip3": [round(s, 1) for s in secs],
            "params_M": round(params / 1e6, 1),
            "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_MiB": round(rss0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--r50", action="store_true", help="also time one R50 training iteration (minutes on a CPU)")
    ap.add_argument("--skip-scale", action="store_true")
    a = ap.parse_args()
    report: dict = {"load_before": os.getloadavg(), "cpus": os.cpu_count()}
    if not a.skip_scale:
        tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
        try:
            report["train"] = [_train(tmp, "p1t2", 1, 2, a.iters), _train(tmp, "p1t1", 1, 1, a.iters),
                               _train(tmp, "p2t1", 2, 1, a.iters)]
            root = tmp / "evalset" / "nuscenes"  # the eval tests' small set (test/helpers/eval_data.py)
            synthesize(SynthConfig(seed=3, scenes=2, keyframes=8, width=160, height=90, beams=8, azimuth_steps=180,
                                   objects=12), out=str(root))
            report["eval"] = [_eval(root, tmp, 1), _eval(root, tmp, 2), _eval(root, tmp, 2, 1)]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if a.r50:
        report["r50_cpu_step"] = _r50_step()
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
