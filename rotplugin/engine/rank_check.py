"""RankConsistencyHook: check that every process of a distributed run holds the same model state."""
from __future__ import annotations

import hashlib
import os.path as osp
from typing import Dict

import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import Hook

from rotplugin.io import write_json_atomic
from rotplugin.models.tta import unwrap_model
from rotplugin.registry import HOOKS

__all__ = ["RankConsistencyHook", "state_digests"]


def state_digests(state) -> Dict[str, str]:
    """SHA-256 of every tensor of a state dict (or of ``module.state_dict()``): its bytes, dtype and shape; equal
    digests mean equal tensors bit for bit."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    out = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            continue
        t = value.detach().cpu().contiguous().reshape(-1)
        h = hashlib.sha256(f"{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
        out[key] = h.hexdigest()
    return out


@HOOKS.register_module()
class RankConsistencyHook(Hook):
    """Compare the model state (parameters and buffers, bit for bit) of all processes of a distributed run.

    At the end of training (and every ``interval`` iterations when ``interval > 0``) every rank hashes its state
    dict (:func:`state_digests`) and the digests are all-gathered; the tensors that differ between ranks are logged
    and, with ``strict=True``, training stops with an error on every rank. With ``dump=True`` every rank also writes
    its digests at the end of training to ``{work_dir}/rank_states/rank{R}.json`` (atomically), so that they can be
    compared with a checkpoint. In a single-process run it only dumps.

    DDP all-reduces the gradients and broadcasts the buffers of rank 0, so ranks agree as long as the optimiser step
    is deterministic and nothing updates the weights outside the synchronised step.
    """

    priority = "VERY_LOW"

    def __init__(self, interval: int = 0, dump: bool = True, strict: bool = True):
        self.interval, self.dump, self.strict = interval, dump, strict

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.interval > 0 and self.every_n_train_iters(runner, self.interval):
            self._check(runner, f"iteration {runner.iter + 1}", dump=False)

    def after_train(self, runner) -> None:
        self._check(runner, f"the end of training (iteration {runner.iter})", dump=self.dump)

    def _check(self, runner, when: str, dump: bool) -> None:
        digests = state_digests(unwrap_model(runner.model))
        rank, world = get_rank(), get_world_size()
        if dump:
            write_json_atomic(osp.join(runner.work_dir, "rank_states", f"rank{rank}.json"),
                              {"rank": rank, "world_size": world, "iter": runner.iter, "digests": digests})
        if world == 1:
            return
        gathered = all_gather_object(digests)
        keys = sorted(set().union(*(d.keys() for d in gathered)))
        differing = [k for k in keys if len({d.get(k) for d in gathered}) > 1]
        if not differing:
            runner.logger.info(f"RankConsistencyHook: the model state is identical on all {world} processes at "
                               f"{when} ({len(keys)} tensors)")
            return
        message = (f"RankConsistencyHook: the model state differs between the {world} processes at {when}: "
                   f"{len(differing)} of {len(keys)} tensors, e.g. {differing[:5]}")
        runner.logger.error(message)
        if self.strict:
            raise RuntimeError(message)
