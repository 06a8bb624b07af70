#!/usr/bin/env bash
# Build the project's environment in .venv/ from the pinned stack (requirements/*.txt).
#
# Idempotent: when .venv already matches the pins (a stamp records a hash of them) it exits at once.
# mmcv 2.1.0 has no wheel for torch 2.14, so it is built from its sdist with the C++ standard torch's headers need
# (C++20 instead of the hard-coded c++14/17); the built wheel is cached in $ROTPLUGIN_CACHE (default
# ~/.cache/rotplugin) so that later installs skip the ~7 min compile. With a CUDA toolkit and a GPU present
# (nvcc on PATH and nvidia-smi answering) the CUDA ops are built too (FORCE_CUDA=1), into a separate cache entry.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
CACHE=${ROTPLUGIN_CACHE:-$HOME/.cache/rotplugin}
PYTHON=${PYTHON:-python3}
MMCV_VERSION=2.1.0
STACK=$ROOT/requirements/stack.txt
LOCK=$ROOT/requirements/constraints.txt  # every package frozen from a working install
# --no-compile: Python compiles what is imported on first use; byte-compiling all of torch at install costs ~20 s

log() { printf '[install %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
t0=$(date +%s)

stamp_file=$VENV/.rotplugin-stamp
want_stamp=$(cat "$ROOT"/requirements/*.txt "$ROOT"/requirements/*.patch "$ROOT/tools/install_env.sh" "$ROOT/setup.py" "$ROOT"/rotplugin/csrc/*.c \
  | sha256sum | cut -d' ' -f1)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want_stamp" ]; then
  log "environment in $VENV is up to date"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY=$VENV/bin/python
pip_install() { "$PY" -m pip install --disable-pip-version-check --progress-bar off --no-compile -c "$STACK" -c "$LOCK" "$@"; }

log "build tools (setuptools<81 keeps pkg_resources for mmcv's setup.py, ninja for parallel compiles)"
pip_install -q "setuptools>=77,<81" wheel ninja

log "torch, torchvision, numpy<2, opencv (about a minute: torch is large)"
pip_install -q torch torchvision numpy opencv-python

# ---- mmcv: cached wheel or build from the sdist ---------------------------------------------------------------
cuda_build=0
if command -v nvcc >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then cuda_build=1; fi
torch_tag=$("$PY" -c 'import torch; print(torch.__version__.replace("+", "_"))')
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
variant=cpu; [ "$cuda_build" = 1 ] && variant=cuda
wheel_dir=$CACHE/mmcv-$MMCV_VERSION-torch$torch_tag-$py_tag-$variant
if ! ls "$wheel_dir"/mmcv-*.whl >/dev/null 2>&1; then
  log "building mmcv $MMCV_VERSION ($variant ops) from its sdist: takes ~7 min on 2 cores, once per machine"
  build=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: -d "$build" "mmcv==$MMCV_VERSION"
  tar -xzf "$build/mmcv-$MMCV_VERSION.tar.gz" -C "$build"
  src=$build/mmcv-$MMCV_VERSION
  # torch 2.14's headers use C++20 features; mmcv hard-codes older standards. The one patch of mmcv's source, which
  # tools/gpu_check.py applies to its CUDA build too.
  mmcv_patch=$ROOT/requirements/mmcv-$MMCV_VERSION.patch
  if command -v patch >/dev/null 2>&1; then patch -d "$src" -p1 --forward --batch -i "$mmcv_patch"
  else (cd "$src" && git apply -p1 "$mmcv_patch"); fi
  pip_install -q addict mmengine packaging Pillow pyyaml yapf
  mkdir -p "$wheel_dir.tmp"
  (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=$cuda_build MAX_JOBS=${MAX_JOBS:-$(nproc)} \
     "$PY" -m pip wheel --no-build-isolation --no-deps -w "$wheel_dir.tmp" . )
  rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
  rm -rf "$build"
else
  log "using cached mmcv wheel from $wheel_dir"
fi
pip_install -q "$wheel_dir"/mmcv-*.whl

log "mmengine, mmdet, mmrotate-dev"
pip_install -q mmengine mmdet mmrotate-dev shapely onnx onnxruntime  # shapely: DOTA Task1 evaluation; onnx(runtime): tools/export.py --onnx

log "escnn without py3nj (SO(3) only), its dependencies, e2cnn (test oracle / checkpoint conversion)"
pip_install -q --no-deps escnn
pip_install -q lie-learn scipy joblib pymanopt autograd e2cnn

log "test tools and rotplugin itself (editable; compiles its C row copier, rotplugin/csrc, in about a second)"
pip_install -q -r "$ROOT/requirements/test.txt"
pip_install -q --no-deps --no-build-isolation -e "$ROOT"

log "checking the stack imports"
"$PY" - <<'EOF'
import torch, torchvision, numpy, mmcv, mmdet, mmrotate, escnn, e2cnn
from mmcv.ops import nms_rotated  # compiled ops are present
import rotplugin._plane_copy  # setup.py builds it as optional: here it must be there (tests assert it too)
assert numpy.__version__.startswith("1."), numpy.__version__
print(f"  torch {torch.__version__}  torchvision {torchvision.__version__}  numpy {numpy.__version__}")
print(f"  mmcv {mmcv.__version__}  mmdet {mmdet.__version__}  mmrotate {mmrotate.__version__}"
      f"  escnn {escnn.__version__ if hasattr(escnn, '__version__') else '1.0.11'}  e2cnn ok")
print(f"  CUDA available: {torch.cuda.is_available()}")
EOF
echo "$want_stamp" > "$stamp_file"
log "done in $(( $(date +%s) - t0 )) s"
