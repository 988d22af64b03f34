"""``sparse-perception demo`` (``make demo``): the whole system on a small synthetic bag.

1. generates (or reuses) a synthetic scene as a ROS 2 bag (``sparse-perception synth``);
2. starts the perception node with the fused CPU preset ``tiny_fusion`` (``--preset tiny`` for
   cameras only; the bundled model, or random weights where none is bundled: the node says
   which) and a recorder of its outputs, each its own process;
3. plays the bag over DDS, then stops everything;
4. prints a summary (frames, objects and tracks per frame, agreement with the bag's ground
   truth, latency percentiles per stage) and writes a picture: a bird's-eye view with ground truth and detections, and the front camera
   with the detected boxes projected.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from sparse_perception_ros.paths import config_file
from sparse_perception_ros.processes import start_captured, stop_process
from sparse_perception_ros.ros.graph import wait_for_endpoints

__all__ = ["add_arguments", "run", "summarize_recording"]

OBJECTS = "/perception/output/objects"
LATENCY = "/perception/output/latency"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sparse_perception_ros.cli", *args]


def _ensure_bag(workdir: Path, scenes: int, keyframes: int, seed: int, width: int = 440, height: int = 248) -> Path:
    bags = workdir / f"bags_s{seed}_k{keyframes}_{width}x{height}"
    if not bags.exists():
        print(f"demo: generating a synthetic scene ({keyframes} keyframes) into {bags}", flush=True)
        subprocess.run(_cli("synth", "--bag-out", str(bags), "--scenes", str(scenes), "--keyframes", str(keyframes),
                            "--seed", str(seed), "--width", str(width), "--height", str(height)), check=True)
    found = sorted(p for p in bags.iterdir() if p.is_dir())
    if not found:
        raise FileNotFoundError(f"no bag folder inside {bags}")
    return found[0]


def summarize_recording(recording: Path) -> dict:
    """Frames, objects, tracks and per-stage latency percentiles from a recorded output bag."""
    import numpy as np  # lazy: numpy and the data room, keeps the CLI quick (only the demo's summary needs them)

    from sparse_perception_ros.data import bagio

    objects, latency = [], {}
    reader = bagio.open_reader(recording)
    try:
        wanted = [c for c in reader.connections if c.topic in (OBJECTS, LATENCY)]
        for conn, _, raw in bagio.iter_messages(reader, wanted):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == OBJECTS:
                objects.append(msg)
            else:
                for kv in msg.status[0].values:
                    latency.setdefault(kv.key, []).append(float(kv.value))
    finally:
        reader.close()
    per_frame = [len(m.detections) for m in objects]
    seen: dict[str, int] = {}
    for m in objects:
        for d in m.detections:
            seen[d.id] = seen.get(d.id, 0) + 1
    return {
        "frames": len(objects),
        "objects_per_frame": float(np.mean(per_frame)) if per_frame else 0.0,
        "tracks": len(seen),
        "tracks_3plus_frames": sum(1 for n in seen.values() if n >= 3),
        "latency_ms": {k: {q: float(np.percentile(v, p)) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))}
                       for k, v in latency.items()},
        "messages": objects,
    }


DEMO_PRESET = "tiny_fusion"  # the demo's model unless --preset or the params file names one


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=str(Path.home() / ".cache" / "sparse_perception_ros" / "demo"),
                        help="where the synthetic bag is generated and reused")
    parser.add_argument("--out", default="demo_output", help="folder for the recording, summary and picture")
    parser.add_argument("--keyframes", type=int, default=12, help="keyframes (2 Hz) in the synthetic scene")
    parser.add_argument("--seed", type=int, default=7, help="scene seed (the bundled models were trained on seed 1)")
    parser.add_argument("--preset", default=None,
                        help=f"model preset: {DEMO_PRESET} (cameras + LiDAR, default) or tiny (cameras only); "
                             "overrides a --params-file's model.preset")
    parser.add_argument("--image-size", type=int, nargs=2, default=(440, 248), metavar=("W", "H"),
                        help="rendered camera size (the bundled models were trained on 440x248)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback rate")
    parser.add_argument("--params-file", default="", help="node parameters (default: the CPU preset)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the node to come up")


def node_parameters(params_file: str | None, preset: str | None) -> dict:
    """The node's full parameter tree for the demo: the package's file, the user's ``params_file`` over it
    (it may name a single parameter), then the demo's changes: JPEG input (the synthetic bags) and the
    model preset: ``preset`` (``--preset``) if given, else the params file's ``model.preset`` if it
    names one, else :data:`DEMO_PRESET`."""
    from sparse_perception_ros.params import load_params, user_parameters  # lazy: keeps the CLI quick

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return list(value) if isinstance(value, tuple) else value

    tree = plain(asdict(load_params(params_file or None)))
    tree["cameras"]["compressed"] = True  # the synthetic bags carry JPEG
    if preset is not None:
        tree["model"]["preset"] = preset
    elif not params_file or "model.preset" not in user_parameters(params_file):
        tree["model"]["preset"] = DEMO_PRESET
    return tree


def run(args: argparse.Namespace) -> int:
    import yaml  # lazy: yaml costs ~13 ms, keeps the CLI quick

    t_start = time.monotonic()
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(config_file("fastdds_large_data.xml")))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bag = _ensure_bag(Path(args.workdir), 1, args.keyframes, args.seed, *args.image_size)

    node_params = node_parameters(args.params_file, args.preset)
    params = {"/**": {"ros__parameters": node_params}}
    from sparse_perception_ros.runtime.loading import bundled_weights_path  # lazy: torch, keeps the CLI quick

    untrained = not node_params["model"]["checkpoint"] and bundled_weights_path(node_params["model"]["preset"]) is None
    if untrained:  # random weights score below any sensible threshold: show their (meaningless) top boxes
        node_params["output"]["score_threshold"] = 0.0
        node_params["output"]["max_detections"] = 10
        print("demo: NO TRAINED MODEL IS BUNDLED YET: the node runs random weights and its boxes are noise "
              "(shown to exercise the whole path: sync, TF, tracking ids, outputs, picture)", flush=True)
    params_file = out / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    recording = out / "recording"
    if recording.exists():
        shutil.rmtree(recording)

    print(f"demo: starting the perception node ({node_params['model']['preset']}) and a recorder; bag {bag}",
          flush=True)
    node = start_captured(_cli("launch", "perception", "--params-file", str(params_file)))
    recorder = start_captured(_cli("record", "--out", str(recording), OBJECTS, LATENCY,
                                   "/perception/output/markers"))
    try:
        wait_for_endpoints(publishers=(OBJECTS,), subscribers=("/lidar_top/points",), timeout_s=args.timeout,
                           what="the perception node")
        print("demo: node is up; playing the bag", flush=True)
        player = start_captured(_cli("play", str(bag), "--rate", str(args.rate)))
        try:
            player.wait(timeout=600)
        finally:
            player_log = stop_process(player)
        if player.returncode != 0:
            print(player_log, file=sys.stderr)
            raise RuntimeError(f"the player failed with status {player.returncode}")
        time.sleep(1.5)  # let the last frames through
    finally:
        rec_log = stop_process(recorder)
        node_log = stop_process(node, timeout_s=15.0)
    (out / "node.log").write_text(node_log)
    (out / "recorder.log").write_text(rec_log)
    weights_note = next((line.split("]: ", 1)[-1] for line in node_log.splitlines() if "model " in line), "")

    summary = summarize_recording(recording)
    from sparse_perception_ros.cli.demo_picture import draw_demo_picture, gt_agreement  # lazy: matplotlib, cv2

    picture = draw_demo_picture(bag, summary["messages"], out / "demo.png")
    report = {k: v for k, v in summary.items() if k != "messages"}
    report["ground_truth"] = gt_agreement(bag, summary["messages"])
    report["model"] = weights_note
    report["seconds"] = round(time.monotonic() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(report, indent=2))

    print(f"\ndemo summary ({report['seconds']} s in all)")
    print(f"  model:   {weights_note}")
    print(f"  frames:  {report['frames']} Detection3DArray messages recorded")
    print(f"  objects: {report['objects_per_frame']:.1f} per frame; {report['tracks']} track ids, "
          f"{report['tracks_3plus_frames']} seen in 3+ frames")
    gt = report["ground_truth"]
    print(f"  vs GT:   {gt['frames']} frames; {100 * gt['recall']:.0f} % of objects within "
          f"{gt['max_range_m']:.0f} m have a detection within {gt['radius_m']:.0f} m (precision "
          f"{100 * gt['precision']:.0f} %, same class {100 * gt['class_agreement']:.0f} %); "
          f"{gt['tracks_following']} track ids followed one object for 3+ frames")
    if gt.get("moving_matched"):
        print(f"  motion:  {gt['moving_matched']} detections of objects moving > 1 m/s: "
              f"{100 * gt['velocity_direction']:.0f} % with a velocity within 45 degrees of the truth, "
              f"mean error {gt['velocity_error']:.2f} m/s")
    for stage in ("assemble", "convert", "preprocess", "lidar", "handoff", "infer", "decode", "publish"):
        q = report["latency_ms"].get(stage)
        if q:
            print(f"  latency {stage:<10} p50 {q['p50']:7.1f} ms   p90 {q['p90']:7.1f} ms   p99 {q['p99']:7.1f} ms")
    print(f"  picture: {picture}")
    print(f"  files:   {out}/ (recording/, summary.json, node.log)")
    return 0 if report["frames"] > 0 else 1
