"""FeatureRotationTTAHook: make ``runner.test()`` (and optionally ``runner.val()``) use rotation TTA."""
from __future__ import annotations

from typing import Optional, Sequence

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from rotplugin.models.tta import FeatureRotationTTAModel, ImageRotationTTAModel, parse_angles
from rotplugin.registry import HOOKS

TTA_MODES = {"feature": FeatureRotationTTAModel, "image": ImageRotationTTAModel}


@HOOKS.register_module()
class FeatureRotationTTAHook(Hook):
    """``custom_hooks=[dict(type='FeatureRotationTTAHook', angles=[0, 90, 180, 270])]`` in any config makes
    ``runner.test()`` predict with :class:`~rotplugin.models.tta.FeatureRotationTTAModel` (one backbone pass,
    rotated features per view) without touching the test pipeline; ``on_val=True`` does the same for validation.
    ``mode='image'`` uses the image-rotation baseline instead. The model is swapped in before the loop and restored
    after it. Non-equivariant models are refused with a clear error (in ``before_test``).
    """

    priority = "VERY_LOW"  # after checkpoint loading and other hooks that touch the model

    def __init__(self, angles: Sequence[float] = (0, 90, 180, 270), mode: str = "feature", on_val: bool = False,
                 iou_thr: float = 0.1, score_thr: float = 0.05, max_per_img: int = 2000,
                 fibre_interp: Optional[str] = None):
        if mode not in TTA_MODES:
            raise ValueError(f"FeatureRotationTTAHook: mode must be one of {sorted(TTA_MODES)}, got {mode!r}")
        self.mode, self.on_val = mode, on_val
        self.tta_kwargs = dict(angles=parse_angles(angles), iou_thr=iou_thr, score_thr=score_thr,
                               max_per_img=max_per_img, fibre_interp=fibre_interp)
        self._saved = None

    def _swap_in(self, runner):
        model = runner.model
        detector = model.module if is_model_wrapper(model) else model
        self._saved = model
        runner.model = TTA_MODES[self.mode](detector, **self.tta_kwargs)
        runner.logger.info(f"rotation TTA ({self.mode}) with angles {self.tta_kwargs['angles']}")

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
