#!/usr/bin/env bash
# Hyperparameter search on the shared Flickr8k subset (issue #5 benchmark):
# MobileNetV2 features cached once, a random search over tuning/search_space.json
# (embedding_dim, units, learning_rate, dropout), the best settings retrained
# for longer and scored on the test split.
#
#   scripts/tune_flickr8k.sh [DIR]      (default: runs/tune-flickr8k)
#
# Re-running it on the same DIR resumes the search. Environment (defaults):
#   KCAP_SHARED=../shared   TRIALS=6   EPOCHS=3   TUNER=random   OBJECTIVE=val_loss
#   SPACE=tuning/search_space.json   RETRAIN_EPOCHS=8 (0: no retraining)
#   CACHE_DIR=DIR/features   KCAP=kcap (or .venv/bin/kcap when it exists)
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${1:-runs/tune-flickr8k}"
SHARED="${KCAP_SHARED:-../shared}"
DATA="$SHARED/data/flickr8k_1000/Flickr8k.token.txt"
BACKBONE="$SHARED/weights/mobilenet_v2_imagenet_features.keras"
TRIALS="${TRIALS:-6}"
EPOCHS="${EPOCHS:-3}"
TUNER="${TUNER:-random}"
OBJECTIVE="${OBJECTIVE:-val_loss}"
SPACE="${SPACE:-tuning/search_space.json}"
RETRAIN_EPOCHS="${RETRAIN_EPOCHS:-8}"
CACHE_DIR="${CACHE_DIR:-$DIR/features}"
if [ -z "${KCAP:-}" ]; then
  if [ -x .venv/bin/kcap ]; then KCAP=.venv/bin/kcap; else KCAP=kcap; fi
fi

for path in "$DATA" "$BACKBONE"; do
  if [ ! -e "$path" ]; then
    echo "tune_flickr8k.sh: $path is missing; set KCAP_SHARED to the shared folder." >&2
    exit 2
  fi
done

# The data and model flags of the search and of the retrained run: one list, so they match.
FLAGS=(--data "$DATA" --format flickr8k --backbone "$BACKBONE" --cache-features --cache-dir "$CACHE_DIR"
       --min-word-count 3 --batch-size 64 --verbose 2)

RETRAIN=()
if [ "$RETRAIN_EPOCHS" != 0 ]; then
  RETRAIN=(--retrain-best "$DIR/best-run" --retrain-epochs "$RETRAIN_EPOCHS")
fi

echo "== Searching: $TUNER, $TRIALS trials of $EPOCHS epochs, by $OBJECTIVE, space $SPACE -> $DIR"
start=$(date +%s)
"$KCAP" tune --directory "$DIR" --tuner "$TUNER" --max-trials "$TRIALS" --epochs "$EPOCHS" \
  --objective "$OBJECTIVE" --search-space "$SPACE" "${RETRAIN[@]}" "${FLAGS[@]}"
echo "== Search (and retraining) took $(( $(date +%s) - start )) s; table in $DIR/summary.json"

if [ "$RETRAIN_EPOCHS" != 0 ]; then
  echo "== Scoring the retrained run on the test split"
  "$KCAP" evaluate --run-dir "$DIR/best-run" --split test --show 3
fi
