"""DOTA data tools: synthetic DOTA-format scenes (:mod:`rotplugin.data.dota_synth`), the image splitter
(:mod:`rotplugin.data.dota_split`) and the official Task1 evaluation (:mod:`rotplugin.data.dota_eval`).

The submodules need only numpy and OpenCV, and shapely for the evaluation (no torch, escnn or mm* package;
tests/test_layers.py checks it), and this package itself imports nothing: import the submodule you need, e.g.
``from rotplugin.data.dota_split import split_dataset``.
"""
