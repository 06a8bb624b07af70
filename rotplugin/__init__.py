"""rotplugin: rotation-equivariant oriented object detection for MMRotate.

``import rotplugin`` is light: it loads no mm* package (nor torch or escnn). The layers import only what they need:

* core, torch/numpy only: :mod:`rotplugin.canvas` (every coordinate and angle convention), :mod:`rotplugin.boxes`;
  :mod:`rotplugin.fields` (the fibre action) adds escnn; :mod:`rotplugin.data` (DOTA tools) needs numpy + OpenCV;
* escnn layers: :mod:`rotplugin.nn`; pure-PyTorch ops: :mod:`rotplugin.ops`;
* the registered mmrotate components: :mod:`rotplugin.mm` — the one module configs name,
  ``custom_imports = dict(imports=['rotplugin.mm'], allow_failed_imports=False)``, and scripts call
  :func:`rotplugin.mm.register_all_modules`.
"""
__version__ = "0.1.0"
