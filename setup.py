"""rotplugin: rotation-equivariant oriented object detection for MMRotate (escnn backbone, passive rotation, TTA).

The heavy stack (torch, mmcv built from source, mmdet, mmrotate-dev, escnn) is pinned in requirements/stack.txt and
installed by ``make install`` (tools/install_env.sh); install_requires lists only what the package imports.

One small C extension, ``rotplugin._plane_copy`` (plain C and the Python API, no torch headers: it compiles in
about a second), copies rows for the exact quarter turns of ``rotplugin.fields``. It is optional: where it cannot
be built, ``rotplugin.fields`` uses torch operations instead (slower, same results).
"""
from setuptools import Extension, find_packages, setup

setup(
    name="rotplugin",
    version="0.1.0",
    description="Rotation-equivariant oriented object detection for MMRotate: escnn ReResNet, equivariant FPN, "
                "passive rotation of regular fields, feature-rotation TTA",
    packages=find_packages(include=["rotplugin", "rotplugin.*"]),
    ext_modules=[Extension("rotplugin._plane_copy", ["rotplugin/csrc/plane_copy.c"],
                           extra_compile_args=["-O3", "-pthread"], extra_link_args=["-pthread"], optional=True)],
    python_requires=">=3.10",
    install_requires=["torch", "numpy"],
    extras_require={
        "mm": ["mmcv==2.1.0", "mmdet==3.3.0", "mmrotate-dev==1.0.1", "mmengine"],
        "escnn": ["escnn==1.0.11", "lie-learn==0.0.2", "scipy", "joblib", "pymanopt", "autograd"],
        "redet": ["e2cnn==0.2.3"],
    },
)
