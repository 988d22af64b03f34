"""``sparse-perception eval`` in ROS mode: each bag -> the real node (built-in launcher, ``replay`` node set) -> recorded outputs -> SampleResults.

Per bag, :func:`~sparse_perception_ros.ros.launcher.launch` starts the ``replay`` node set of
:mod:`~sparse_perception_ros.launch_manifest` (player + perception node + recorder, each in its
own process, same params file and remaps as ``launch/replay.launch.py``), with two changes:

- the player plays only the node's input topics, behind :mod:`~sparse_perception_ros.cli.replay_gate`,
  which starts it once the node (after loading its model) and the recorder have subscribed and
  the bag's static transforms have reached the node, so no keyframe is lost at start-up;
- the node runs with ``use_sim_time`` on the player's ``/clock``, so its sync and TF waits
  (``sync.wait_timeout``, ``sync.lidar_fallback_timeout``) are in bag time and a slowed replay (for
  a model slower than real time on this machine) syncs as the live system would, at any ``--rate``;
- with ``--backend debug_ground_truth`` the node process is
  :mod:`sparse_perception_ros.cli.gt_node` (the same PerceptionNode, configured with the GT
  passthrough); any other ``--backend`` is passed as ``-p model.backend:=...``.

When the player finishes, the launcher stops the node and the recorder (which then closes its
bag). The recorded ``/perception/output/objects`` messages are matched to sample tokens by
header stamp = the key LiDAR stamp in the bag's ``samples.json``; boxes go from the message frame
to the global frame (``odom`` in our bags) with the bag's own ``/tf`` + ``/tf_static``.
Latency comes from the node's own ``/perception/output/latency`` messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from sparse_perception_ros.classes import CLASS_NAMES as DETECTION_NAMES
from sparse_perception_ros.launch_manifest import node_set
from sparse_perception_ros.sensors import DEFAULT_TOPICS

__all__ = ["missing_output_warning", "replay_specs", "run_ros"]


# a ROS-mode run with more keyframes than this share scored empty warns (they were skipped, not missed)
MISSING_WARN_SHARE = 0.1


def missing_output_warning(missing: int, total: int) -> str | None:
    """The warning for a ROS-mode run where ``missing`` of ``total`` keyframes got no node output, or
    None when at most :data:`MISSING_WARN_SHARE` of them did."""
    if missing <= MISSING_WARN_SHARE * total:
        return None
    return (f"eval: warning: {missing} of {total} keyframes have no node output. The node keeps only the newest "
            "frame when it falls behind, so a bag with every LiDAR sweep (20 Hz triggers) replayed faster than the "
            "step loses keyframes; replay slower (e.g. --rate 0.2) or convert keyframes only (--no-sweeps)")


def replay_specs(bag: str, record_to: str, params_file: str, backend: str | None, gt_table_path: str | None,
                 rate: float = 1.0, wait_s: float = 120.0, compressed: bool | None = None, preset: str | None = None,
                 node_overrides: dict | None = None):
    """The ``replay`` node set for one bag, adjusted as the module docstring says (``compressed``: set
    ``cameras.compressed`` to the bag's image type; None leaves the params file's value)."""
    from sparse_perception_ros.data import bagio  # lazy: the data and eval rooms are heavy, keep the CLI quick
    from sparse_perception_ros.eval.ground_truth import DEBUG_BACKEND
    from sparse_perception_ros.eval.ros_mode import DIAGNOSTICS_TOPIC, LATENCY_TOPIC, OBJECTS_TOPIC

    specs = node_set("replay", params_file, bag=bag, record_to=record_to, rate=rate)
    inputs = sorted(set(DEFAULT_TOPICS.values())) + [bagio.TF_TOPIC, bagio.TF_STATIC_TOPIC]
    out = []
    for spec in specs:
        if spec.name == "bag_player":
            play_args = (*spec.arguments[1:], "--wait", "10", "--topics", *inputs)
            spec = replace(spec, module="sparse_perception_ros.cli.replay_gate",
                           arguments=("--bag", bag, "--inputs", *inputs, "--outputs", OBJECTS_TOPIC, LATENCY_TOPIC,
                                      "--timeout", str(wait_s), "--", *play_args))
        elif spec.name == "bag_recorder":
            spec = replace(spec, arguments=(*spec.arguments, DIAGNOSTICS_TOPIC))
        elif spec.name == "perception":
            if compressed is not None:
                spec = replace(spec, parameters={**spec.parameters, "cameras.compressed": bool(compressed)})
            if preset:
                spec = replace(spec, parameters={**spec.parameters, "model.preset": preset})
            if node_overrides:
                spec = replace(spec, parameters={**spec.parameters, **node_overrides})
            # on the player's /clock: the node's timeouts are in bag time at any --rate, none is rescaled
            spec = replace(spec, parameters={**spec.parameters, "use_sim_time": True})
            if backend == DEBUG_BACKEND:
                spec = replace(spec, module="sparse_perception_ros.cli.gt_node",
                               arguments=("--gt-table", str(gt_table_path)))
            elif backend:
                spec = replace(spec, parameters={**spec.parameters, "model.backend": backend})
        out.append(spec)
    return out


@contextlib.contextmanager
def _output_to(log_path: Path):
    """Send this process's (and so the children's) stdout/stderr to ``log_path``; yields the real stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    real_err = os.fdopen(os.dup(saved[1]), "w")
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield real_err
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            real_err.close()


