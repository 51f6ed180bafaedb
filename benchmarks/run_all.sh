#!/usr/bin/env bash
# Every performance number in the README, re-measured in one go on a quiet machine (about an hour here).
# Needs the quickstart's trained and exported DeepFM (./quickstart.sh). Outputs and logs: output/benchmarks/.
# Run one part with e.g.: benchmarks/run_all.sh parse serving
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MODEL=output/deepfm/inference
OUT=output/benchmarks
mkdir -p "$OUT"
[ -d "$MODEL" ] || { echo "run ./quickstart.sh first (it trains and exports $MODEL)" >&2; exit 2; }

run() {  # name, command...: log the command, the load before and after, and its output
  local name=$1; shift
  { echo "\$ $*"; echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"; } > "$OUT/$name.log"
  echo "==> $name: $*"
  "$@" 2>&1 | tee -a "$OUT/$name.log"
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/$name.log"
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(parse train paddle_infer serving upload matrix tutorial models)
for part in "${parts[@]}"; do
  case $part in
    parse)        run parse $PY benchmarks/parse_bench.py ;;
    train)        run train $PY benchmarks/train_bench.py ;;
    paddle_infer) run paddle_infer $PY benchmarks/paddle_infer_bench.py --model_dir "$MODEL" ;;
    serving)      run serving $PY benchmarks/serving_bench.py --model "$MODEL" --duration 10 --out "$OUT/serving.json" ;;
    upload)       run upload $PY benchmarks/upload_bench.py --model "$MODEL" ;;
    matrix)       run matrix $PY benchmarks/run.py --model "$MODEL" --profile full --out "$OUT/matrix" ;;
    tutorial)     run tutorial $PY benchmarks/run.py --model "$MODEL" --profile tutorial --out "$OUT/tutorial" ;;
    models)       run models $PY benchmarks/compare_models.py --rows 1000000 --test_rows 200000 ;;
    *) echo "unknown part $part (parse train paddle_infer serving upload matrix tutorial models)" >&2; exit 2 ;;
  esac
done
