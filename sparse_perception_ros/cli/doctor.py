"""``sparse-perception doctor``: report truthfully what this environment has.

Every probe catches its own failure and reports the reason instead of crashing, so the doctor
is useful precisely when something is broken. Nothing here imports rclpy at module import time.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
from pathlib import Path

from sparse_perception_ros import __version__

__all__ = ["collect", "interface_type_hash", "add_arguments", "run"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def interface_share_dir(package: str) -> Path:
    """The ``share/<package>`` folder of an installed ROS interface package.

    Uses ament_index when AMENT_PREFIX_PATH knows the package, otherwise the install prefix of
    the imported Python module (``<prefix>/lib/pythonX.Y/site-packages/<package>``).
    """
    try:
        from ament_index_python.packages import get_package_share_directory  # lazy: probed; ROS may be absent

        return Path(get_package_share_directory(package))
    except Exception:  # noqa: BLE001 - fall back to the module location below
        module = importlib.import_module(package)
        prefix = Path(module.__file__).resolve().parents[4]
        return prefix / "share" / package


def interface_type_hash(package: str, kind: str, type_name: str) -> str:
    """RIHS01 type hash of ``package/kind/type_name`` as the build generated it (share/.../<Type>.json)."""
    desc = interface_share_dir(package) / kind / f"{type_name}.json"
    data = json.loads(desc.read_text())
    full = f"{package}/{kind}/{type_name}"
    for entry in data["type_hashes"]:
        if entry["type_name"] == full:
            return entry["hash_string"]
    raise KeyError(f"{full} not found in {desc}")


def _ros() -> dict[str, str]:
    info: dict[str, str] = {}
    rclpy_dist = _version("ros-rclpy")
    distro = os.environ.get("ROS_DISTRO")
    if distro:
        info["ROS distro"] = f"{distro} (system install, ROS_DISTRO)"
    elif rclpy_dist:
        info["ROS distro"] = f"kilted (PyPI wheels, ros-rclpy {rclpy_dist})"
    try:
        import rclpy  # noqa: F401  # lazy: probed; ROS may be absent or broken
        from rclpy.utilities import get_rmw_implementation_identifier

        info["rclpy"] = "importable"
        info["rmw"] = get_rmw_implementation_identifier()
    except Exception as exc:  # noqa: BLE001
        info.setdefault("ROS distro", "not available")
        info["rclpy"] = f"not available ({_reason(exc)})"
        info["rmw"] = "not available"
    info["RMW_IMPLEMENTATION"] = os.environ.get("RMW_IMPLEMENTATION", "(unset: rmw_fastrtps_cpp default)")
    info["FastDDS profile"] = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "(unset: FastDDS defaults)")
    for package, kind, type_name in (("vision_msgs", "msg", "Detection3DArray"), ("tf2_msgs", "msg", "TFMessage")):
        key = f"{package}/{type_name} hash"
        try:
            share = interface_share_dir(package)
            origin = "ours, built into the venv" if (share / ".built_by_sparse_perception").exists() else "system"
            info[key] = f"{interface_type_hash(package, kind, type_name)} ({origin})"
        except Exception as exc:  # noqa: BLE001
            info[key] = f"not available ({_reason(exc)})"
    return info


def _ml() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        import torch  # lazy: probed (may be absent or broken); heavy, keeps the CLI quick

        info["torch"] = f"{torch.__version__} (threads {torch.get_num_threads()})"
        if torch.cuda.is_available():
            info["GPU"] = f"yes: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
        else:
            why = "CPU-only torch build" if torch.version.cuda is None else "no CUDA driver or device"
            info["GPU"] = f"no ({why})"
    except Exception as exc:  # noqa: BLE001
        info["torch"] = f"not available ({_reason(exc)})"
        info["GPU"] = "unknown (torch not importable)"
    try:
        import onnxruntime as ort  # lazy: optional dependency, probed

        info["onnxruntime"] = f"{ort.__version__} (providers: {', '.join(ort.get_available_providers())})"
    except Exception as exc:  # noqa: BLE001
        info["onnxruntime"] = f"not available ({_reason(exc)})"
    try:
        import tensorrt as trt  # lazy: optional dependency (GPU only), probed

        info["TensorRT"] = f"yes: {trt.__version__}"
    except Exception as exc:  # noqa: BLE001
        info["TensorRT"] = f"not available ({_reason(exc)})"
    triton = _version("triton")
    info["triton"] = triton if triton else "not installed"
    info["nvcc"] = shutil.which("nvcc") or "not on PATH"
    for dist in ("numpy", "opencv-python-headless", "onnx", "rosbags", "mcap", "nuscenes-devkit"):
        info[dist] = _version(dist) or "not installed"
    return info


def collect() -> dict[str, dict[str, str]]:
    """All probes, grouped: ``{"system": {...}, "ros": {...}, "ml": {...}}``."""
    system = {
        "sparse_perception_ros": __version__,
        "python": f"{platform.python_version()} ({platform.machine()})",
        "cpu cores": str(os.cpu_count()),
    }
    return {"system": system, "ros": _ros(), "ml": _ml()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of text")


def run(args: argparse.Namespace) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    width = max(len(k) for group in report.values() for k in group)
    for group, entries in report.items():
        print(f"[{group}]")
        for key, value in entries.items():
            print(f"  {key:<{width}}  {value}")
    return 0