def _bag_duration_s(bag: str) -> float:
    from sparse_perception_ros.data import bagio  # lazy: the data room is heavy, keeps the CLI quick

    reader = bagio.open_reader(bag)
    try:
        return max(0.0, (reader.end_time - reader.start_time) * 1e-9)
    finally:
        reader.close()


def run_ros(bags, samples, params_file: str, backend: str | None, gt_table, work: Path, rate: float = 1.0,
            quiet: bool = False, preset: str | None = None,
            node_overrides: dict | None = None,
            progress=None) -> tuple[list, list[dict[str, float]], str]:
    """Play every bag holding a selected sample through the node; returns results, latency rows, a note.
    ``progress(done, total)``: called after each bag (``eval --jobs``' per-shard progress)."""
    from tqdm import tqdm  # lazy: tqdm, numpy and the eval room are heavy, keep the CLI quick

    from sparse_perception_ros.eval.ground_truth import DEBUG_BACKEND, save_table
    from sparse_perception_ros.eval.ros_mode import (
        bag_images_compressed,
        match_outputs,
        read_outputs,
        read_samples_sidecar,
        read_tf,
    )
    from sparse_perception_ros.ros.launcher import launch

    work.mkdir(parents=True, exist_ok=True)
    wanted = {s.token for s in samples}
    table_path = None
    if backend == DEBUG_BACKEND:
        table_path = work / "gt_table.json"
        save_table(gt_table, table_path)
    chosen = []
    for bag in bags:
        side = read_samples_sidecar(bag)
        if wanted & {s["sample_token"] for s in side["samples"]}:
            chosen.append((str(bag), side))
    covered = set().union(*({s["sample_token"] for s in side["samples"]} for _, side in chosen)) if chosen else set()
    if wanted - covered:
        raise ValueError(f"{len(wanted - covered)} selected samples are in none of the bags (e.g. "
                         f"{sorted(wanted - covered)[0]}); pass the bags of every selected scene or use --scenes")
    results: list = []
    latency: list[dict[str, float]] = []
    missing = 0
    node_counters: dict[str, dict] = {}
    log = work / "launch.log"
    for i, (bag, side) in enumerate(chosen):
        rec = work / f"recording_{i}"
        specs = replay_specs(bag, str(rec), params_file, backend, table_path, rate,
                             compressed=bag_images_compressed(bag), preset=preset,
                             node_overrides=node_overrides)
        interrupted: list[int] = []

        def on_sigint(signum, frame, interrupted=interrupted):
            interrupted.append(signum)
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGINT, on_sigint)
        stop = threading.Event()
        try:
            with _output_to(log) as real_err:
                bar = tqdm(total=None, desc=f"replay {i + 1}/{len(chosen)} {side.get('scene_name', bag)} "
                           f"({_bag_duration_s(bag) / rate:.0f} s of bag)", unit="s",
                           disable=quiet or not real_err.isatty(), file=real_err, leave=False)

                def tick(bar=bar, stop=stop):
                    t0 = time.monotonic()
                    while not stop.wait(1.0):
                        bar.n = round(time.monotonic() - t0)
                        bar.refresh()

                ticker = threading.Thread(target=tick, daemon=True)
                ticker.start()
                status = launch(specs)
                stop.set()
                ticker.join()
                bar.close()
        finally:
            stop.set()
            signal.signal(signal.SIGINT, old)
        if interrupted:
            raise KeyboardInterrupt
        if status != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"replay of {bag} failed (exit status {status}); launch log tail:\n{tail}")
        if not rec.exists():
            raise RuntimeError(f"the recorder wrote nothing for {bag} (see {log})")
        outputs, lat, counters = read_outputs(rec, DETECTION_NAMES)
        latency += lat
        node_counters[side.get("scene_name", bag)] = counters
        res, miss = match_outputs(side, outputs, read_tf(bag), wanted)
        results += res
        missing += miss
        if progress is not None:
            progress(i + 1, len(chosen))
    if (warning := missing_output_warning(missing, len(wanted))) is not None:
        print(warning, file=sys.stderr)
    model_lines = [ln.split("]: ", 1)[1] for ln in log.read_text(errors="replace").splitlines()
                   if "[perception]: model " in ln]
    note = (f"{model_lines[-1] + '; ' if model_lines else ''}node backend {backend or 'from params file'}; "
            f"{len(chosen)} bag(s) replayed at rate {rate}; {missing} keyframe(s) without node output (scored empty)")
    if backend == DEBUG_BACKEND:
        note = "DEBUG backend debug_ground_truth (ground truth replayed as detections); " + note
    (work / "node_counters.json").write_text(json.dumps(node_counters, indent=1))
    order = {s.token: i for i, s in enumerate(samples)}
    results.sort(key=lambda r: order[r.sample_token])
    return results, latency, note
