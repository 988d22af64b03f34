"""Perception node benchmarks on a synthetic bag, over real DDS (node, player and this probe: 3 processes).

    .venv/bin/python bench/bench_node.py latency  [--rate 0.5]      # glue overhead vs model time
    .venv/bin/python bench/bench_node.py soak     [--frames 2000]   # memory and latency over time
    .venv/bin/python bench/bench_node.py overload [--factor 2]      # bag at 2x the sustainable rate
    .venv/bin/python bench/bench_node.py realtime [--preset tiny_fusion]  # 440x248 bag at 1.0x, default params

``realtime`` (issue 21's acceptance) plays a 440x248 synthetic bag (20 Hz LiDAR, 12 Hz cameras) at
1.0x into the node with the shipped parameters and the given preset (the fused preset triggers on
the LiDAR, the camera preset on the front camera), and reports the share of triggers that produced
an output and the trigger-arrival -> publish latency (assemble + convert + model + publish) p50 /
p99, with the machine's load average.

All three use the shipped parameters' CPU preset (``tiny``, which loads the bundled camera-only
model ``models/tiny.pt``) on a generated 320x180 scene, with ``output.score_threshold`` 0 so that
up to ``output.max_detections`` boxes are published per frame whatever the weights score, and
read the node's own per-frame measurements from ``~/output/latency`` and its counters from
``/diagnostics``. (The node numbers in bench/RESULTS.md were measured before a model was bundled,
with random weights; the model's cost does not depend on the weights.)

Definitions: *model* = preprocess + infer + decode (``Pipeline.step``); *glue* = everything the
node adds around it: assemble (trigger arrival -> worker start), convert (messages -> arrays, TF)
and publish (messages out). Glue fraction = glue / (glue + model), per frame, median.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor

from sparse_perception_ros.data import bagio
from sparse_perception_ros.launch_manifest import node_set
from sparse_perception_ros.paths import config_file
from sparse_perception_ros.processes import start_captured, stop_process
from sparse_perception_ros.ros.launcher import command_line

MODEL = ("preprocess", "lidar", "infer", "decode")  # lidar: the LiDAR branch run ahead (model.lidar_features)
GLUE = ("assemble", "convert", "handoff", "publish")  # handoff: prepared -> worker start


def make_bag(workdir: Path, keyframes: int, seed: int = 3, size: tuple[int, int] = (320, 180)) -> Path:
    out = workdir / f"bench_bags_{keyframes}_{seed}" if size == (320, 180) else \
        workdir / f"bench_bags_{keyframes}_{seed}_{size[0]}x{size[1]}"
    if not out.exists():
        subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "synth", "--bag-out", str(out), "--scenes",
                        "1", "--keyframes", str(keyframes), "--seed", str(seed), "--width", str(size[0]), "--height",
                        str(size[1])], check=True, capture_output=True)
    return sorted(p for p in out.iterdir() if p.is_dir())[0]


class Probe:
    """Collects the node's latency messages and diagnostics counters in this process."""

    def __init__(self):
        self.rclpy = rclpy
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("bench_probe", context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.frames: list[tuple[float, dict[str, float]]] = []
        self.counts: dict[str, int] = {}
        self.node.create_subscription(DiagnosticArray, "/perception/output/latency", self._on_latency, 100)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_latency(self, msg):
        self.frames.append((time.monotonic(), {kv.key: float(kv.value) for kv in msg.status[0].values}))

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.endswith("pipeline"):
                self.counts = {kv.key: int(kv.value) for kv in st.values if not kv.key.startswith("latency")}

    def spin(self, seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for_node(self, timeout: float = 120.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.node.count_publishers("/perception/output/objects") and \
                    self.node.count_subscribers("/lidar_top/points"):
                return
            self.spin(0.2)
        raise TimeoutError("node did not come up")

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.ctx)


START_FRAMES = 3  # realtime: frames reported apart as the stream start (all of them still count in p99)


def start_node(tmp: Path, realtime_preset: str | None = None, backend: str | None = None,
               overrides: list[str] = ()) -> subprocess.Popen:
    """The node with the shipped parameters; for the stage benchmarks every box is published (score
    threshold 0, at most 30); ``realtime_preset``: the shipped output settings and this preset;
    ``overrides``: ``group.name=value`` (YAML value) set last."""
    doc = yaml.safe_load(config_file("perception.param.yaml").read_text())
    p = doc["/**"]["ros__parameters"]
    p["cameras"]["compressed"] = True  # the synthetic bags carry JPEG CompressedImage
    if realtime_preset is None:
        p["output"]["score_threshold"] = 0.0  # publish whatever the weights score, so publishing costs something
        p["output"]["max_detections"] = 30
    else:
        p["model"]["preset"] = realtime_preset
        if backend:
            p["model"]["backend"] = backend
        if realtime_preset != "tiny_fusion":
            p["sync"]["trigger"] = p["cameras"]["names"][0]  # a camera-only model runs at the front camera's rate
    p["output"]["force_processing"] = True  # the probe only listens to latency and diagnostics
    for item in overrides:
        *groups, name = item.split("=", 1)[0].split(".")
        value, where = item.split("=", 1)[1], p[groups[0]] if groups else p  # group.name or a top-level name
        if len(groups) > 1 or not isinstance(where, dict) or name not in where:
            raise SystemExit(f"--param {item}: no parameter {item.split('=', 1)[0]}")
        where[name] = yaml.safe_load(value)
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(doc))
    (spec,) = node_set("perception", str(params))
    return start_captured(command_line(spec))


def bag_seconds(bag: Path) -> float:
    """The bag's duration (first to last message), seconds."""
    reader = bagio.open_reader(bag)
    try:
        return reader.duration * 1e-9
    finally:
        reader.close()


def topic_counts(bag: Path) -> dict[str, int]:
    """Messages per topic in ``bag`` (from its index)."""
    reader = bagio.open_reader(bag)
    try:
        return {c.topic: c.msgcount for c in reader.connections}
    finally:
        reader.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far per OS thread name of process ``pid`` (the node names its
    own threads: sp_prepare, sp_worker, sp_image_feat; DDS and the executor keep theirs)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            comm = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[comm] = out.get(comm, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_table(before: dict[str, float], after: dict[str, float], seconds: float, player_s: float) -> str:
    """Cores used per thread name over the ``seconds`` the bag lasts (``player_s``: the player's CPU
    seconds); CPU spent while waiting for the player to start counts too (little: the node idles)."""
    used = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    rows = [f"  CPU per second of the {seconds:.1f} s bag, in cores (1.0 = one core busy): node "
            f"{sum(used.values()) / seconds:.2f}, player {player_s / seconds:.2f}"]
    for name, v in sorted(used.items(), key=lambda kv: -kv[1]):
        if v / seconds >= 0.01:
            rows.append(f"    {name:<16} {v / seconds:.2f}")
    return "\n".join(rows)


def stage_table(frames) -> str:
    rows = []
    for stage in (*GLUE, *MODEL):
        v = np.array([f[stage] for _, f in frames if stage in f])
        if v.size:
            rows.append(f"  {stage:<10} p50 {np.percentile(v, 50):7.1f}  p90 {np.percentile(v, 90):7.1f}  "
                        f"p99 {np.percentile(v, 99):7.1f} ms")
    return "\n".join(rows)


def glue_fraction(frames) -> np.ndarray:
    out = []
    for _, f in frames:
        glue = sum(f.get(k, 0.0) for k in GLUE)
        model = sum(f.get(k, 0.0) for k in MODEL)
        out.append(glue / max(glue + model, 1e-9))
    return np.asarray(out)


def play(bag: Path, rate: float, loop: bool = False, wait_s: float = 0.0) -> subprocess.Popen:
    """The bag player; ``wait_s`` > 0: it starts once every topic has a subscriber (at most that long),
    so no message is lost to DDS discovery (``realtime`` counts every trigger of the bag)."""
    args = [sys.executable, "-m", "sparse_perception_ros.cli", "play", str(bag), "--rate", str(rate),
            "--wait", str(wait_s)]
    return start_captured(args + (["--loop"] if loop else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("latency", "soak", "overload", "realtime"))
    parser.add_argument("--preset", default="tiny_fusion", help="realtime: model preset (tiny_fusion or tiny)")
    parser.add_argument("--dump", type=Path, default=None,
                        help="realtime: write every frame's stage times (ms) to this JSON file")
    parser.add_argument("--backend", default=None, help="realtime: model.backend instead of the shipped one")
    parser.add_argument("--param", action="append", default=[], metavar="[GROUP.]NAME=VALUE",
                        help="realtime: override one node parameter (repeatable), e.g. model.image_features=in_step")
    parser.add_argument("--rate", type=float, default=0.5, help="latency: playback rate (sustainable)")
    parser.add_argument("--frames", type=int, default=2000, help="soak: frames to push through the node")
    parser.add_argument("--factor", type=float, default=2.0, help="overload: times the sustainable frame rate")
    parser.add_argument("--keyframes", type=int, default=20, help="keyframes in the generated scene")
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(config_file("fastdds_large_data.xml")))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    workdir = Path.home() / ".cache" / "sparse_perception_ros"
    realtime = args.mode == "realtime"
    bag = make_bag(workdir, args.keyframes, size=(440, 248) if realtime else (320, 180))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node(Path(tmp), args.preset if realtime else None, args.backend, args.param)
        probe = Probe()
        try:
            probe.wait_for_node()
            if args.mode == "latency":
                player = play(bag, args.rate)
                while player.poll() is None:
                    probe.spin(0.5)
                probe.spin(2.0)
                frames = probe.frames[3:]  # skip warm-up
                if not frames:
                    raise RuntimeError(f"no frames from the node; counters {probe.counts}; player: "
                                       f"{stop_process(player)[-2000:]}; node: {stop_process(node)[-3000:]}")
                g = glue_fraction(frames)
                print(f"latency on {len(frames)} frames (bag at {args.rate}x, node idle between frames)")
                print(stage_table(frames))
                print(f"  glue fraction of (glue + model): median {np.median(g) * 100:.1f} %, "
                      f"p90 {np.percentile(g, 90) * 100:.1f} %")
            elif realtime:
                probe.spin(3.0)  # the node's warm-up settles before the bag starts
                before, n0 = dict(probe.counts), len(probe.frames)
                cpu_before = thread_cpu_s(node.pid)
                player = play(bag, 1.0, wait_s=10.0)  # starts once the node has discovered the player
                player_cpu = 0.0
                while player.poll() is None:
                    with contextlib.suppress(OSError):
                        player_cpu = sum(thread_cpu_s(player.pid).values())
                    probe.spin(0.5)
                cpu_after = thread_cpu_s(node.pid)
                probe.spin(3.0)
                frames = probe.frames[n0:]
                c = probe.counts
                topics = topic_counts(bag)
                trigger = "/lidar_top/points" if args.preset == "tiny_fusion" else "/cam_front/image/compressed"
                triggers = topics.get(trigger) or topics.get(trigger.replace("/compressed", ""), 0)
                published = c.get("frames_published", 0) - before.get("frames_published", 0)
                skipped = c.get("frames_skipped", 0) - before.get("frames_skipped", 0)
                e2e = np.array([sum(f.get(k, 0.0) for k in (*GLUE, *MODEL)) for _, f in frames])
                print(f"realtime: {args.preset} ({args.backend or 'shipped backend'}{''.join(', ' + a for a in args.param)}), bag {bag.name} (440x248, 20 Hz LiDAR, 12 Hz cameras) at 1.0x, "
                      f"shipped parameters; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after "
                      f"on {os.cpu_count()} cores")
                older = c.get("sync/older_ready_images", 0) - before.get("sync/older_ready_images", 0)
                print(f"  triggers in the bag ({trigger}): {triggers}; frames published {published} "
                      f"({100.0 * published / max(triggers, 1):.1f} %), skipped {skipped}; cameras that gave an "
                      f"older image with ready features (sync.prefer_ready_images) {older}")
                if len(e2e):
                    print(f"  trigger arrival -> publish: p50 {np.percentile(e2e, 50):.1f} ms, "
                          f"p99 {np.percentile(e2e, 99):.1f} ms, max {e2e.max():.1f} ms over {len(e2e)} frames")
                if len(e2e) > START_FRAMES:  # the stream start: first sweep and every camera's first image at once
                    print(f"  of which the first {START_FRAMES} (stream start): "
                          f"{', '.join(f'{v:.0f}' for v in e2e[:START_FRAMES])} ms; the rest: "
                          f"p99 {np.percentile(e2e[START_FRAMES:], 99):.1f} ms")
                print(stage_table(frames))
                if args.dump:
                    args.dump.write_text(json.dumps([f for _, f in frames]))
                print(cpu_table(cpu_before, cpu_after, bag_seconds(bag), player_cpu))
            elif args.mode == "soak":
                player = play(bag, 1.0, loop=True)
                t0, samples = time.monotonic(), []
                while len(probe.frames) < args.frames:
                    probe.spin(5.0)
                    samples.append((time.monotonic() - t0, len(probe.frames), rss_mb(node.pid)))
                    print(f"  t={samples[-1][0]:6.0f} s  frames={samples[-1][1]:5d}  rss={samples[-1][2]:7.1f} MB",
                          flush=True)
                stop_process(player)
                warm = [s for s in samples if s[1] >= 200] or samples
                growth = (warm[-1][2] - warm[0][2]) / warm[0][2] * 100
                lat = np.array([f["infer"] + f["preprocess"] for _, f in probe.frames])
                q = len(lat) // 4
                print(f"soak: {len(probe.frames)} frames in {samples[-1][0]:.0f} s; RSS after warm-up "
                      f"{warm[0][2]:.1f} -> {warm[-1][2]:.1f} MB ({growth:+.2f} %)")
                print("  model latency p50 by quarter: " + ", ".join(
                    f"{np.percentile(lat[i * q:(i + 1) * q], 50):.1f}" for i in range(4)) + " ms")
            else:
                # measure the sustainable frame rate first, then play the sweeps at `factor` times it
                player = play(bag, 0.25)
                while player.poll() is None:
                    probe.spin(0.5)
                probe.spin(1.0)
                model_ms = np.median([sum(f.get(k, 0.0) for k in MODEL) for _, f in probe.frames[3:]])
                before = dict(probe.counts)
                n0 = len(probe.frames)
                sustainable_hz = 1000.0 / model_ms
                rate = args.factor * sustainable_hz / 20.0  # the bag's LiDAR (trigger) runs at 20 Hz
                player = play(bag, rate)
                while player.poll() is None:
                    probe.spin(0.5)
                probe.spin(3.0)
                frames = probe.frames[n0:]
                c = probe.counts
                assembled = c.get("sync/frames", 0) - before.get("sync/frames", 0)
                published = c.get("frames_published", 0) - before.get("frames_published", 0)
                skipped = c.get("frames_skipped", 0) - before.get("frames_skipped", 0)
                e2e = np.array([sum(f.get(k, 0.0) for k in (*GLUE, *MODEL)) for _, f in frames])
                bound = 1.5 * (model_ms + 1000.0 / (args.factor * sustainable_hz))
                print(f"overload: model {model_ms:.1f} ms -> sustainable {sustainable_hz:.1f} Hz; "
                      f"bag at {rate:.2f}x = {args.factor:.1f}x that")
                print(f"  frames assembled {assembled}, published {published}, skipped {skipped} "
                      f"(assembled - published = {assembled - published})")
                print(f"  in-node latency p50 {np.percentile(e2e, 50):.1f} ms, p99 {np.percentile(e2e, 99):.1f} ms "
                      f"(bound 1.5 x (model + one frame period) = {bound:.1f} ms)")
                print(stage_table(frames))
        finally:
            probe.close()
            stop_process(node, timeout_s=15)


if __name__ == "__main__":
    main()
