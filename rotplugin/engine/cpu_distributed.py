"""Multi-process runs on CPU (gloo) inside mmengine's Runner.

mmengine 0.10.7's ``pytorch`` launcher calls ``torch.cuda.set_device`` and wraps the model in DDP with
``device_ids=[LOCAL_RANK]``; both fail without a GPU. :func:`init_cpu_distributed` initialises the gloo process
group first (mmengine then skips its own initialisation) and selects :class:`CPUDistributedDataParallel`, which
drops the GPU ``device_ids``. :func:`finish_distributed` ends a run that has finished: every process waits for the
others, then a torchrun worker exits without the interpreter's teardown, in which gloo's threads sometimes aborted
the process after a successful run ("terminate called without an active exception"; see
:func:`end_torchrun_worker`).
"""
from __future__ import annotations

import logging
import os
import sys

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
    """After a successful run: wait for every process; then, in a torchrun worker, end the process at once
    (:func:`end_torchrun_worker`), elsewhere destroy the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        end_torchrun_worker()
        dist.destroy_process_group()


def end_torchrun_worker(code: int = 0) -> None:
    """In a process started by torchrun (``TORCHELASTIC_RUN_ID`` set): flush the logs and standard streams and exit
    with ``code`` without the interpreter's teardown (``os._exit``). Elsewhere: return.

    Why: with gloo on CPU (torch 2.14), a worker that had finished and saved everything sometimes aborted while the
    process was torn down ("terminate called without an active exception", a C++ thread still joinable in a
    destructor), so torchrun reported a failed run: once before the barrier + destroy of :func:`finish_distributed`
    were added, and once after, in a fresh-clone ``make test`` (the 2-process FCOS training). Every result is on disk
    by then; skipping the teardown skips only those destructors."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
