"""Share of real (non-pad) subwords and distinct batch shapes per epoch, by batch size, padding and packing.

CUDA-graph training (``cuda_graph=true``) records one graph per batch shape, and padding to a multiple cuts the
number of shapes but adds pad tokens that the GPU computes for nothing. Packing (``data.pack_length``) puts several
posts into each fixed-length row instead. This prints that trade-off for the training batches of one epoch, built
as ``train.py`` builds them.

Usage (repo root; any JSONL train split and tokenizer folder, e.g. the device carry's):
    HF_HUB_OFFLINE=1 python bench/padding_waste.py --root .devcarry/data --tokenizer .devcarry/tok
"""

from __future__ import annotations

import argparse

from refineg.config import load_config
from refineg.datamodules.gmner import GMNERDataModule

#: bucket:pad_to_multiple_of:pack_length; packing pads only the word length to the multiple
VARIANTS = ["true:0:0", "true:4:0", "true:8:0", "true:16:0", "true:16:128", "false:16:128", "false:16:256"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True, help="folder with train.jsonl")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder or hub name")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 512])
    p.add_argument(
        "--variants",
        nargs="+",
        default=VARIANTS,
        help="bucket:pad_to_multiple_of:pack_length triples, e.g. true:16:0 false:16:128",
    )
    args = p.parse_args()
    print(
        "| batch | bucket | pad_to_multiple_of | pack_length | real / computed subwords | distinct shapes per epoch |"
        "\n|---|---|---|---|---|---|"
    )
    for bs in args.batch_sizes:
        for variant in args.variants:
            bucket, pad, pack = variant.split(":")
            cfg = load_config(
                [
                    f"data.root={args.root}",
                    "data.format=jsonl",
                    "data.train=train.jsonl",
                    "data.dev=train.jsonl",
                    "data.test=null",
                    "data.xml_dir=null",
                    f"model.encoder={args.tokenizer}",
                    f"data.batch_size={bs}",
                    f"data.bucket={bucket}",
                    f"data.pad_to_multiple_of={pad}",
                    f"data.pack_length={pack}",
                ]
            )
            dm = GMNERDataModule(cfg.data, cfg.model.encoder)
            dm.setup("fit")
            real = padded = 0
            shapes = set()
            for batch in dm.train_dataloader():
                real += int(batch["attention_mask"].sum())
                padded += batch["attention_mask"].numel()
                shapes.add((tuple(batch["input_ids"].shape), tuple(batch["word_index"].shape)))
            print(f"| {bs} | {bucket} | {pad} | {pack} | {real / padded:.3f} | {len(shapes)} |")


if __name__ == "__main__":
    main()
