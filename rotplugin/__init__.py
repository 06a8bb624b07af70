"""rotplugin: rotation-equivariant oriented object detection for MMRotate.

``import rotplugin`` registers the mm components (EquivariantResNet, EquivariantFPN, ...) in mmrotate's registries
when mmrotate is installed; the torch-only core (:mod:`rotplugin.canvas`, :mod:`rotplugin.fields`) works without it.
"""
__version__ = "0.1.0"

try:
    import mmrotate  # noqa: F401
except ImportError:  # the core works without the OpenMMLab stack
    _HAS_MM = False
else:
    _HAS_MM = True

if _HAS_MM:
    from . import engine, evaluation, models  # noqa: F401  (registers the components)
