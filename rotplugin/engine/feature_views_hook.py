"""FeatureRotationViewsHook: K feature-rotated training views per backbone pass, switched on from a config."""
from __future__ import annotations

import functools
from typing import Optional, Sequence

from mmengine.hooks import Hook

from rotplugin.models.feature_views import FeatureRotationViews
from rotplugin.models.tta import unwrap_model
from rotplugin.registry import HOOKS


@HOOKS.register_module()
class FeatureRotationViewsHook(Hook):
    """Rotation augmentation by rotating the features (:mod:`rotplugin.models.feature_views`):
    ``custom_hooks = [dict(type='FeatureRotationViewsHook', angles=[0, 90, 180, 270], views=4)]``.

    Before training, the detector's ``loss`` becomes the mean loss of ``views`` views drawn each iteration from
    ``angles``, all from one backbone pass; after training it is the detector's own again. Nothing is wrapped: the
    checkpoints are the plain detector's (they load into the config without the hook), validation and testing
    predict as usual. A detector whose features cannot be rotated, angles between orientation steps without
    ``fibre_interp``, or ``views`` outside 1..len(angles) are refused in ``before_train``, naming the option; a batch
    whose canvas is not equivariant is refused at its step.
    """

    priority = "VERY_HIGH"   # before other hooks' before_train, so that a bad option fails first

    def __init__(self, angles: Sequence[float] = (0, 90, 180, 270), views: Optional[int] = None,
                 fibre_interp: Optional[str] = None, seed: int = 0):
        self.kwargs = dict(angles=angles, views=views, fibre_interp=fibre_interp, seed=seed)
        self._model = None

    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        views = FeatureRotationViews(model, **self.kwargs)
        model.loss = functools.partial(views.loss, model)
        self._model = model
        runner.logger.info(f"feature-rotation views in training: {views.views} of angles {views.angles} per "
                           f"iteration, one backbone pass")

    def after_train(self, runner) -> None:
        if self._model is not None and "loss" in self._model.__dict__:
            del self._model.loss
        self._model = None
