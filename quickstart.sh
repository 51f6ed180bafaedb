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

step "export to a static inference model (+ Paddle Serving layout, ONNX), checked against dygraph"
$PY tools/to_static.py -m "$CONFIG" -o runner.model_init_path="$OUT/checkpoints/0" --output_dir "$OUT/inference" \
  --serving --onnx

step "predict the test set with Paddle Inference (tools/paddle_infer.py)"
$PY tools/paddle_infer.py --model_dir "$OUT/inference" --data_dir "$DATA/test" --batchsize 2048 \
  --enable_mkldnn True --cpu_threads 2 --output "$OUT/predictions.txt" --save_log_path "$OUT/paddle_infer.jsonl" \
  --benchmark True

step "serve the model over the Paddle Serving protocol and query it with tools/rec_client.py"
RPC_PORT=${RPC_PORT:-9393}
$PY -m serving.rpc --model "$OUT/inference/serving_server" --port "$RPC_PORT" > /dev/null 2> "$OUT/rpc_server.log" &
RPC_PID=$!
trap 'kill -TERM "$RPC_PID" 2> /dev/null || true' EXIT
CLIENT=(--client_config "$OUT/inference/serving_client/serving_client_conf.prototxt" --data_dir "$DATA/test" --batchsize 5)
$PY tools/rec_client.py "${CLIENT[@]}" --connect "127.0.0.1:$RPC_PORT" --client_mode rpc --requests 3 --verify --wait_ready 180
$PY tools/rec_client.py "${CLIENT[@]}" --connect "127.0.0.1:$((RPC_PORT + 1))" --client_mode http --requests 2
kill -TERM "$RPC_PID"; wait "$RPC_PID"   # graceful drain; a non-zero exit status fails the quickstart
trap - EXIT

step "serve the model over HTTP file upload: post the test data, print the top-ranked lines"
UPLOAD_PORT=${UPLOAD_PORT:-8867}
$PY -m serving.upload --model "$OUT/inference" --port "$UPLOAD_PORT" --upload_dir "$OUT/uploads" \
  > "$OUT/upload_service.log" 2>&1 &
UPLOAD_PID=$!
trap 'kill -TERM "$UPLOAD_PID" 2> /dev/null || true' EXIT
test_files=("$DATA"/test/*.txt)
$PY tools/upload_client.py --url "http://127.0.0.1:$UPLOAD_PORT" --file "${test_files[0]}" --top_k 5
kill -TERM "$UPLOAD_PID"; wait "$UPLOAD_PID"
trap - EXIT
echo "done: checkpoints, inference model and predictions are in $OUT/"
