"""RotationTTAHook: make ``runner.test()`` (and optionally ``runner.val()``) predict with a rotation TTA model."""
from __future__ import annotations

import copy
from typing import Optional

from mmengine.hooks import Hook

from rotplugin.models.tta import DEFAULT_TTA_MODEL, unwrap_model
from rotplugin.registry import HOOKS, MODELS


@HOOKS.register_module()
class RotationTTAHook(Hook):
    """A convenience for evaluation during training: ``custom_hooks=[dict(type='RotationTTAHook')]`` makes
    ``runner.test()`` (and ``runner.val()`` with ``on_val=True``) wrap the trained detector in a rotation TTA model.

    The TTA model is ``tta_model`` (a config dict, e.g. ``dict(type='ImageRotationTTAModel', angles=[0, 180])``),
    else the config's own ``tta_model`` (mmdet's convention, what ``tools/test.py --tta`` uses), else
    ``FeatureRotationTTAModel`` with 4 quarter turns. The model is swapped in before the loop and restored after it;
    a detector whose features cannot be rotated is refused with a clear error (in ``before_test``).
    """

    priority = "VERY_LOW"  # after checkpoint loading and other hooks that touch the model

    def __init__(self, tta_model: Optional[dict] = None, on_val: bool = False):
        if tta_model is not None and not (isinstance(tta_model, dict) and "type" in tta_model):
            raise ValueError(f"RotationTTAHook: tta_model must be a config dict with a 'type' (e.g. "
                             f"dict(type='FeatureRotationTTAModel', angles=[0, 90, 180, 270])), got {tta_model!r}")
        if tta_model is not None and "module" in tta_model:
            raise ValueError("RotationTTAHook: tta_model must not hold 'module' (the runner's model is wrapped)")
        self.tta_model, self.on_val = tta_model, on_val
        self._saved = None

    def _tta_cfg(self, runner) -> dict:
        if self.tta_model is not None:
            return dict(self.tta_model)
        cfg = getattr(runner, "cfg", None)
        from_cfg = cfg.get("tta_model") if cfg is not None else None
        return dict(copy.deepcopy(from_cfg) if from_cfg else DEFAULT_TTA_MODEL)

    def _swap_in(self, runner):
        self._saved = runner.model
        cfg = self._tta_cfg(runner)
        runner.model = MODELS.build(dict(cfg, module=unwrap_model(runner.model)))
        runner.logger.info(f"rotation TTA: {cfg}")

    def _restore(self, runner):
        if self._saved is not None:
            runner.model = self._saved
            self._saved = None

    def before_test(self, runner) -> None:
        self._swap_in(runner)

    def after_test(self, runner) -> None:
        self._restore(runner)

    def before_val(self, runner) -> None:
        if self.on_val:
            self._swap_in(runner)

    def after_val(self, runner) -> None:
        if self.on_val:
            self._restore(runner)
