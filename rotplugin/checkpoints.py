"""Let torch's safe (``weights_only``) unpickler load the checkpoints an mmengine Runner writes.

Why: torch >= 2.6 loads with ``weights_only=True`` by default, and so does everything that calls plain
``torch.load``: mmengine's ``load_checkpoint``, ``Runner.resume`` and ``load_from``, upstream mmrotate's
``tools/train.py`` / ``tools/test.py``. Besides tensors, a Runner checkpoint pickles its message hub
(``checkpoint['message_hub']``): ``HistoryBuffer`` objects holding numpy arrays, and numpy scalars in the runtime
info (the ``eta`` of the IterTimerHook). torch refuses them: "Weights only load failed ... Unsupported global:
mmengine.logging.history_buffer.HistoryBuffer".

What: :func:`allow_runner_checkpoints` (called when :mod:`rotplugin.mm` is imported, so by every config with
``custom_imports=dict(imports=['rotplugin.mm'])``) adds exactly these to torch's safe globals
(``torch.serialization.add_safe_globals``); every other class or function stays refused:

* ``mmengine.logging.history_buffer.HistoryBuffer``: a data class (``max_length``, two numpy arrays); its
  ``__setstate__`` stores the pickled ``statistics_methods`` (``min``, ``max``, ``current``, ``mean``);
* ``builtins.getattr``, **not** the builtin: protocol 2 pickles ``HistoryBuffer.min`` as ``getattr(HistoryBuffer,
  'min')``, so the name is mapped to :func:`_history_buffer_statistic`, which returns those four methods of
  HistoryBuffer and refuses anything else. The real ``getattr`` would let a file read any attribute of any object it
  reaches (``getattr.__self__`` is the builtins module, ``f.__globals__`` a module's dict it could then overwrite),
  which defeats the restricted unpickler;
* ``numpy.ndarray`` and ``numpy.core.multiarray._reconstruct``: an ndarray pickles as an empty array plus
  ``__setstate__`` with shape, dtype and raw bytes;
* ``numpy.core.multiarray.scalar``: a numpy scalar (dtype + raw bytes), e.g. ``eta`` (``numpy.float64``);
* ``numpy.dtype``, ``numpy.dtypes.Float64DType`` and ``numpy.dtypes.Int64DType``: a dtype pickles as
  ``numpy.dtype('f8', ...)`` plus its state, and torch restores the state of an object only when its class is
  allowed; numpy >= 1.25 makes each dtype an instance of its own class. Those two are what the Runner writes: the
  HistoryBuffers hold float64 values and int64 counts (MessageHub turns every logged value into a Python int or
  float) and ``eta`` is a float64. Other dtypes (object, complex, float32, ...) stay refused; a metric that returns
  another numpy scalar type (stored as ``best_score`` by ``CheckpointHook(save_best=...)``) would need its dtype
  class added by the user.

numpy 2 renamed ``numpy.core`` to ``numpy._core``: files written under numpy 2 name
``numpy._core.multiarray._reconstruct`` / ``numpy._core.multiarray.scalar``, those of numpy 1.x
``numpy.core.multiarray.*``. Both names are registered for the same two functions, whichever numpy is installed, so
checkpoints of either load. ``numpy.ndarray``, ``numpy.dtype`` and ``numpy.dtypes.*DType`` are spelled the same.

How the set was found: a small detector trained for two iterations by mmengine's Runner (epoch-based with a
validation and ``save_best``; iter-based with AdamW, gradient clipping, LinearLR + cosine schedule and EMAHook),
``torch.serialization.get_unsafe_globals_in_checkpoint`` of every file written (``HistoryBuffer``, ``builtins.getattr``,
``numpy.core.multiarray._reconstruct``, ``numpy.core.multiarray.scalar``, ``numpy.dtype``, ``numpy.ndarray``), then
loading them with ``weights_only=True`` (which names the dtype classes: the pickles name only ``numpy.dtype``).
``tests/test_checkpoints.py`` repeats it on a Runner checkpoint.
"""
from __future__ import annotations

import pickle
from typing import List

__all__ = ["allow_runner_checkpoints"]

#: the statistics methods HistoryBuffer registers by default (``HistoryBuffer._set_default_statistics``)
_STATISTICS = ("min", "max", "current", "mean")
#: numpy 1.x and numpy 2 spell the module of ``_reconstruct`` / ``scalar`` differently
_MULTIARRAY_NAMES = ("numpy.core.multiarray", "numpy._core.multiarray")
#: the dtypes of the arrays and scalars a Runner checkpoint holds
_DTYPES = ("float64", "int64")

_allowed: List[str] = []


def _history_buffer_statistic(owner, name):
    """``builtins.getattr`` as torch's unpickler sees it after :func:`allow_runner_checkpoints`: only
    ``getattr(HistoryBuffer, m)`` for HistoryBuffer's default statistics methods ``m``."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if owner is HistoryBuffer and name in _STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"getattr({getattr(owner, '__qualname__', type(owner).__name__)}, {name!r}) is refused: rotplugin allows "
        f"getattr only for HistoryBuffer's statistics methods {_STATISTICS}")


def _safe_globals() -> list:
    """``(object, 'module.name')`` pairs for ``torch.serialization.add_safe_globals``."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    if int(np.__version__.split(".")[0]) >= 2:
        from numpy._core import multiarray
    else:
        from numpy.core import multiarray
    pairs = [(HistoryBuffer, "mmengine.logging.history_buffer.HistoryBuffer"),
             (_history_buffer_statistic, "builtins.getattr"),
             (np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    pairs += [(getattr(multiarray, fn), f"{module}.{fn}") for fn in ("_reconstruct", "scalar")
              for module in _MULTIARRAY_NAMES]
    for name in _DTYPES:
        cls = type(np.dtype(name))  # numpy >= 1.25: numpy.dtypes.Float64DType, numpy.dtypes.Int64DType
        pairs.append((cls, f"{cls.__module__}.{cls.__qualname__}"))
    return pairs


def allow_runner_checkpoints() -> List[str]:
    """Allow torch's ``weights_only`` unpickling of mmengine Runner checkpoints (the globals of the module doc).

    Idempotent: the first call registers, later ones return the same names. A no-op returning ``[]`` on a torch
    without ``add_safe_globals`` (< 2.4, which loads with ``weights_only=False`` by default). Returns the names
    allowed."""
    import torch.serialization

    if not _allowed and hasattr(torch.serialization, "add_safe_globals"):
        pairs = _safe_globals()
        torch.serialization.add_safe_globals(pairs)
        _allowed.extend(name for _, name in pairs)
    return list(_allowed)
