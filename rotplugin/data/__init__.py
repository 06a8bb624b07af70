"""DOTA data tools: synthetic DOTA-format scenes (:mod:`rotplugin.data.dota_synth`) and the image splitter
(:mod:`rotplugin.data.dota_split`).

Deliberately empty: the submodules need only numpy and OpenCV, and importing this package loads neither (nor any
mm* package). Import the submodule you need, e.g. ``from rotplugin.data.dota_split import split_dataset``.
"""
