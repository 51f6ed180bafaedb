#!/usr/bin/env bash
# Quickstart command 1: set up (once), then run the main job end to end on the embedded default dataset.
# Re-running is safe: the dataset is generated once; the model is retrained from scratch every run.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh

PY=.venv/bin/python
export CTRKIT_NO_PROGRESS=${CTRKIT_NO_PROGRESS:-0}
DATA=data/synthetic
OUT=output/deepfm
TRAIN_ROWS=${TRAIN_ROWS:-400000}
TEST_ROWS=${TEST_ROWS:-100000}
CONFIG=models/rank/deepfm/config.yaml
step() { printf '\n==> %s\n' "$*"; }

step "generate the default dataset ($TRAIN_ROWS train rows, $TEST_ROWS test rows, slot format)"
marker="$DATA/.complete-$TRAIN_ROWS-$TEST_ROWS"
if [ ! -f "$marker" ]; then
  rm -rf "$DATA" && mkdir -p "$DATA"
  $PY tools/gen_data.py --rows "$TRAIN_ROWS" --seed 1 --format slot --out "$DATA/train" | tail -n 1 > "$DATA/train.stats.json"
  $PY tools/gen_data.py --rows "$TEST_ROWS" --seed 2 --format slot --out "$DATA/test" | tail -n 1 > "$DATA/test.stats.json"
  touch "$marker"
fi
echo "test set (ground truth known): $(cat "$DATA/test.stats.json")"

step "train DeepFM ($CONFIG)"
$PY tools/trainer.py -m "$CONFIG" -o runner.resume=false

step "evaluate on the test set"
$PY tools/infer.py -m "$CONFIG" | tail -n 1 | tee "$OUT/metrics.json"
$PY - "$OUT/metrics.json" "$DATA/test.stats.json" <<'PY'
import json, sys
metrics, best = (json.load(open(p)) for p in sys.argv[1:3])
print(f"DeepFM test AUC {metrics['auc']:.4f} (Bayes-optimal {best['bayes_auc']:.4f}, "
      f"{100 * metrics['auc'] / best['bayes_auc']:.1f}% of it), logloss {metrics['logloss']:.4f} "
      f"(Bayes {best['bayes_logloss']:.4f}) on {metrics['samples']} samples")
PY
