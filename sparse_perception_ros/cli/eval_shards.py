"""``sparse-perception eval --jobs N``: the replays of one evaluation run as N processes at once.

The selected keyframes are cut into N shards of whole scenes (contiguous in scene order, balanced
by keyframe count: a scene's temporal state never crosses a shard). Each shard is one process
(``python -m sparse_perception_ros.cli.eval_shards SPEC``) with its own log, ``work/shard_K/log.txt``:

- ``--offline``: it runs ``Pipeline.step`` over its scenes (:func:`~sparse_perception_ros.eval.offline.run_offline`);
- ROS mode: it replays its scenes' bags, each through its own node, player and recorder
  (:func:`~sparse_perception_ros.cli.eval_ros.run_ros`), in its own DDS domain: ``ROS_DOMAIN_ID`` = base + K (base: the
  environment's ``ROS_DOMAIN_ID``, else 0), so the shards' nodes never see each other's topics.

Each shard writes its per-keyframe results as JSON; the parent merges them in scene order into
one submission that the devkit scores once. Offline track ids are made the same as a sequential
run's (which carries the next free id from scene to scene) by offsetting each shard's ids by the
ids the shards before it used; ROS mode starts a fresh node per bag either way. A shard that
fails stops the run: the other shards are stopped, the failed shard's log is copied next to the
report folder (``<out>.shard-K.log``) and named in the error, and no score is written.

Threads: a shard runs with the environment's torch thread count, as the sequential run does, so
the merged submission is byte-identical to ``--jobs 1`` (tested). ``--job-threads T`` sets
``OMP_NUM_THREADS=T`` in each shard (and its nodes) to avoid oversubscribing the cores; torch's CPU
kernels may then round float32 differently (measured on the test set: NDS differed by 3e-8).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sparse_perception_ros.cli import eval_ros

__all__ = ["run_sharded", "main"]

DOMAIN_LIMIT = 233  # DDS domain ids 0..232 (FastDDS port arithmetic)


def _write_progress(path: Path, done: int, total: int, unit: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"done": done, "total": total, "unit": unit}))
    tmp.replace(path)


def _run_shard(spec: dict) -> None:
    """One shard, in this process: results (JSON) to ``spec['result']``."""
    from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples  # lazy: torch and the devkit
    from sparse_perception_ros.eval.ground_truth import DEBUG_BACKEND, gt_table
    from sparse_perception_ros.eval.offline import build_pipeline, run_offline
    from sparse_perception_ros.eval.settings import node_overrides, resolve_params
    from sparse_perception_ros.eval.shards import result_row

    args = argparse.Namespace(**spec["args"])
    params, params_file, threshold, _ = resolve_params(args)
    backend = args.backend or params.model.backend
    nusc = open_nuscenes(args.dataroot, args.version)
    keep = set(spec["tokens"])
    samples = [s for s in select_samples(nusc, args.scenes, args.max_samples) if s.token in keep]
    table = gt_table(nusc, samples) if backend == DEBUG_BACKEND else None
    progress = Path(spec["progress"])
    work = Path(spec["work"])
    if args.offline:
        pipeline, note = build_pipeline(params, backend if args.backend else None, table)
        count = [0]

        def tick(n: int = 1) -> None:
            count[0] += n
            if count[0] % 5 == 0 or count[0] == len(samples):
                _write_progress(progress, count[0], len(samples), "frame")

        final: list = []
        results = run_offline(nusc, samples, pipeline, progress=tick, final_state=final,
                              sensor_rate=getattr(args, "sensor_rate", False))
        timings = [r.timings_ms for r in results]
        next_id = int(final[0].temporal.next_track_id) if final else 0
    else:
        results, timings, note = eval_ros.run_ros(spec["bags"], samples, params_file, backend if args.backend else None,
                                         table, work, rate=args.rate, quiet=True, preset=args.preset,
                                         node_overrides=node_overrides(args, threshold),
                                         progress=lambda done, total: _write_progress(progress, done, total, "bag"))
        next_id = 0  # a fresh node per bag: ids never carry between bags
    Path(spec["result"]).write_text(json.dumps({"note": note, "next_track_id": next_id, "timings": timings,
                                                "results": [result_row(r) for r in results]}))


def main(argv: list[str] | None = None) -> int:
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    _run_shard(spec)
    return 0


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)  # the shard's own session: its launcher's nodes too
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def run_sharded(args: argparse.Namespace, samples, jobs: int, work: Path, report_out: Path,
                bags: list[str] | None = None):
    """Run the shards and merge them: ``(results, timings, note)`` as the sequential path gives
    (results in ``samples`` order). Raises RuntimeError naming the log of a failed shard."""
    from sparse_perception_ros.eval.shards import plan_shards, result_from_row  # lazy: numpy, keeps the CLI quick

    shards = plan_shards(samples, jobs)
    work.mkdir(parents=True, exist_ok=True)
    base = int(os.environ.get("ROS_DOMAIN_ID", "0"))
    procs, dirs = [], []
    print(f"eval: {len(samples)} keyframes in {len(shards)} shard(s) of whole scenes: "
          + ", ".join(f"{len(s)}" for s in shards), file=sys.stderr)
    for k, shard in enumerate(shards):
        d = work / f"shard_{k}"
        d.mkdir(parents=True, exist_ok=True)
        spec = {"args": {**vars(args), "quiet": True}, "tokens": [s.token for s in shard], "bags": bags,
                "work": str(d), "result": str(d / "result.json"), "progress": str(d / "progress.json")}
        (d / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, ROS_DOMAIN_ID=str((base + k) % DOMAIN_LIMIT))
        if getattr(args, "job_threads", None):
            env["OMP_NUM_THREADS"] = str(args.job_threads)  # torch in the shard and in its nodes
        log = open(d / "log.txt", "wb")  # noqa: SIM115 - handed to the child
        procs.append(subprocess.Popen([sys.executable, "-m", "sparse_perception_ros.cli.eval_shards",
                                       str(d / "spec.json")], stdout=log, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))
        log.close()
        dirs.append(d)
    try:
        _watch(procs, dirs, shards, args.quiet, report_out)
    except BaseException:
        _stop(procs)
        raise
    results, timings, notes = [], [], []
    offset = 0
    counters: dict = {}
    for d in dirs:
        doc = json.loads((d / "result.json").read_text())
        results += [result_from_row(r, offset) for r in doc["results"]]
        timings += doc["timings"]
        notes.append(doc["note"])
        offset += int(doc["next_track_id"])
        if (d / "node_counters.json").is_file():
            counters.update(json.loads((d / "node_counters.json").read_text()))
    if not args.offline:
        (work / "node_counters.json").write_text(json.dumps(counters, indent=1))
    order = {s.token: i for i, s in enumerate(samples)}
    results.sort(key=lambda r: order[r.sample_token])
    return results, timings, f"{notes[0]} ({len(shards)} shards in parallel)"


def _watch(procs, dirs, shards, quiet: bool, report_out: Path) -> None:
    """Wait for every shard, showing per-shard progress; on the first failure stop all and raise."""
    from tqdm import tqdm  # lazy: tqdm costs ~35 ms, keeps the CLI quick

    tty = sys.stderr.isatty() and not quiet
    bars = [tqdm(total=len(s), desc=f"shard {k}", unit="frame", position=k, leave=False, disable=not tty,
                 file=sys.stderr) for k, s in enumerate(shards)]
    last_line = time.monotonic()
    try:
        while True:
            states = []
            for k, (p, d) in enumerate(zip(procs, dirs, strict=True)):
                rc = p.poll()
                if rc not in (None, 0) or (rc == 0 and not (d / "result.json").is_file()):
                    _stop(procs)
                    kept = report_out.with_name(f"{report_out.name}.shard-{k}.log")
                    shutil.copyfile(d / "log.txt", kept)
                    tail = (d / "log.txt").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"shard {k} failed (exit status {rc}); no score written; its log: {kept}\n"
                                       f"log tail:\n{tail}")
                prog = {}
                if (d / "progress.json").is_file():
                    try:
                        prog = json.loads((d / "progress.json").read_text())
                    except ValueError:  # caught mid-write by the shard: shown at the next poll
                        pass
                done = len(shards[k]) if rc == 0 else prog.get("done", 0)
                total = len(shards[k]) if rc == 0 or prog.get("unit") != "bag" else prog.get("total", 0)
                bars[k].total, bars[k].unit = total, prog.get("unit", "frame") if rc != 0 else "frame"
                bars[k].n = done
                bars[k].refresh()
                states.append((rc, done, total))
            if all(rc == 0 for rc, _, _ in states):
                break
            if not tty and not quiet and time.monotonic() - last_line > 30:
                last_line = time.monotonic()
                print("eval: shards " + "  ".join(f"{k}:{'done' if rc == 0 else f'{n}/{t}'}"
                                                  for k, (rc, n, t) in enumerate(states)), file=sys.stderr)
            time.sleep(0.5)
    finally:
        for b in bars:
            b.close()


if __name__ == "__main__":
    sys.exit(main())
