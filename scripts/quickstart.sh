#!/usr/bin/env bash
# Train a captioner on the embedded synthetic set, score it on its test split
# and caption a few test images. Does its own set-up: a virtual environment in
# .venv (or $KCAP_VENV) with kcap installed.
#
#   scripts/quickstart.sh [RUN_DIR]        (default: runs/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${KCAP_VENV:-.venv}"
RUN_DIR="${1:-runs/quickstart}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
echo "== Installing kcap into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .
KCAP="$VENV/bin/kcap"

echo "== Training on the synthetic set (3,000 images of coloured shapes, 5 captions each)"
"$KCAP" train --data synthetic --run-dir "$RUN_DIR" \
  --epochs 4 --batch-size 64 --learning-rate 0.002 --embedding-dim 64 --units 128 --verbose 2

echo "== Scoring on the held-out test split"
"$KCAP" evaluate --run-dir "$RUN_DIR" --split test --show 3

echo "== Captioning a few test images"
mapfile -t IMAGES < <("$VENV/bin/python" -c '
import json, sys
splits = json.load(open(sys.argv[1] + "/splits.json"))["splits"]
print("\n".join(image["image"] for image in splits["test"][:4]))' "$RUN_DIR")
"$KCAP" caption --run-dir "$RUN_DIR" "${IMAGES[@]}"

echo
echo "Run directory: $RUN_DIR  (scores in $RUN_DIR/eval_test.json; TensorBoard: $VENV/bin/tensorboard --logdir $RUN_DIR/logs)"
