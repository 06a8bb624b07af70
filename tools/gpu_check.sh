#!/usr/bin/env bash
# The GPU check (issue 17; what it does: tools/gpu_check.py). On the GPU machine, whose python3 holds torch:
#   bash tools/gpu_check.sh run            (carry .gpu, filled here by `make gpu-wheels`)
# Here: bash tools/gpu_check.sh run --cpu  (the dry run)   |   bash tools/gpu_check.sh collect
# The interpreter: .venv's where it exists (here), else python3 (the GPU machine has no .venv).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=python3
[ -x "$ROOT/.venv/bin/python" ] && PY=$ROOT/.venv/bin/python
exec "$PY" "$ROOT/tools/gpu_check.py" "$@"
