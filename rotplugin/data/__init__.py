"""DOTA data tools: synthetic DOTA-format scenes (:mod:`rotplugin.data.dota_synth`) and the image splitter
(:mod:`rotplugin.data.dota_split`).

The submodules need only numpy and OpenCV (no torch, escnn or mm* package; tests/test_layers.py checks it), and this
package itself imports nothing: import the submodule you need, e.g.
``from rotplugin.data.dota_split import split_dataset``.
"""
