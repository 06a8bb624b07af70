"""Multi-process runs on CPU (gloo) inside mmengine's Runner.

mmengine 0.10.7's ``pytorch`` launcher calls ``torch.cuda.set_device`` and wraps the model in DDP with
``device_ids=[LOCAL_RANK]``; both fail without a GPU. :func:`init_cpu_distributed` initialises the gloo process
group first (mmengine then skips its own initialisation) and selects :class:`CPUDistributedDataParallel`, which
drops the GPU ``device_ids``. :func:`finish_distributed` ends the process group when a run has finished: left
to the interpreter's exit, gloo's threads sometimes outlived a peer that had already closed its connection and the
process aborted ("terminate called without an active exception") after a successful run.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for CPU modules: ``device_ids`` (set by mmengine for GPUs) are ignored."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module=module, device_ids=None, **kwargs)


def init_cpu_distributed(cfg, launcher: str) -> bool:
    """For ``launcher='pytorch'`` on a machine without CUDA: start a gloo process group from torchrun's environment
    and make ``cfg`` use :class:`CPUDistributedDataParallel`. Returns whether it did."""
    if launcher != "pytorch" or torch.cuda.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]))
    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    wrapper["type"] = "CPUDistributedDataParallel"
    cfg.model_wrapper_cfg = wrapper
    return True


def finish_distributed() -> None:
    """After a successful run: wait for every process, then destroy the process group (no-op when none)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
