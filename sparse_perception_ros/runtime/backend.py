"""The small graph interface every backend implements (:mod:`.backends` has the implementations).

- ``input_spec()`` / ``output_spec()``: ``{name: TensorSpec(shape, dtype)}`` in graph order;
- ``run(inputs: dict) -> dict``: one call of the graph. Inputs may be numpy arrays or torch
  tensors (on any device); each backend converts only what is not already where it needs it.

Apart from the implementations so that ``tensorrt_backend`` (imported only where TensorRT is
used) and ``backends`` both build on it without importing each other.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "GraphFileBackend", "TensorSpec", "to_numpy"]

BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto")

_NP_DTYPES = {
    "float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_,
}


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run here (package, GPU or file missing); the message says which."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape (ints; -1 or a name for a dynamic dim) and numpy dtype name of one graph tensor."""

    shape: tuple
    dtype: str


def to_numpy(value: Any, dtype: str | None = None) -> np.ndarray:
    """``value`` (numpy, torch on any device, or a sequence) as a C-contiguous array of ``dtype`` (a
    :class:`TensorSpec` dtype name), copied only when needed."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if dtype is not None and arr.dtype != _NP_DTYPES[dtype]:
        arr = arr.astype(_NP_DTYPES[dtype])
    return np.ascontiguousarray(arr)


class Backend(abc.ABC):
    """``input_spec()``, ``output_spec()``, ``run(dict) -> dict`` for one step graph."""

    name: str = "backend"
    with_backbone: bool = False
    device: torch.device = torch.device("cpu")  # where the graph's outputs (and the carried state) live

    @abc.abstractmethod
    def input_spec(self) -> dict[str, TensorSpec]: ...

    @abc.abstractmethod
    def output_spec(self) -> dict[str, TensorSpec]: ...

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]: ...

    @property
    def lidar_apart(self) -> bool:
        """True for a fused graph that takes the LiDAR branch's outputs instead of the sweep (the
        branch runs apart: ``runtime.lidar_features``)."""
        return "lidar_bev" in self.input_spec()

    def _check_inputs(self, inputs: Mapping[str, Any]) -> None:
        missing = [k for k in self.input_spec() if k not in inputs]
        if missing:
            raise ValueError(f"{self.name}: missing inputs {missing}")


class GraphFileBackend(Backend):
    """A backend over a loaded graph file (ONNX Runtime session, TensorRT engine): its tensor
    specs are read once at load into ``_in`` / ``_out`` (name -> :class:`TensorSpec`, graph order)."""

    _in: dict[str, TensorSpec]
    _out: dict[str, TensorSpec]

    def input_spec(self) -> dict[str, TensorSpec]:
        return dict(self._in)

    def output_spec(self) -> dict[str, TensorSpec]:
        return dict(self._out)
