"""Distributed training helpers: torchrun environment, process group, synchronised BatchNorm.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process joins one process group — NCCL on GPUs, gloo on
CPUs — and trains one shard of every batch. PyTorch's ``nn.SyncBatchNorm`` refuses CPU tensors, so on
CPUs the head's BatchNorms become :class:`CpuSyncBatchNorm`, which all-reduces the batch statistics
(differentiably) over gloo; the state-dict keys stay the BatchNorm ones either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Read torchrun's environment, pick the device and join the process group when needed.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev = torch.device("cuda", local % torch.cuda.device_count())
    else:
        dev = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if world > 1 and "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local_world, 1)))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, dev)


def teardown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(info: DistInfo, t: Tensor) -> Tensor:
    """Sum ``t`` over all processes (in place; returns it)."""
    if info.distributed:
        dev_t = t.to(info.device) if info.device.type == "cuda" else t
        dist.all_reduce(dev_t)
        if dev_t is not t:
            t.copy_(dev_t.cpu())
    return t


def all_gather_objects(info: DistInfo, obj):
    """Every process's ``obj``, in rank order (a one-element list when not distributed)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj):
    """Rank 0's ``obj`` on every process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of every input is the sum of the output gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """``DistributedDataParallel`` without per-forward buffer broadcasts (SyncBatchNorm keeps them equal);
    rank 0's parameters and buffers are copied to every rank at construction."""
    import inspect

    kw = {"device_ids": [info.device.index] if info.device.type == "cuda" else None}
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    kw["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(model, **kw)


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are all-reduced over the default process group.

    Mean and (biased) variance come from the global sums of x and x² over every process's batch;
    running statistics use the unbiased variance, as BatchNorm does. Gradients flow through the
    all-reduce. Outside training, or without a process group, it is a plain BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        local = torch.cat([
            xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)),
            xf.new_full((1,), float(x.numel() // c)),
        ])
        total = _AllReduceSum.apply(local)
        count = total[-1]
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean * mean).clamp_min(0.0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            unbiased = var.detach() * (count / (count - 1).clamp_min(1.0))
            self.running_mean.mul_(1 - m).add_(mean.detach() * m)
            self.running_var.mul_(1 - m).add_(unbiased * m)
        inv = torch.rsqrt(var + self.eps)
        y = (xf - mean[None, :, None, None]) * inv[None, :, None, None]
        return (y * self.weight[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """SyncBatchNorm for a DDP run: ``nn.SyncBatchNorm`` on GPUs, :class:`CpuSyncBatchNorm` on CPUs.

    Parameters and buffers are moved over, so state-dict keys and values are unchanged.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
