#!/usr/bin/env bash
# Builds .devcarry/ (git-ignored) for bench/ddp_scaling.sh on a GPU machine without registry access:
# wheels the GPU image lacks, the Twitter-GMNER train/dev posts as canonical JSONL, and the MiniLM tokenizer files.
# Usage: bash bench/prepare_device_carry.sh /path/to/Twitter10000_v2.0
set -euo pipefail
R=${1:?release folder}
mkdir -p .devcarry/whl .devcarry/data .devcarry/tok
grep -qx '/.devcarry/' .git/info/exclude || echo /.devcarry/ >> .git/info/exclude
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .devcarry/whl omegaconf==2.4.0 defusedxml==0.7.1
refineg convert --format twitter-gmner --txt "$R/txt/train.txt" --xml-dir "$R/xml" --out .devcarry/data/train.jsonl
refineg convert --format twitter-gmner --txt "$R/txt/dev.txt" --xml-dir "$R/xml" --out .devcarry/data/dev.jsonl
M=$(python -c "from refineg.modules.backbones import resolve_encoder; print(resolve_encoder('minilm'))")
cp "$M"/tokenizer.json "$M"/tokenizer_config.json "$M"/vocab.txt "$M"/special_tokens_map.json .devcarry/tok/
