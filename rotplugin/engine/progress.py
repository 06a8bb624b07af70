"""ProgressBarHook: one line per few training iterations with a bar, speed, ETA and the loss."""
from __future__ import annotations

import sys
import time

from mmengine.dist import get_rank
from mmengine.hooks import Hook

from rotplugin.registry import HOOKS


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """Print ``[train] |#####-----|  45%  675/1500 it  1.21 s/it  eta 16:38  loss 0.831`` to ``stderr`` every
    ``interval`` iterations (and at the last one), for epoch- and iteration-based loops alike. Only rank 0 prints."""

    priority = "BELOW_NORMAL"

    def __init__(self, interval: int = 10, width: int = 30):
        if interval < 1 or width < 1:
            raise ValueError(f"ProgressBarHook: interval and width must be >= 1, got {interval}, {width}")
        self.interval, self.width = interval, width
        self._t0 = None
        self._start_iter = 0

    def before_train(self, runner) -> None:
        self._t0 = time.perf_counter()
        self._start_iter = runner.iter

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        done, total = runner.iter + 1, runner.max_iters
        if get_rank() != 0 or (done % self.interval and done != total):
            return
        elapsed = time.perf_counter() - self._t0
        speed = elapsed / max(done - self._start_iter, 1)
        eta = int(speed * (total - done))
        filled = int(self.width * done / max(total, 1))
        loss = ""
        if isinstance(outputs, dict) and "loss" in outputs:
            loss = f"  loss {float(outputs['loss']):.3f}"
        print(f"[train] |{'#' * filled}{'-' * (self.width - filled)}| {100 * done / max(total, 1):3.0f}%  "
              f"{done}/{total} it  {speed:.2f} s/it  eta {eta // 60}:{eta % 60:02d}{loss}", file=sys.stderr,
              flush=True)
