"""Deployment: a trained rotplugin detector as a stock mmrotate model (:mod:`rotplugin.deploy.stock`), its ONNX
graphs and their ONNX Runtime runner (:mod:`rotplugin.deploy.onnx`). ``tools/export.py`` is the command line."""
