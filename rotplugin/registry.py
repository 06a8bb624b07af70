"""Where rotplugin registers its mm components: mmrotate's registries (scope ``mmrotate``).

Registering there (rather than in a child registry of our own) lets every mmrotate 1.x config use our types by bare
name after ``custom_imports=dict(imports=['rotplugin.mm'])`` (:mod:`rotplugin.mm` imports every module that
registers something).
"""
from mmrotate.registry import HOOKS, METRICS, MODELS, TASK_UTILS  # noqa: F401

__all__ = ["MODELS", "HOOKS", "METRICS", "TASK_UTILS"]
