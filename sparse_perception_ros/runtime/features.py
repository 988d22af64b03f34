"""Image features computed apart from the step: one camera at a time, as its image arrives.

With the cameras at 12 Hz and the LiDAR at 20 Hz, most sweeps bring no new image, and each image
is used by one to three steps. Running the backbone + neck (about half of the fused step) inside
every step therefore repeats work and serialises it behind the trigger. Here it runs once per
image instead: :meth:`FeatureCache.add` (called by the node's image callback, in the executor
thread, i.e. on the other core while the worker runs the previous step) preprocesses the image
(resize, crop, normalise: :func:`~..model.preprocess.preprocess_images`, the same code) and runs the
backbone on it, and keeps each camera's maps in the DFA's flattened layout (``[sum_l H_l W_l, E]``,
made once per image here instead of in every step); the step then takes ``mc_ms_feat [1, N_cam *
sum HW, E]`` from the cache (:meth:`FeatureCache.features`), computing only what is missing.
Eval-mode BatchNorm makes each image independent, so per-camera features equal the batched
backbone's within float rounding
(``test/test_runtime_features.py`` states the tolerance): accuracy does not change.

Backbones: :class:`TorchCameraBackbone` (``Sparse4DModel.camera_features``) and
:class:`OrtCameraBackbone` (the backbone + neck exported once to ONNX, :func:`export_backbone_cached`,
or its int8 form: :func:`quantize_backbone`, made by ``sparse-perception bundle --int8-backbone`` and
stored next to the weights, ``model.image_precision``).
"""

from __future__ import annotations

import abc
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparse_perception_ros.model.preprocess import preprocess_images
from sparse_perception_ros.ops.deformable_aggregation import flatten_image_features
from sparse_perception_ros.runtime.export import export_onnx_cached, graph_digest, onnx_cache_dir
from sparse_perception_ros.runtime.os_thread import name_os_thread

__all__ = ["CameraBackbone", "TorchCameraBackbone", "OrtCameraBackbone", "export_backbone_cached", "FeatureCache",
           "quantize_backbone", "int8_vnni", "INT8_BACKBONE_SUFFIX"]

# The int8 backbone of ``models/x.pt`` is ``models/x.pt.int8_backbone.onnx`` (``bundle --int8-backbone``).
INT8_BACKBONE_SUFFIX = ".int8_backbone.onnx"


class CameraBackbone(abc.ABC):
    """``run(img [n, 3, H, W] float32 normalised) -> [4 maps [n, E, H/s, W/s]]`` CPU torch tensors."""

    name = "backbone"

    @abc.abstractmethod
    def run(self, img: torch.Tensor) -> list[torch.Tensor]: ...


class TorchCameraBackbone(CameraBackbone):
    """The full model's ``img_backbone`` + ``img_neck`` in eager torch (thread-safe: no state)."""

    name = "torch"

    def __init__(self, model: nn.Module):
        self.model = model

    @torch.no_grad()
    def run(self, img: torch.Tensor) -> list[torch.Tensor]:
        return [f.float() for f in self.model.camera_features(img)]


class _BackboneGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.img_backbone, self.img_neck = model.img_backbone, model.img_neck

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.img_neck(self.img_backbone(img)))


def export_backbone_cached(model: nn.Module, cache_dir: str | Path | None = None) -> Path:
    """Export ``model``'s backbone + neck for one image ``img [1, 3, H, W]`` -> ``feat_l0..3`` once into
    ``cache_dir`` (default ``~/.cache/sparse_perception_ros/onnx``), keyed by preset and weights hash."""
    w, h = model.cfg.input_wh
    path = onnx_cache_dir(cache_dir) / f"{model.cfg.name}_camera_backbone_{graph_digest(model)}.onnx"
    return export_onnx_cached(_BackboneGraph(model), (torch.zeros(1, 3, h, w),), path, ["img"],
                              [f"feat_l{i}" for i in range(4)])


