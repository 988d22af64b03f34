"""One static-shape step captured in a CUDA graph and replayed per frame (the torch CUDA path).

:class:`CudaGraphStep` follows the capture recipe of the PyTorch CUDA-graphs notes
(``torch.cuda.graph``): static input buffers allocated once, a few warm-up calls on a side stream
(Triton JIT compilation, cuBLAS workspaces, the DFA op's index tensors: nothing may allocate from
the host or synchronise during capture), one capture, then per frame ``copy_`` the new inputs
into the static buffers and ``replay()``. Outputs are cloned after each replay, because the next
replay overwrites the captured output buffers and the carried temporal state (``next_*``) must
survive it.

The captured function must be shape-static and free of host synchronisation: the
:class:`~.export.StepGraph` with ``static=True`` (the ``where`` form of the first-frame branch,
the same function ``torch.compile`` and the ONNX export trace). Verified on a GPU only by
``scripts/gpu_check.sh`` (see bench/RESULTS.md for whether that has happened); here the class is
exercised up to the CUDA calls only (``test/test_backends_torch.py`` skips visibly without CUDA).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["CudaGraphStep"]


class CudaGraphStep:
    """``fn(*args) -> tuple[Tensor, ...]`` captured once for the shapes and dtypes of ``example``.

    ``example``: CUDA tensors with the shapes every later call has (their values are used for the
    warm-up and capture calls only). ``warmup``: eager calls on a side stream before capture.
    Calling the object copies ``args`` (any device; host tensors should be pinned for an
    asynchronous upload) into the static inputs, replays, and returns fresh clones of the outputs.
    Raises ``ValueError`` on a shape that differs from ``example`` (dtypes are converted by ``copy_``).
    """

    def __init__(self, fn: Callable[..., Sequence[torch.Tensor]], example: Sequence[torch.Tensor], warmup: int = 3):
        if not example or any(not isinstance(t, torch.Tensor) or t.device.type != "cuda" for t in example):
            raise ValueError("CudaGraphStep needs CUDA example tensors")
        self.device = example[0].device
        self.static_in = [t.detach().clone() for t in example]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(max(1, warmup)):
                fn(*self.static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.static_out = tuple(fn(*self.static_in))

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(args) != len(self.static_in):
            raise ValueError(f"expected {len(self.static_in)} inputs, got {len(args)}")
        for i, (buf, value) in enumerate(zip(self.static_in, args, strict=True)):
            value = torch.as_tensor(value)
            if tuple(value.shape) != tuple(buf.shape):
                raise ValueError(f"input {i}: shape {tuple(value.shape)} differs from the captured {tuple(buf.shape)}")
            buf.copy_(value, non_blocking=True)
        self.graph.replay()
        return tuple(t.clone() for t in self.static_out)
