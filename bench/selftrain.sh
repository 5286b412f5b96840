#!/usr/bin/env bash
# Self-training experiment (issue 20) on the lent GPU machine: run from the repo root with .devcarry/ built by
# bench/prepare_device_carry.sh (data, wheels, tokenizer, fp16 MiniLM copy). Writes $OUT/summary.{json,md},
# $OUT/runs/<group>-s<seed>.json (each run's per-round record), $OUT/logs/ and $OUT/gpus.txt.
# Arguments go to bench/selftrain.py (e.g. --groups g500 --seeds 1 2 3 --budget-s 510 --g500 selftrain.tau=0.1).
set -e
OUT=${OUT:-bench_selftrain}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/whl/*.whl 2>/dev/null || true
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.txt" 2>&1 || true
python3 -c "import torch,transformers,lightning;print(torch.__version__,transformers.__version__,lightning.__version__)" >> "$OUT/gpus.txt"
python3 bench/selftrain.py --out "$OUT" "$@"
