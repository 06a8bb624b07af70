"""Float32BoxCodingHook: under mixed precision, the heads' box coding, losses and RoI pooling stay float32."""
from __future__ import annotations

from mmengine.hooks import Hook

from rotplugin.models.mixed_precision import float32_box_coding, restore_box_coding
from rotplugin.models.tta import unwrap_model
from rotplugin.registry import HOOKS


@HOOKS.register_module()
class Float32BoxCodingHook(Hook):
    """``custom_hooks = [dict(type='Float32BoxCodingHook')]`` (the shipped ``*_amp-1x_dota.py`` configs): for the
    whole run, :func:`rotplugin.models.mixed_precision.float32_box_coding` on the detector (its heads give float32
    outputs, its RoI extractors pool in float32), so that box decoding, losses and NMS do not run in float16 /
    bfloat16 under ``AmpOptimWrapper``. Weights and checkpoints are untouched; after the run the detector is as
    built. A detector without dense heads, RoI box heads or RoI extractors is refused by name."""

    priority = "VERY_HIGH"

    def __init__(self):
        self._model = None

    def before_run(self, runner) -> None:
        model = unwrap_model(runner.model)
        if float32_box_coding(model) == 0:
            raise ValueError(f"Float32BoxCodingHook: {type(model).__name__} has no dense head, RoI box head or RoI "
                             f"extractor to keep in float32")
        self._model = model

    def after_run(self, runner) -> None:
        if self._model is not None:
            restore_box_coding(self._model)
        self._model = None
