"""Synthetic data generation speed and bag throughput.

    .venv/bin/python bench/bench_synth.py [--scenes 10] [--keyframes 40] [--width 320 --height 180]
                                          [--workers 2] [--no-play] [--keep DIR]

1. ``synth``: scenes -> nuScenes-format root and one MCAP bag per scene in the same pass (rendering
   in ``--workers`` processes); wall time, keyframes/s and sensor frames/s.
2. ``to-bag``: the nuScenes root -> bags again through nuscenes-devkit (read + write throughput).
3. Read every message of every bag as raw CDR with rosbags (read throughput).
4. ``play`` of one bag at ``--rate 1000`` with no subscriber (how fast the player can publish).

Prints one Markdown table; the numbers depend on the machine's load (see RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sparse_perception_ros.data import bagio
from sparse_perception_ros.data.generator import SynthConfig
from sparse_perception_ros.data.synth import synthesize
from sparse_perception_ros.data.to_bag import convert


def _cpu() -> float:
    """User + system CPU seconds of this process and its waited-for children (the render workers)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _read_all(bags: list[Path]) -> tuple[int, int]:
    n = nbytes = 0
    for b in bags:
        reader = bagio.open_reader(b)
        try:
            for _c, _t, raw in bagio.iter_messages(reader):
                n += 1
                nbytes += len(raw)
        finally:
            reader.close()
    return n, nbytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=10)
    p.add_argument("--keyframes", type=int, default=40)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=180)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-play", action="store_true", help="skip the player measurement")
    p.add_argument("--keep", help="write into this folder and keep it (default: a temp folder, removed)")
    args = p.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_synth_"))
    rows = []
    load0 = " ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        cfg = SynthConfig(scenes=args.scenes, keyframes=args.keyframes, width=args.width, height=args.height)
        per_key = int(cfg.camera_hz / cfg.keyframe_hz) * 6 + int(cfg.lidar_hz / cfg.keyframe_hz)
        frames = cfg.scenes * cfg.keyframes * per_key
        t0, c0 = time.perf_counter(), _cpu()
        res = synthesize(cfg, out=str(base / "nuscenes"), bag_out=str(base / "bags"), workers=args.workers,
                         overwrite=True)
        dt, cpu = time.perf_counter() - t0, _cpu() - c0
        msgs = sum(b["messages"] for b in res["bags"])
        rows.append((f"synth {cfg.scenes}x{cfg.keyframes} kf, {cfg.width}x{cfg.height}, {args.workers} workers "
                     "(nuScenes + bags)", f"{dt:.1f} s wall, {cpu:.0f} CPU-s",
                     f"{cfg.scenes * cfg.keyframes / dt:.1f} keyframes/s, {frames / dt:.0f} sensor frames/s, "
                     f"nuScenes {_size(base / 'nuscenes') / 1e6:.0f} MB, bags {_size(base / 'bags') / 1e6:.0f} MB"))
        t0, c0 = time.perf_counter(), _cpu()
        conv = convert(str(base / "nuscenes"), str(base / "bags2"), overwrite=True)
        dt, cpu = time.perf_counter() - t0, _cpu() - c0
        mb = _size(base / "bags2") / 1e6
        n2 = sum(s["messages"] for s in conv)
        rows.append(("to-bag (devkit read + MCAP write)", f"{dt:.1f} s wall, {cpu:.0f} CPU-s", f"{n2 / dt:.0f} msg/s, {mb / dt:.1f} MB/s"))
        bags = sorted((base / "bags").iterdir())
        t0 = time.perf_counter()
        n, nbytes = _read_all(bags)
        dt = time.perf_counter() - t0
        assert n == msgs, (n, msgs)
        rows.append(("read all bags, raw CDR (rosbags)", f"{dt:.1f} s", f"{n / dt:.0f} msg/s, {nbytes / 1e6 / dt:.0f} MB/s"))
        if not args.no_play:
            env = dict(os.environ, ROS_DOMAIN_ID=os.environ.get("ROS_DOMAIN_ID", "91"))
            cnt = sum(c.msgcount for c in _connections(bags[0]))
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "play", str(bags[0]), "--rate",
                                "1000", "--wait", "0", "--linger", "0"], env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
            rows.append(("play one bag at --rate 1000, no subscriber (incl. start-up)", f"{dt:.1f} s",
                         f"{cnt / dt:.0f} msg/s"))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"load average before: {load0}")
    print("| step | time | throughput |\n| --- | ---: | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


def _connections(bag: Path):
    reader = bagio.open_reader(bag)
    try:
        return list(reader.connections)
    finally:
        reader.close()


if __name__ == "__main__":
    main()