def quantize_backbone(fp32_path: str | Path, out: str | Path, images: list[np.ndarray], input_wh: tuple[int, int],
                      resize_method: str = "pil_bicubic") -> dict:
    """Static int8 of the exported backbone + neck (:func:`export_backbone_cached`'s file) with ONNX
    Runtime: QDQ format, int8 weights per output channel, uint8 activations with MinMax ranges
    calibrated on ``images`` (``(H, W, 3) uint8`` RGB camera images, preprocessed as the node does).
    Writes ``out``; returns what was done (for the weights' sidecar). Runs 1.9-2x the fp32 graph per
    image on an AVX-512 VNNI CPU (bench/RESULTS.md); its accuracy cost is measured per set of weights."""
    from onnxruntime.quantization import (  # lazy: optional dependency, used only when making the file
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not images:
        raise ValueError("quantize_backbone needs calibration images")
    tensors = []
    for image in images:
        img, _, _ = preprocess_images([image], np.eye(4)[None], input_wh=input_wh, channel_order="rgb",
                                      method=resize_method)
        tensors.append(np.ascontiguousarray(img[0].numpy()))

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(tensors)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"img": x}

    out = Path(out)
    pre = out.with_name(f".{out.name}.{os.getpid()}.pre.onnx")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        tmp.replace(out)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return {"format": "QDQ, int8 weights per channel, uint8 activations (MinMax)", "calibration_images": len(images)}


