# DDP scaling of train.py on a 2-GPU machine (run from the repo root with .devcarry/ built by
# bench/prepare_device_carry.sh). Encoder: a BERT-large-sized config (24 layers, 1024 wide, ~335M parameters) with
# random weights (throughput only) + CRF, bf16-mixed, one epoch over the 7000 Twitter-GMNER train posts; writes the
# TrainThroughput summary of each run (posts/s, tokens/s over the steps after the first 5) to $OUT/throughput.txt.
# B: per-GPU batch (default 32); EXTRA: overrides for every run (e.g. "data.num_workers=4");
# VARIANTS: ";"-separated override sets, one 2-GPU run each ("-" = none), e.g. "-;ddp.comm_hook=bf16".
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpus.txt
nvidia-smi topo -m | tee -a $OUT/gpus.txt
python3 -c "import torch,transformers,lightning;print(torch.__version__,transformers.__version__,lightning.__version__)" | tee -a $OUT/gpus.txt
python3 - <<'PY'
import shutil, glob
from transformers import BertConfig, BertModel
import os; os.makedirs("/tmp/bl", exist_ok=True)
for f in glob.glob(".devcarry/tok/*"): shutil.copy(f, "/tmp/bl/")
cfg = BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
BertModel(cfg).save_pretrained("/tmp/bl")
PY
B=${B:-32}
common="data.format=jsonl data.root=.devcarry/data data.train=train.jsonl data.dev=dev.jsonl data.test=null data.xml_dir=null model.encoder=/tmp/bl model.casing=false logger.wandb=false predict=false trainer.max_epochs=1 trainer.precision=bf16-mixed trainer.enable_progress_bar=false runs_dir=/tmp/runs trainer.accelerator=gpu data.batch_size=$B ${EXTRA:-}"
python3 train.py $common run_name=gpu1 > $OUT/gpu1.log 2>&1
echo "gpu1 $(python3 -c "import json;print(json.dumps(json.load(open('/tmp/runs/gpu1/metrics.json'))['train_throughput']))")" | tee $OUT/throughput.txt
i=0
IFS=';' read -ra vs <<< "${VARIANTS:--}"
for v in "${vs[@]}"; do
  i=$((i + 1)); [ "$v" = "-" ] && v=""
  # the global batch is 2 x B: each GPU gets B posts per step, as in the 1-GPU run
  python3 train.py $common run_name=gpu2_$i data.batch_size=$((2 * B)) trainer.devices=2 trainer.strategy=ddp $v > $OUT/gpu2_$i.log 2>&1 || tail -5 $OUT/gpu2_$i.log
  echo "gpu2 [$v] $(python3 -c "import json;print(json.dumps(json.load(open('/tmp/runs/gpu2_$i/metrics.json'))['train_throughput']))")" | tee -a $OUT/throughput.txt
done
