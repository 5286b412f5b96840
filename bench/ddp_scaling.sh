# DDP scaling of train.py on a multi-GPU machine (run from the repo root with .devcarry/ built by
# bench/prepare_device_carry.sh). Encoder: a BERT-large-sized config (24 layers, 1024 wide, ~335M parameters) with
# random weights (throughput only) + CRF, bf16-mixed, one epoch over the 7000 Twitter-GMNER train posts; writes the
# TrainThroughput summary of each run (posts/s, tokens/s over the steps after the first 5) to $OUT/throughput.txt.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpus.txt
python3 -c "import torch,transformers,lightning;print(torch.__version__,transformers.__version__,lightning.__version__)" | tee -a $OUT/gpus.txt
python3 - <<'PY'
import shutil, glob
from transformers import BertConfig, BertModel
import os; os.makedirs("/tmp/bl", exist_ok=True)
for f in glob.glob(".devcarry/tok/*"): shutil.copy(f, "/tmp/bl/")
cfg = BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
BertModel(cfg).save_pretrained("/tmp/bl")
PY
# B: per-GPU batch (default 32); EXTRA: more train.py overrides (e.g. "cudnn_attention=false").
B=${B:-32}
common="data.format=jsonl data.root=.devcarry/data data.train=train.jsonl data.dev=dev.jsonl data.test=null data.xml_dir=null model.encoder=/tmp/bl model.casing=false logger.wandb=false predict=false trainer.max_epochs=1 trainer.precision=bf16-mixed trainer.enable_progress_bar=false runs_dir=/tmp/runs trainer.accelerator=gpu ${EXTRA:-}"
runs="gpu1_b$B gpu2_b$((2 * B))"
python3 train.py $common run_name=gpu1_b$B data.batch_size=$B > $OUT/gpu1_b$B.log 2>&1
python3 train.py $common run_name=gpu2_b$((2 * B)) data.batch_size=$((2 * B)) trainer.devices=2 trainer.strategy=ddp > $OUT/gpu2_b$((2 * B)).log 2>&1
if [ "$B" = 32 ]; then
  python3 train.py $common run_name=gpu2_b32 data.batch_size=32 trainer.devices=2 trainer.strategy=ddp > $OUT/gpu2_b32.log 2>&1
  runs="$runs gpu2_b32"
fi
for r in $runs; do echo "$r $(python3 -c "import json;d=json.load(open('/tmp/runs/$r/metrics.json'));print(json.dumps(d['train_throughput']))")"; done | tee $OUT/throughput.txt
