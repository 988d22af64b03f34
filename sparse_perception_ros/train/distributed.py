"""Data-parallel training over processes with ``torch.distributed`` (started by ``torchrun``).

``torchrun --nproc_per_node N -m sparse_perception_ros.cli train ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`from_environment`
reads them and joins the process group (NCCL on CUDA, gloo on CPU). The trainer then:

- draws the **global** batch of iteration ``i`` (``world * batch_size`` whole clips, seeded by
  ``(seed, i)`` exactly as a single process draws its batch) and gives rank ``r`` the clips
  ``[r * batch_size, (r + 1) * batch_size)`` of it (:func:`rank_batch`): the ranks' shards are
  disjoint whole clips, so the instance bank still runs over consecutive keyframes;
- wraps the per-frame forward in ``DistributedDataParallel`` (gradients all-reduced once per
  clip, after its last frame);
- normalises the head losses by the GT count of the whole global batch (all-reduced per frame),
  as the reference's ``reduce_mean(num_pos)`` does, so that N ranks x batch b step exactly as one
  process with batch N * b (tested in ``test/test_train_ddp.py``);
- decides "skip this step" (non-finite loss or gradient) and "stop now" (``--max-minutes``) on
  all ranks together (one all-reduce per iteration);
- writes checkpoints, logs, plots and the data cache on rank 0 only; the others wait on a barrier.

The single-process trainer never touches this module's process-group code (``dist=None``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from sparse_perception_ros.train.augment import draw_clip_aug

__all__ = ["DistContext", "from_environment", "rank_batch", "shutdown", "convert_sync_batchnorm"]


@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Sum of ``values`` (one float64 vector) over all ranks; every rank gets the result."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()


def from_environment(timeout_s: float = 1800.0) -> DistContext | None:
    """Join the process group that ``torchrun`` describes in the environment; None when this
    process was not started by a launcher (no ``WORLD_SIZE``) or the world has one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world, local_rank, device, backend)


def shutdown(ctx: DistContext | None) -> None:
    if ctx is None:
        return

    if dist.is_initialized():
        dist.destroy_process_group()


def rank_batch(it: int, seed: int, batch_size: int, clips: Sequence[Sequence[int]], samples, augment,
               rank: int = 0, world_size: int = 1):
    """``(clips, augs)`` of this rank at iteration ``it``: the global batch of ``world_size *
    batch_size`` clips and their augmentations are drawn from ``default_rng([seed, it])`` (with
    ``world_size = 1`` exactly the single-process draw), then split into contiguous per-rank slices.
    Clips are drawn without replacement whenever there are enough of them, so the slices are disjoint."""
    rng = np.random.default_rng([seed, it])
    n = batch_size * world_size
    picks = rng.choice(len(clips), n, replace=len(clips) < n)
    batch = [clips[i] for i in picks]
    augs = [draw_clip_aug(rng, augment, len(samples[c[0]].images)) for c in batch]
    mine = slice(rank * batch_size, (rank + 1) * batch_size)
    return batch[mine], augs[mine]


def convert_sync_batchnorm(model: torch.nn.Module, ctx: DistContext | None) -> bool:
    """Trainable BatchNorm on CUDA with several ranks becomes ``SyncBatchNorm`` (statistics over the
    global batch; same state-dict keys). Returns whether it converted. On CPU (gloo) torch has no
    SyncBatchNorm: each rank normalises with its own batch's statistics (as the reference's plain
    ``BN`` does per GPU) and DDP copies rank 0's running statistics to the others at every forward."""
    if ctx is None or ctx.device.type != "cuda":
        return False
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return True
