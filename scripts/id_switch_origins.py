"""Where a model's track id switches come from (models/README.md, *One object tracked twice*).

Runs the node's pipeline offline over ``--dataroot`` (every LiDAR sweep with ``--sensor-rate``, as
``eval --offline --sensor-rate``; else the keyframes), keeps every frame's tracks (the re-association's
memory: each published id's world position, before the duplicate suppression), matches the ground
truth at the keyframes (same class, centres within 2 m, boxes scoring at least ``--min-score``,
closest first) and lists each matched object's id changes from one keyframe to the next. Each change
``A -> B`` is classed by what the frames between show:

- ``one object, two tracks``: in the frame before ``B`` was first published on the object, ``B`` and
  ``A`` were both published within the narrower footprint width of each other (one object carried
  two tracks, and ``B`` took over);
- ``A lost first``: ``A`` was no longer published when ``B`` appeared (a gap the re-association did
  not bridge);
- ``other``: everything else (``B`` on the object all along, ``A`` elsewhere, ...).

Choose settings on validation sets only. Usage::

    .venv/bin/python scripts/id_switch_origins.py --dataroot data/val_s3_full/root --sensor-rate \\
        [--params-file F] [--preset tiny_fusion] [--min-score 0.3]
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np

from sparse_perception_ros.classes import CLASS_NAMES
from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
from sparse_perception_ros.eval.offline import _ref_of, build_pipeline, pipeline_frames
from sparse_perception_ros.params import load_params
from sparse_perception_ros.paths import config_file
from sparse_perception_ros.runtime.pipeline import PipelineState

TRACKED = {"car", "truck", "bus", "trailer", "motorcycle", "bicycle", "pedestrian"}  # the tracking classes


def record(nusc, samples, pipeline, sensor_rate: bool) -> list[dict]:
    """Per frame, in time order: ``token`` (keyframe) or "", the published ``ids``/``xy``/``labels``/
    ``scores`` (world frame, after suppression) and the tracks' memory ``track_ids``/``track_xy``/``width``."""
    if sensor_rate:
        frames = ((ref, frame) for frame, token in pipeline_frames(nusc, samples, pipeline)
                  for ref in [_ref_of(samples, token, frame)])
    else:
        from sparse_perception_ros.eval.dataset import load_frame
        frames = ((ref, load_frame(nusc, ref.token, sweeps=pipeline.sweeps)) for ref in samples)
    state, scene, out = PipelineState.empty(), None, []
    for ref, frame in frames:
        if ref.scene_name != scene:
            state, scene = PipelineState.empty(next_track_id=state.temporal.next_track_id), ref.scene_name
        det, state = pipeline.step(frame, state)
        T = np.asarray(frame.T_world_from_model, np.float64)
        mem = state.tracks
        out.append(dict(scene=scene, token=ref.token, ids=det.track_ids.copy(), labels=det.labels.copy(),
                        scores=det.scores.copy(), xy=(det.boxes[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3])[:, :2],
                        track_ids=mem.ids.copy(), track_xy=mem.xy.copy(),
                        width=mem.width.copy() if mem.width is not None else np.zeros(len(mem.ids))))
    return out


def keyframe_sequences(nusc, rec: list[dict], min_score: float) -> dict:
    """(instance token, class) -> [(frame index, published id or None)] over the keyframes."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    seq = defaultdict(list)
    for i, r in enumerate(rec):
        if not r["token"]:
            continue
        gts = []
        for a in nusc.get("sample", r["token"])["anns"]:
            ann = nusc.get("sample_annotation", a)
            name = category_to_detection_name(ann["category_name"])
            if name in TRACKED:
                gts.append((ann["instance_token"], name, np.array(ann["translation"][:2])))
        pairs = sorted((float(np.linalg.norm(r["xy"][j] - c)), g, j) for g, (_, n, c) in enumerate(gts)
                       for j in range(len(r["ids"]))
                       if r["scores"][j] >= min_score and CLASS_NAMES[r["labels"][j]] == n
                       and np.linalg.norm(r["xy"][j] - c) < 2.0)
        match, used = {}, set()
        for _, g, j in pairs:
            if g not in match and j not in used:
                match[g] = j
                used.add(j)
        for g, (inst, n, _) in enumerate(gts):
            seq[(inst, n)].append((i, int(r["ids"][match[g]]) if g in match else None))
    return seq


def _one_object(frame: dict, a: int, b: int) -> bool:
    """Whether tracks ``a`` and ``b``, both in ``frame``, lie closer than the narrower footprint width."""
    ids = list(frame["track_ids"])
    ia, ib = ids.index(a), ids.index(b)
    return float(np.linalg.norm(frame["track_xy"][ia] - frame["track_xy"][ib])) < min(frame["width"][ia],
                                                                                       frame["width"][ib])


def classify(rec: list[dict], k0: int, k1: int, a: int, b: int) -> str:
    """The class of the change ``a -> b`` between keyframe frames ``k0`` and ``k1`` (module doc)."""
    first = next((k for k in range(k0 + 1, k1 + 1) if b in rec[k]["track_ids"]), None)
    if first is None:
        return "other"
    prev = rec[first - 1]
    if a not in prev["track_ids"]:
        return "A lost first"
    if b in prev["track_ids"]:
        return "one object, two tracks" if _one_object(prev, a, b) else "other"
    # B appeared in this frame: a new instance took B's id (a track lost earlier) next to A
    cur = rec[first]
    if a in cur["track_ids"] and _one_object(cur, a, b):
        return "one object, two tracks"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataroot", required=True)
    ap.add_argument("--params-file", default=str(config_file("perception.param.yaml")))
    ap.add_argument("--preset", default="tiny_fusion")
    ap.add_argument("--sensor-rate", action="store_true", help="every LiDAR sweep (else the keyframes)")
    ap.add_argument("--min-score", type=float, default=0.3, help="boxes matched to the ground truth score at least this")
    args = ap.parse_args()
    params = load_params(args.params_file)
    params = replace(params, model=replace(params.model, preset=args.preset),
                     output=replace(params.output, score_threshold=0.05))
    pipeline, note = build_pipeline(params)
    nusc = open_nuscenes(args.dataroot)
    rec = record(nusc, select_samples(nusc), pipeline, args.sensor_rate)
    counts, per_class = Counter(), Counter()
    for (_, name), seq in keyframe_sequences(nusc, rec, args.min_score).items():
        last = None
        for i, pid in seq:
            if pid is None:
                continue
            if last is not None and pid != last[1]:
                kind = classify(rec, last[0], i, last[1], pid)
                counts[kind] += 1
                per_class[(name, kind)] += 1
            last = (i, pid)
    print(f"{note}; {len(rec)} frames, id changes of matched objects between keyframes: {sum(counts.values())}")
    for kind, n in counts.most_common():
        print(f"  {n:4d}  {kind}")
    for (name, kind), n in sorted(per_class.items()):
        print(f"        {name:12s} {kind:24s} {n}")


if __name__ == "__main__":
    main()
