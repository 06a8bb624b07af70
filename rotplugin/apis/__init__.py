"""The library side of the tools (mm layer): :mod:`rotplugin.apis.benchmark` (no TTA / image TTA / feature TTA of a
detector on a DOTA-format set) and :mod:`rotplugin.apis.demo` (where ``make demo`` keeps things). The tools in
``tools/`` are thin scripts over these; nothing here assumes it runs from a checkout of the repository.

Deliberately empty: import the submodule you need.
"""
