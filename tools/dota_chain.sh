#!/usr/bin/env bash
# The DOTA chain on full images, as a user runs it, one stage after the other:
#   1. tools/dota_split.py   full images -> SIZE² patches with overlap GAP (DOTA-v1.0 single scale: 1024, 200), no labels
#   2. tools/test.py         the patches, once per TTA mode (none / image / feature), --submission-dir: patches merged to
#                            full images, Task1_<class>.txt files
#   3. tools/eval_dota.py    each Task1 folder against the full-image labels (the DOTA devkit's rules), JSON
# usage: tools/dota_chain.sh CONFIG CHECKPOINT IMG_DIR LABEL_DIR OUT_DIR [MODE ...]   (MODE: none image feature; default all)
# env: SIZE (1024), GAP (200), PYTHON (.venv/bin/python), CLASSES (dota1.0), EXTRA (more tools/test.py options).
# OUT_DIR must not exist: OUT_DIR/split, OUT_DIR/Task1_<mode>/, OUT_DIR/results_<mode>.pkl (the patch results,
# unrounded scores: tools/eval_dota.py takes them too), OUT_DIR/eval_<mode>.json, OUT_DIR/times.txt (seconds per
# stage).
set -euo pipefail
if [ $# -lt 5 ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
CONFIG=$1; CHECKPOINT=$2; IMG_DIR=$3; LABEL_DIR=$4; OUT=$5
shift 5
MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(none image feature)
for m in "${MODES[@]}"; do
  case $m in none|image|feature) ;; *) echo "dota_chain: unknown mode '$m' (none, image, feature)" >&2; exit 2;; esac
done
for f in "$CONFIG" "$CHECKPOINT"; do [ -f "$f" ] || { echo "dota_chain: $f not found" >&2; exit 2; }; done
for d in "$IMG_DIR" "$LABEL_DIR"; do [ -d "$d" ] || { echo "dota_chain: folder $d not found" >&2; exit 2; }; done
[ ! -e "$OUT" ] || { echo "dota_chain: $OUT exists; name a new folder" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
SIZE=${SIZE:-1024}; GAP=${GAP:-200}; CLASSES=${CLASSES:-dota1.0}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
stage() {  # stage NAME command...: run, time, log
  local name=$1; shift
  local t0=$EPOCHREALTIME
  echo "[dota_chain] $name: $*" >&2
  "$@"
  awk -v n="$name" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s %.1f\n", n, b - a }' >> "$OUT/times.txt"
}
stage split "$PYTHON" "$ROOT/tools/dota_split.py" --img-dir "$IMG_DIR" --out-dir "$OUT/split" --size "$SIZE" \
  --gap "$GAP" --no-progress
for m in "${MODES[@]}"; do
  tta=(); [ "$m" = none ] || tta=(--tta "$m")
  # shellcheck disable=SC2086
  stage "test_$m" "$PYTHON" "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" "${tta[@]}" \
    --submission-dir "$OUT/Task1_$m" --out "$OUT/results_$m.pkl" --work-dir "$OUT/work_$m" \
    --cfg-options "test_dataloader.dataset.data_root=$OUT/split/" "test_dataloader.dataset.data_prefix.img_path=images/" \
    ${EXTRA:-}
  stage "eval_$m" "$PYTHON" "$ROOT/tools/eval_dota.py" "$OUT/Task1_$m" "$LABEL_DIR" --classes $CLASSES \
    --json "$OUT/eval_$m.json"
done
echo "[dota_chain] seconds per stage:" >&2
cat "$OUT/times.txt" >&2
