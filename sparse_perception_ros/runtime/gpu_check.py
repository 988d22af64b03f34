"""One prepared GPU check: ``scripts/gpu_check.sh`` runs this (through ``cli/gpu_check.py``) on a lent GPU machine (see bench/RESULTS.md).

It needs only torch (2.11 or newer) and triton: no ROS, no pip, nothing from the network. Parts,
each under its own time cap inside one overall budget (default 420 s, so the script ends in under
8 minutes on an H100 with start-up included), each reported as ``ok``, ``skipped`` (with the
reason) or ``error`` (with the exception), never aborting the rest:

1. ``dfa``: the Triton deformable aggregation at the release size (6 cameras, levels 64x176 ..
   8x22, C = 256, 900 anchors x 13 points, 8 groups) against the torch reference on the CPU:
   max abs error (tolerance 1e-4) and p50/p99 GPU time (CUDA events), plus the CPU C kernel's time.
2. ``preprocess``: camera images (6 x 1600x900 uint8) to network input on the GPU
   (:func:`~..model.preprocess.preprocess_images_torch`: pinned upload, resize, normalise): time,
   and the difference to the same function on the CPU.
3. ``step``: the ``tiny`` (bundled weights, its own 352x128 input) and ``sparse4dv3_r50`` (random
   weights, 704x256) models, backbone + head, 6 cameras, over a synthetic drive of ``--frames``
   frames with the temporal state carried, in these variants of :class:`~.backends.TorchBackend`:
   eager fp32 (the reference for parity), CUDA-graph replay, CUDA graph under fp16 autocast, fp16
   and bf16 autocast (eager), and ``torch.compile``. Per variant: first-frame ms (capture /
   compile included), p50/p99 ms of the rest, max abs difference of the raw outputs
   (classification, prediction, quality) to eager fp32 on the first frame and over all frames,
   max difference of the sorted top-k scores, and on how many frames the kept detections are the
   same anchors. fp32 variants pass at 1e-3 on raw outputs over all frames; reduced precision is
   judged on the sorted scores (0.05), as DESIGN.md says (raw outputs diverge once a different
   anchor is carried to the next frame).

``--cpu-smoke`` runs the same code at a small size on the CPU (2 cameras, 3 frames, the C kernel
in place of Triton) with the modules the GPU machine lacks (ROS, PyYAML, Pillow, SciPy, ...) made
unimportable, so the suite proves the check imports and runs there; CUDA-only parts are reported
as skipped with the reason. Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``
(default ``$OUT``, else ``./gpu_check_out``) and prints the markdown. Exit status 1 when a part
raised, an fp32 variant failed its parity check or a ROS module got imported; reduced-precision
parity is reported (``parity`` FAIL) without failing the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Top-level modules the GPU machines do not have (or that would mean ROS leaked into the core).
# --cpu-smoke makes them unimportable before anything of the package is imported.
ABSENT_ON_GPU_MACHINE = ("rclpy", "rosbags", "mcap", "mcap_ros2", "ament_index_python", "rosidl_runtime_py",
                         "sensor_msgs", "vision_msgs", "tf2_msgs", "yaml", "jsonschema", "PIL", "scipy",
                         "sklearn", "matplotlib", "nuscenes", "pandas", "onnxruntime_extensions")
ROS_MODULES = ("rclpy", "rosbags", "ament_index_python", "sensor_msgs", "vision_msgs", "tf2_msgs")
LEVEL_HW = [(64, 176), (32, 88), (16, 44), (8, 22)]


def block_absent_modules(names=ABSENT_ON_GPU_MACHINE) -> None:
    """Make ``names`` unimportable in this process, as if not installed: ``import x`` raises
    ``ModuleNotFoundError`` and ``importlib.util.find_spec("x")`` is None (how torch probes
    optional packages). Call before anything imports them."""
    for name in names:
        if name in sys.modules and sys.modules[name] is not None:
            raise RuntimeError(f"{name} is already imported; block it before importing the package")
        sys.modules[name] = None


@dataclass
class Budget:
    """Overall deadline; ``left()`` seconds remain; ``allows(s)`` when a part needing ``s`` fits."""

    total_s: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.start)

    def allows(self, need_s: float) -> bool:
        return self.left() >= need_s


def _percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"p50_ms": None, "p99_ms": None}
    s = sorted(ms)
    p99 = s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]
    return {"p50_ms": round(statistics.median(s), 3), "p99_ms": round(p99, 3)}


# --------------------------------------------------------------------------------------- DFA
def check_dfa(device, smoke: bool, budget: Budget, repeats: int) -> dict:
    import torch  # lazy: after run_checks blocks the absent modules

    from sparse_perception_ros.ops import dfa_cpu  # lazy: as above
    from sparse_perception_ros.ops.deformable_aggregation import (  # lazy: as above
        deformable_aggregation,
        flatten_feature_maps,
    )

    cams, levels, c, a, p, g = (6, LEVEL_HW, 256, 900, 13, 8) if not smoke else (2, [(16, 44), (8, 22)], 32, 50, 13, 4)
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(1, cams, c, h, w, generator=gen) for h, w in levels]
    loc = torch.rand(1, a, p, cams, 2, generator=gen) * 1.2 - 0.1
    w = torch.randn(1, a, p * cams * len(levels), g, generator=gen).softmax(2).reshape(1, a, p, cams, len(levels), g)
    flat = flatten_feature_maps(maps)
    t0 = time.perf_counter()
    ref = deformable_aggregation(*flat, loc, w, impl="reference")
    out = {"size": {"cams": cams, "levels": [list(x) for x in levels], "channels": c, "anchors": a, "points": p,
                    "groups": g}, "cpu_reference_ms": round(1e3 * (time.perf_counter() - t0), 1)}
    if dfa_cpu.available():
        t0 = time.perf_counter()
        fast = dfa_cpu.deformable_aggregation_fast(*flat, loc, w)
        out["cpu_fast_ms"] = round(1e3 * (time.perf_counter() - t0), 1)
        out["cpu_fast_max_abs_err"] = float((fast - ref).abs().max())
    if device.type != "cuda":
        out.update(status="skipped", reason="no CUDA device: the Triton kernel runs on CUDA tensors only")
        return out
    from sparse_perception_ros.ops.dfa_triton import (  # lazy: after run_checks blocks the absent modules
        deformable_aggregation_triton,
        triton_available,
    )

    if not triton_available():
        out.update(status="skipped", reason="triton does not import")
        return out
    args = [t.to(device) for t in (*flat, loc, w)]
    t0 = time.perf_counter()
    got = deformable_aggregation_triton(*args)
    torch.cuda.synchronize(device)
    out["first_call_ms"] = round(1e3 * (time.perf_counter() - t0), 1)  # JIT compile included
    err = float((got.cpu() - ref).abs().max())
    times = []
    for _ in range(repeats):
        if not budget.allows(5):
            break
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        deformable_aggregation_triton(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    out.update(_percentiles(times), repeats=len(times), max_abs_err=err, tolerance=1e-4,
               status="ok" if err <= 1e-4 else "error", reason="" if err <= 1e-4 else f"max abs err {err:.3g} > 1e-4")
    return out


# ------------------------------------------------------------------------------- preprocessing
def check_preprocess(device, smoke: bool, repeats: int) -> dict:
    """``preprocess_images_torch`` on ``device`` (pinned upload, resize, normalise) for 6 (smoke: 2)
    1600x900 (smoke: 800x450) uint8 images to 704x256: p50/p99 ms and the max difference to the
    same function on the CPU (tolerance 1e-3; the PIL reference is compared in the test suite)."""
    import torch  # lazy: after run_checks blocks the absent modules

    from sparse_perception_ros.model.preprocess import preprocess_images_torch  # lazy: as above

    n, (h, w) = (2, (450, 800)) if smoke else (6, (900, 1600))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    proj = np.tile(np.eye(4), (n, 1, 1))
    cpu = preprocess_images_torch(images, proj, (704, 256), "rgb", device="cpu")[0]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        got = preprocess_images_torch(images, proj, (704, 256), "rgb", device=device)[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1e3 * (time.perf_counter() - t0))
    err = float((got.cpu() - cpu).abs().max())
    return {"images": f"{n} x {w}x{h} uint8 -> 704x256", "device": str(device), "max_abs_err_vs_cpu": err,
            "first_ms": round(times[0], 2), **_percentiles(times[1:]),
            "status": "ok" if err <= 1e-3 else "error", "reason": "" if err <= 1e-3 else f"differs from CPU by {err:.3g}"}


# -------------------------------------------------------------------------------------- steps
VARIANTS = ("eager fp32", "cuda graph fp32", "cuda graph fp16 autocast", "eager fp16 autocast",
            "eager bf16 autocast", "torch.compile fp32")


def _variant_settings(name: str):
    import torch  # lazy: after run_checks blocks the absent modules

    amp = torch.float16 if "fp16" in name else torch.bfloat16 if "bf16" in name else None
    return {"cuda_graph": name.startswith("cuda graph"), "compile": name.startswith("torch.compile"), "amp": amp}


def build_preset_model(preset: str, num_cams: int, device):
    """The full model of ``preset`` for ``num_cams`` cameras on ``device`` with its bundled weights
    when the package has them (else deterministic random weights, seed 0); returns (model, cfg, weights note)."""
    import torch  # lazy: after run_checks blocks the absent modules

    from sparse_perception_ros.model import build_model  # lazy: as above
    from sparse_perception_ros.model.config import get_preset, with_num_cams  # lazy: as above
    from sparse_perception_ros.paths import model_file  # lazy: as above

    cfg = with_num_cams(get_preset(preset), num_cams)
    torch.manual_seed(0)
    model = build_model(cfg)
    try:
        path = model_file(f"{preset}.pt")
    except FileNotFoundError:
        path = None
    note = "random (seed 0)"
    if path is not None:
        model.load_official_checkpoint(path)
        note = f"bundled {path.name}"
    return model.to(device).eval(), cfg, note


def run_sequence(stepper, frames, device, amp, time_cap_s: float) -> tuple[list, list[float], object]:
    """Drive ``frames`` through ``stepper`` with the state carried; per-frame outputs on the CPU,
    per-frame wall ms (device synchronised), final state. Stops early past ``time_cap_s``."""
    import torch  # lazy: after run_checks blocks the absent modules

    from sparse_perception_ros.model import TemporalState  # lazy: as above

    state, outs, ms = TemporalState.empty(), [], []
    t_start = time.perf_counter()
    ctx = (lambda: torch.autocast(device.type, dtype=amp, cache_enabled=False)) if amp else contextlib.nullcontext
    for f in frames:
        if outs and time.perf_counter() - t_start > time_cap_s:
            break
        t0 = time.perf_counter()
        with torch.no_grad(), ctx():
            out, state = stepper.step(f["img"], f["proj"], f["wh"], f["t"], f["pose"], state)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ms.append(1e3 * (time.perf_counter() - t0))
        outs.append({k: getattr(out, k).detach().float().cpu() if getattr(out, k).is_floating_point()
                     else getattr(out, k).cpu() for k in ("classification", "prediction", "quality", "scores")}
                    | {"det_index": state_index(stepper)})
    return outs, ms, state


def state_index(stepper):
    """The kept detections' anchor rows of the last run (``det_index``), from the backend's last outputs."""
    return getattr(stepper, "_last_det_index", None)


def parity(ref: list[dict], got: list[dict]) -> dict:
    import torch  # lazy: after run_checks blocks the absent modules

    n = min(len(ref), len(got))
    raw = ("classification", "prediction", "quality")
    first = max(float((got[0][k] - ref[0][k]).abs().max()) for k in raw) if n else None
    every = max(float((g[k] - r[k]).abs().max()) for g, r in zip(got[:n], ref[:n], strict=True) for k in raw) if n else None
    score = max(float((torch.sort(g["scores"], descending=True).values
                       - torch.sort(r["scores"], descending=True).values).abs().max())
                for g, r in zip(got[:n], ref[:n], strict=True)) if n else None
    same = sum(bool(torch.equal(g["det_index"], r["det_index"])) for g, r in zip(got[:n], ref[:n], strict=True)
               if g["det_index"] is not None and r["det_index"] is not None)
    return {"raw_max_abs_first": first, "raw_max_abs_all": every, "score_max_abs": score, "same_dets_frames": same,
            "frames_compared": n}


class _Recording:
    """Wraps a :class:`~.backends.Backend` and remembers the last ``det_index`` (for parity)."""

    def __init__(self, backend, owner):
        self._b, self._owner = backend, owner

    def __getattr__(self, name):
        return getattr(self._b, name)

    def run(self, inputs):
        out = self._b.run(inputs)
        self._owner._last_det_index = out["det_index"].detach().cpu() if hasattr(out["det_index"], "detach") else None
        return out


def check_steps(preset: str, device, smoke: bool, budget: Budget, num_frames: int, with_compile: bool,
                variants=VARIANTS, refs: dict | None = None) -> list[dict]:
    """Rows of the step table for ``preset``; ``refs`` keeps each preset's eager fp32 outputs
    between calls (a later call with only ``torch.compile`` compares against them)."""
    import torch  # lazy: after run_checks blocks the absent modules

    from sparse_perception_ros.runtime.backends import StepRunner, TorchBackend  # lazy: as above
    from sparse_perception_ros.runtime.example_inputs import synthetic_sequence  # lazy: as above

    rows = []
    num_cams = 2 if smoke else 6
    try:
        model, cfg, weights = build_preset_model(preset, num_cams, device)
    except Exception as exc:  # noqa: BLE001 - reported, the other parts go on
        return [{"preset": preset, "variant": "build", "status": "error", "reason": f"{type(exc).__name__}: {exc}"}]
    seq = synthetic_sequence(cfg, num_frames, with_backbone=True, seed=1)
    frames = [{"img": torch.from_numpy(f.images[0]).to(device), "proj": torch.from_numpy(f.projection_mat),
               "wh": torch.from_numpy(f.image_wh), "t": f.timestamp, "pose": np.asarray(f.T_world_from_model)}
              for f in seq]
    base = {"preset": preset, "weights": weights, "cams": num_cams, "input_wh": list(cfg.input_wh)}
    refs = {} if refs is None else refs
    ref = refs.get(preset)
    for name in variants:
        row = dict(base, variant=name)
        rows.append(row)
        st = _variant_settings(name)
        if device.type != "cuda" and st["cuda_graph"]:
            row.update(status="skipped", reason="no CUDA device (a CUDA graph needs one)")
            continue
        if st["compile"] and not with_compile:
            row.update(status="skipped", reason="torch.compile left out (--cpu-smoke without --with-compile)")
            continue
        cap = (150.0 if st["compile"] else 40.0) if not smoke else 20.0
        if not budget.allows(cap + 10):
            row.update(status="skipped", reason=f"time cap: {budget.left():.0f} s left of the budget, this part may take {cap:.0f} s")
            continue
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            backend = TorchBackend(model, cfg, device=device, compile=st["compile"], cuda_graph=st["cuda_graph"])
            runner = StepRunner(backend, cfg)
            runner.backend = _Recording(backend, runner)
            outs, ms, state = run_sequence(runner, frames, device, st["amp"], cap)
            row.update(mode=backend.mode, frames=len(ms), first_ms=round(ms[0], 2), **_percentiles(ms[1:]),
                       state_carried=bool(state.anchors is not None and len(ms) > 1), dfa=backend.dfa_impl)
            if device.type == "cuda":
                row["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
            if name == "eager fp32":
                ref = refs[preset] = outs
                row.update(status="ok", reason="reference for parity")
                continue
            if ref is None:
                row.update(status="skipped", reason="no eager fp32 reference to compare with")
                continue
            row.update(parity(ref, outs))
            if backend.cuda_graph_error:
                row.update(status="error", reason=f"CUDA graph capture failed: {backend.cuda_graph_error}")
            elif st["amp"] is None:
                ok = row["raw_max_abs_all"] <= 1e-3
                row.update(status="ok", parity="pass" if ok else "FAIL",
                           reason="" if ok else "fp32 raw outputs differ from eager by > 1e-3")
            else:
                ok = row["score_max_abs"] <= 0.05
                row.update(status="ok", parity="pass" if ok else "FAIL",
                           reason="" if ok else "reduced precision: scores differ from fp32 by > 0.05")
        except Exception as exc:  # noqa: BLE001 - reported, the other variants go on
            row.update(status="error", reason=f"{type(exc).__name__}: {str(exc)[:300]}")
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------ report
def environment(device) -> dict:
    import torch  # lazy: after run_checks blocks the absent modules

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": str(device), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    try:
        import triton  # lazy: optional dependency (GPU only)

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    env["ros_modules_imported"] = sorted(m for m, mod in sys.modules.items()
                                         if mod is not None and m.split(".")[0] in ROS_MODULES)
    return env


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-2 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def markdown(report: dict) -> str:
    env, dfa = report["environment"], report["dfa"]
    lines = [f"GPU check ({report['mode']}): {env.get('gpu', 'no GPU')} | torch {env['torch']} (CUDA {env['cuda']}) | "
             f"triton {env['triton']} | Python {env['python']} | {env['cpu_count']} CPUs | "
             f"{report['seconds']:.0f} s", ""]
    lines += ["| DFA | size | status | max abs err | p50 ms | p99 ms | first call ms | CPU reference ms | CPU C kernel ms |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    s = dfa.get("size", {})
    lines.append(f"| Triton | {s.get('cams')} cams, C {s.get('channels')}, {s.get('anchors')}x{s.get('points')} | "
                 f"{dfa.get('status')} {dfa.get('reason', '')} | {_fmt(dfa.get('max_abs_err'))} | {_fmt(dfa.get('p50_ms'))} | "
                 f"{_fmt(dfa.get('p99_ms'))} | {_fmt(dfa.get('first_call_ms'))} | {_fmt(dfa.get('cpu_reference_ms'))} | "
                 f"{_fmt(dfa.get('cpu_fast_ms'))} |")
    pre = report["preprocess"]
    lines += ["", "| preprocessing | device | status | max abs err vs CPU | first ms | p50 ms | p99 ms |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |",
              f"| {pre.get('images')} | {pre.get('device')} | {pre.get('status')} {pre.get('reason', '')} | "
              f"{_fmt(pre.get('max_abs_err_vs_cpu'))} | {_fmt(pre.get('first_ms'))} | {_fmt(pre.get('p50_ms'))} | "
              f"{_fmt(pre.get('p99_ms'))} |"]
    lines += ["", "| preset | variant | status | parity | first ms | p50 ms | p99 ms | frames | raw Δ frame 1 | raw Δ all | "
              "score Δ | same dets | peak MiB | note |",
              "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in report["steps"]:
        lines.append(
            f"| {r['preset']} ({r.get('cams', '?')}x{'x'.join(map(str, r.get('input_wh', [])[::-1]))}, {r.get('weights', '')}) "
            f"| {r['variant']} | {r['status']} | {r.get('parity', '-')} | {_fmt(r.get('first_ms'))} | {_fmt(r.get('p50_ms'))} | "
            f"{_fmt(r.get('p99_ms'))} | {_fmt(r.get('frames'))} | {_fmt(r.get('raw_max_abs_first'))} | "
            f"{_fmt(r.get('raw_max_abs_all'))} | {_fmt(r.get('score_max_abs'))} | "
            f"{_fmt(r.get('same_dets_frames'))}/{_fmt(r.get('frames_compared'))} | {_fmt(r.get('peak_mem_mib'))} | "
            f"{r.get('reason', '')} |")
    lines += ["", "Δ: max abs difference to eager fp32 on the same frames (state carried frame to frame); "
              "'same dets': frames whose kept detections are the same anchor rows. First ms includes CUDA-graph "
              "capture / compilation; p50/p99 over the other frames, host bookkeeping included."]
    return "\n".join(lines) + "\n"


def run_checks(out: str | Path, cpu_smoke: bool = False, with_compile: bool = False, budget_s: float = 420.0,
               frames: int | None = None, presets: str | None = None) -> int:
    """Run every part as the module docstring says, write ``gpu_check.json`` / ``.md`` into ``out``;
    the exit status (1 when a part raised, an fp32 variant failed parity or ROS got imported)."""
    if cpu_smoke:
        block_absent_modules()
    import torch  # lazy: imported only after the absent modules are blocked

    budget = Budget(budget_s)
    device = torch.device("cuda" if torch.cuda.is_available() and not cpu_smoke else "cpu")
    smoke = cpu_smoke or device.type != "cuda"
    presets = (presets or ("tiny" if smoke else "tiny,sparse4dv3_r50")).split(",")
    frames = frames or (3 if smoke else 30)
    report = {"mode": "cpu-smoke" if smoke else "gpu", "budget_s": budget_s}
    try:
        report["dfa"] = check_dfa(device, smoke, budget, repeats=5 if smoke else 100)
    except Exception as exc:  # noqa: BLE001 - reported
        report["dfa"] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    try:
        report["preprocess"] = check_preprocess(device, smoke, repeats=3 if smoke else 30)
    except Exception as exc:  # noqa: BLE001 - reported
        report["preprocess"] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    report["steps"], refs = [], {}
    fast_variants = tuple(v for v in VARIANTS if not v.startswith("torch.compile"))
    for preset in presets:  # everything but torch.compile first: compilation is the slow, risky part
        report["steps"] += check_steps(preset, device, smoke, budget, frames, with_compile, fast_variants, refs)
    for preset in presets:
        report["steps"] += check_steps(preset, device, smoke, budget, frames, with_compile,
                                       ("torch.compile fp32",), refs)
    report["environment"] = environment(device)
    report["seconds"] = round(time.perf_counter() - budget.start, 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    md = markdown(report)
    (out / "gpu_check.md").write_text(md)
    print(md)
    failed = [p for p in [report["dfa"], report["preprocess"], *report["steps"]] if p.get("status") == "error"
              or (p.get("parity") == "FAIL" and "fp32" in p.get("variant", ""))]
    if report["environment"]["ros_modules_imported"]:
        print(f"ROS modules were imported: {report['environment']['ros_modules_imported']}", file=sys.stderr)
        return 1
    return 1 if failed else 0

