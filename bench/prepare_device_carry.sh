#!/usr/bin/env bash
# Builds .devcarry/ (git-ignored) for bench/ddp_scaling.sh on a GPU machine without registry access:
# wheels the GPU image lacks, the Twitter-GMNER train/dev posts as canonical JSONL, and the MiniLM tokenizer files.
# Usage: bash bench/prepare_device_carry.sh /path/to/Twitter10000_v2.0
set -euo pipefail
R=${1:?release folder}
mkdir -p .devcarry/whl .devcarry/data .devcarry/tok
grep -qx '/.devcarry/' .git/info/exclude || echo /.devcarry/ >> .git/info/exclude
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .devcarry/whl omegaconf==2.4.0 defusedxml==0.7.1 pydantic==2.14.4 \
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
refineg convert --format twitter-gmner --txt "$R/txt/train.txt" --xml-dir "$R/xml" --out .devcarry/data/train.jsonl
refineg convert --format twitter-gmner --txt "$R/txt/dev.txt" --xml-dir "$R/xml" --out .devcarry/data/dev.jsonl
M=$(python -c "from refineg.modules.backbones import resolve_encoder; print(resolve_encoder('minilm'))")
cp "$M"/tokenizer.json "$M"/tokenizer_config.json "$M"/vocab.txt "$M"/special_tokens_map.json .devcarry/tok/
# MiniLM (the embedded default encoder) rounded to fp16: the 90 MB fp32 file exceeds the transfer limit; the backbone
# loads it back as fp32 (max abs weight difference 1e-3); bench/selftrain.py uses it by default.
if [ ! -f .devcarry/minilm/config.json ]; then
  python - <<'PY'
import shutil
from pathlib import Path

import torch
from transformers import AutoModel

from refineg.weights import resolve_encoder

src, dst = Path(resolve_encoder("minilm")), Path(".devcarry/minilm")
AutoModel.from_pretrained(src, dtype=torch.float32).half().save_pretrained(dst)
for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if (src / name).is_file():
        shutil.copy(src / name, dst / name)
PY
fi
