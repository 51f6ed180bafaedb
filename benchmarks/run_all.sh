#!/usr/bin/env bash
# Every performance number in the README, re-measured in one go on a quiet machine (about 1 h 45 min on 2 cores).
# Needs the quickstart's trained and exported DeepFM with its ONNX copy (./quickstart.sh; to_static.py --onnx).
# Outputs and logs: output/benchmarks/ (each log starts with the command and the load average before and after).
# Run one part with e.g.: benchmarks/run_all.sh parse serving
# Issue 14's targets (ratios measured in one run): transport, upload, soak (10 min at 1,000 QPS), engines.
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
  local status=0
  "$@" 2>&1 | tee -a "$OUT/$name.log" || status=$?   # a missed target (exit 1) must not stop the other parts
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/$name.log"
  [ "$status" -eq 0 ] || { echo "exit status $status" >> "$OUT/$name.log"; echo "==> $name: exit status $status" >&2; }
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(parse train paddle_infer serving transport upload soak engines matrix tutorial models)
for part in "${parts[@]}"; do
  case $part in
    parse)        run parse $PY benchmarks/parse_bench.py ;;
    train)        run train $PY benchmarks/train_bench.py ;;
    paddle_infer) run paddle_infer $PY benchmarks/paddle_infer_bench.py --model_dir "$MODEL" ;;
    serving)      run serving $PY benchmarks/serving_bench.py --model "$MODEL" --duration 10 --out "$OUT/serving.json" ;;
    transport)    run transport $PY benchmarks/transport_bench.py --model "$MODEL" --duration 10 --repeats 3 \
                    --out "$OUT/transport.json" ;;
    upload)       run upload $PY benchmarks/upload_bench.py --model "$MODEL" --out "$OUT/upload.json"
                  run upload_onnxruntime $PY benchmarks/upload_bench.py --model "$MODEL" --backend onnxruntime \
                    --out "$OUT/upload_onnxruntime.json" ;;
    soak)         run soak_rpc $PY benchmarks/soak_bench.py --model "$MODEL" --server rpc --transport grpc \
                    --soak_seconds 600 --qps 1000 --out "$OUT/soak_rpc.json"
                  run soak_oip $PY benchmarks/soak_bench.py --model "$MODEL" --server oip --transport grpc \
                    --soak_seconds 600 --qps 1000 --out "$OUT/soak_oip.json" ;;
    engines)      run engines $PY benchmarks/engine_gap.py --model "$MODEL" --rounds 3 --out "$OUT/engine_gap.json"
                  run engines_2threads $PY benchmarks/engine_gap.py --model "$MODEL" --rounds 3 --threads 2 \
                    --out "$OUT/engine_gap_2threads.json" ;;
    matrix)       run matrix $PY benchmarks/run.py --model "$MODEL" --profile full --out "$OUT/matrix" ;;
    tutorial)     run tutorial $PY benchmarks/run.py --model "$MODEL" --profile tutorial --out "$OUT/tutorial" ;;
    models)       run models $PY benchmarks/compare_models.py --rows 1000000 --test_rows 200000 ;;
    *) echo "unknown part $part (parse train paddle_infer serving transport upload soak engines matrix tutorial" \
            "models)" >&2; exit 2 ;;
  esac
done