_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True where :func:`quantize_backbone`'s files run as calibrated: every non-x86 CPU, and x86
    CPUs with VNNI (AVX-512 VNNI, AVX-VNNI or AMX). Without VNNI, ONNX Runtime's x86 kernels for
    uint8 activations x int8 weights (u8s8, the files' format) add pairs of products in 16 bits
    and can saturate: a random-weights backbone's first FPN level came out 25 % off (relative RMS)
    on an AVX2-only AMD EPYC, under 15 % with VNNI (ONNX Runtime's quantization docs advise 7-bit
    weights, ``reduce_range``, for such CPUs). The bundled fused model's held-out accuracy with its
    int8 backbone on that EPYC stayed within 0.01 of fp32 (models/README.md), so ``auto`` keeps int8
    there and the start-up note says it. An x86 CPU whose flags cannot be read counts as without."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in _VNNI_FLAGS)


class OrtCameraBackbone(CameraBackbone):
    """ONNX Runtime on :func:`export_backbone_cached`'s file, one image per call (``num_threads`` intra-op)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, num_threads: int | None = None):
        import onnxruntime as ort  # lazy: optional dependency (ONNX Runtime backbone only)

        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def run(self, img: torch.Tensor) -> list[torch.Tensor]:
        x = img.detach().cpu().numpy()
        per_image = [self.session.run(None, {"img": np.ascontiguousarray(x[i:i + 1])}) for i in range(len(x))]
        return [torch.from_numpy(np.concatenate([maps[lvl] for maps in per_image])) for lvl in range(4)]


class FeatureCache:
    """Per-camera image features keyed by ``(camera index, image stamp)``, filled as images arrive.

    ``add(cam, stamp_ns, image)`` preprocesses one ``(H, W, 3) uint8`` RGB image exactly as the step
    would and runs ``backbone`` on it, in the calling thread. ``submit`` hands the same work to the
    cache's own thread and returns at once (the node's image callbacks: the ROS executor must stay
    free for /tf and the sweeps); per camera only the newest waiting image is kept, so a backlog
    cannot grow. ``features(images, stamps_ns, present)`` returns the frame's
    ``mc_ms_feat [1, N_cam * sum_l H_l W_l, E]`` (the DFA's layout, one camera's rows after another):
    cached features where the image's stamp is known, the thread's result where it is computing that
    image now, the rest computed in one batch in the caller (taken off the thread's queue), and the
    features of a blank image for masked cameras.
    ``keep`` images per camera are remembered (a trigger may use an image older than the newest).
    ``hits`` / ``misses`` count the cameras served from the cache (or the thread) / computed in the step.
    """

    def __init__(self, backbone: CameraBackbone, num_cams: int, input_wh: tuple[int, int],
                 resize_method: str = "pil_bicubic", keep: int = 3, num_threads: int = 0):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.backbone, self.num_cams, self.input_wh = backbone, int(num_cams), tuple(input_wh)
        self.resize_method, self.keep, self.num_threads = resize_method, int(keep), int(num_threads)
        self._cv = threading.Condition()  # guards everything below; notified on submit, result and close
        self._maps: list[OrderedDict[tuple, torch.Tensor]] = [OrderedDict() for _ in range(self.num_cams)]  # [1, L, E]
        self._queued: dict[int, tuple[tuple, np.ndarray]] = {}  # camera -> (key, image) waiting for the thread
        self._busy: tuple[int, tuple] | None = None  # (camera, key) the thread is computing
        self._thread: threading.Thread | None = None
        self._running = True
        self._blank: torch.Tensor | None = None
        self.hits = 0
        self.misses = 0

    def _compute(self, images: list[np.ndarray]) -> torch.Tensor:
        """``n`` images -> their features ``[n, sum_l H_l W_l, E]`` (flattened layout)."""
        img, _, _ = preprocess_images(images, np.tile(np.eye(4), (len(images), 1, 1)), input_wh=self.input_wh,
                                      channel_order="rgb", method=self.resize_method)
        return flatten_image_features(self.backbone.run(img[0]))

    def _check(self, cam: int) -> None:
        if not 0 <= cam < self.num_cams:
            raise ValueError(f"camera index {cam} outside 0..{self.num_cams - 1}")

    def add(self, cam: int, stamp_ns: int, image: np.ndarray) -> None:
        """Compute (now, in this thread) and remember camera ``cam``'s image stamped ``stamp_ns``."""
        self._check(cam)
        key = (int(stamp_ns), image.shape)
        with self._cv:
            if key in self._maps[cam]:
                return
        self._store(cam, key, self._compute([image]))

    def submit(self, cam: int, stamp_ns: int, image: np.ndarray) -> None:
        """:meth:`add` on the cache's thread (started on first use); returns at once."""
        self._check(cam)
        key = (int(stamp_ns), image.shape)
        with self._cv:
            if not self._running or key in self._maps[cam] or self._busy == (cam, key):
                return
            self._queued[cam] = (key, image)  # a newer image replaces one still waiting
            self._start_locked()
            self._cv.notify_all()

    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="image_features", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        name_os_thread("sp_image_feat")
        if self.num_threads > 0:
            torch.set_num_threads(self.num_threads)  # per thread in torch
        while True:
            with self._cv:
                while self._running and not self._queued:
                    self._cv.wait()
                if not self._running:
                    return
                cam = min(self._queued, key=lambda c: self._queued[c][0][0])  # the oldest stamp first
                key, image = self._queued.pop(cam)
                self._busy = (cam, key)
            try:
                maps = self._compute([image])
            except Exception:  # noqa: BLE001 - the step computes it itself; a bad image is refused there
                maps = None
            with self._cv:
                if maps is not None:
                    self._store_locked(cam, key, maps)
                self._busy = None
                self._cv.notify_all()

    def _store(self, cam: int, key: tuple, maps: torch.Tensor) -> None:
        with self._cv:
            self._store_locked(cam, key, maps)

    def _store_locked(self, cam: int, key: tuple, maps: torch.Tensor) -> None:
        memory = self._maps[cam]
        memory[key] = maps
        while len(memory) > self.keep:
            memory.popitem(last=False)

    def _blank_maps(self) -> torch.Tensor:
        if self._blank is None:
            w, h = self.input_wh
            self._blank = self._compute([np.zeros((h, w, 3), np.uint8)])
        return self._blank

    def features(self, images: list[np.ndarray | None], stamps_ns, present: np.ndarray) -> torch.Tensor:
        """``N_cam`` images (None / ``present`` False: masked), their stamps (None or -1: unknown, not
        cached) -> ``mc_ms_feat [1, N_cam * sum_l H_l W_l, E]``.

        What is missing is computed here, one image at a time, sharing the work with the cache's thread:
        images never submitted join the thread's line (a camera with an image already waiting keeps
        that one), and this caller takes the frame's images that wait in the line while the thread goes
        on with the one it is computing and the next, so a burst (the stream start: six images and the
        first sweep at once) uses both cores instead of one."""
        per_cam: list[torch.Tensor | None] = [None] * self.num_cams
        keys: list[tuple | None] = [None] * self.num_cams
        needed = []
        for c in range(self.num_cams):
            if not present[c] or images[c] is None:
                continue
            stamp = -1 if stamps_ns is None else int(stamps_ns[c])
            keys[c] = (stamp, images[c].shape) if stamp >= 0 else None
            needed.append(c)
        with self._cv:  # images never submitted (e.g. they came before their camera's calibration): the thread helps
            missing = sum(1 for c in needed if keys[c] is None or (keys[c] not in self._maps[c]
                                                                  and self._busy != (c, keys[c])))
            for c in needed:
                key = keys[c]
                if (key is not None and self._running and key not in self._maps[c] and self._busy != (c, key)
                        and c not in self._queued):
                    self._queued[c] = (key, images[c])
            if self._queued and self._running:
                self._start_locked()
                self._cv.notify_all()
        while True:
            with self._cv:
                for c in needed:
                    if per_cam[c] is None and keys[c] is not None:
                        per_cam[c] = self._maps[c].get(keys[c])
                waiting = [c for c in needed if per_cam[c] is None]
                if not waiting:
                    break
                mine = next((c for c in waiting if keys[c] is None or self._busy != (c, keys[c])), None)
                if mine is None:  # every missing one is on the thread now: wait for it
                    busy = self._busy
                    self._cv.wait_for(lambda b=busy: self._busy != b or not self._running, timeout=5.0)
                    if self._busy == busy:  # the thread is stuck or closing: compute it here
                        mine = waiting[0]
                    else:
                        continue
                if keys[mine] is not None and mine in self._queued and self._queued[mine][0] == keys[mine]:
                    del self._queued[mine]  # taken from the thread's line
            maps = self._compute([images[mine]])
            per_cam[mine] = maps
            if keys[mine] is not None:
                self._store(mine, keys[mine], maps)
        self.hits += self.num_cams - missing  # ready or in flight when asked (masked cameras count as hits)
        self.misses += missing  # neither: computed now, here or by the thread
        if any(m is None for m in per_cam):
            blank = self._blank_maps()
            per_cam = [blank if m is None else m for m in per_cam]
        flat = torch.cat(per_cam)  # [N_cam, L, E]: one copy, the only per-step work on the features
        return flat.reshape(1, -1, flat.shape[-1])

    def image_state(self, cam: int, stamp_ns: int) -> str:
        """Where camera ``cam``'s image stamped ``stamp_ns`` stands: ``"ready"`` (its features are cached
        or being computed now), ``"behind"`` (waiting on the thread behind at least two other images:
        the thread is not keeping up) or ``"unknown"`` (not submitted, or next in line)."""
        stamp = int(stamp_ns)
        with self._cv:
            if any(key[0] == stamp for key in self._maps[cam]) or (
                    self._busy is not None and self._busy[0] == cam and self._busy[1][0] == stamp):
                return "ready"
            queued = self._queued.get(cam)
            if queued is None or queued[0][0] != stamp:
                return "unknown"
            ahead = (self._busy is not None) + sum(1 for c, (key, _) in self._queued.items()
                                                   if c != cam and key[0] <= stamp)
            return "behind" if ahead >= 2 else "unknown"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the thread has nothing waiting or in progress; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._queued and self._busy is None, timeout)

    def clear(self) -> None:
        """Forget every camera's features and waiting images (the blank image's stay)."""
        with self._cv:
            self._queued.clear()
            for memory in self._maps:
                memory.clear()

    def close(self) -> None:
        """Stop the thread (after the image it is computing); :meth:`submit` is then ignored."""
        with self._cv:
            self._running = False
            self._queued.clear()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
