"""The registered mmrotate components of rotplugin: importing this module registers them all.

Configs name it once, ``custom_imports = dict(imports=['rotplugin.mm'], allow_failed_imports=False)``; scripts call
:func:`register_all_modules`. Registered (in mmrotate's registries, scope ``mmrotate``, see
:mod:`rotplugin.registry`): the models of :mod:`rotplugin.models` (backbone, necks, data preprocessor, heads, RoI
extractor, IoU calculator, TTA models), the hooks and wrappers of :mod:`rotplugin.engine` and the metric of
:mod:`rotplugin.evaluation`. Importing it also lets torch's safe (``weights_only``) loading read the checkpoints an
mmengine Runner writes (:mod:`rotplugin.checkpoints`).
"""
from mmrotate.utils import register_all_modules as register_mmrotate_modules

from rotplugin import engine, evaluation, models  # noqa: F401  (importing them registers their components)
from rotplugin.checkpoints import allow_runner_checkpoints

models.import_all()   # rotplugin.models loads its submodules lazily
allow_runner_checkpoints()  # torch's weights_only loading of Runner checkpoints (load_from, resume, upstream tools)

__all__ = ["register_all_modules"]


def register_all_modules(init_default_scope: bool = True) -> None:
    """mmrotate's (and so mmdet's) modules, and rotplugin's, registered; ``init_default_scope`` makes ``mmrotate``
    the default scope, as mmrotate's own ``register_all_modules`` does."""
    register_mmrotate_modules(init_default_scope=init_default_scope)
