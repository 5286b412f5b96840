"""CPU inference: ``TaggerPredictor`` (torch float32/int8, ONNX Runtime float32/int8) vs the HF pipeline.

All in one process on the same dev posts:

- ``refineg`` / ``refineg int8``: a trained checkpoint (``--ckpt``), batches of 64 sorted by length; dev MNER F1
  of each, so int8's F1 cost is measured, not assumed. ``int8`` is ``quantize="int8"`` (per-channel 7-bit
  weights, 8-bit activations), ``int8 per-tensor`` is torch's default ``quantize_dynamic``.
- ``refineg (torchao int8)``: the float32 predictor with torchao's ``quantize_(backbone,
  Int8DynamicActivationInt8WeightConfig())`` applied to the encoder, run eagerly (per-row int8 weights, per-token
  int8 activations; torchao's candidate replacement for the deprecated ``quantize_dynamic``). Skipped without torchao.
- ``refineg (onnxruntime)`` / ``(onnxruntime int8)``: the same, with ``runtime="onnx"`` (the emission graph in
  ONNX Runtime, decoding in torch; int8 = ORT per-channel dynamic quantisation). The one-off export (cached
  by weights hash) happens before timing; its seconds are reported as ``setup_s``. Skipped without onnxruntime.
- ``hf pipeline``: ``AutoModelForTokenClassification`` on the checkpoint's encoder (the same architecture and
  size, a fresh classifier: speed only, its F1 means nothing), ``aggregation_strategy="first"``, at the
  pipeline's default batch size and at batch 64.

Single-post latency is the median over 20 posts tagged one at a time.

Usage:
    HF_HUB_OFFLINE=1 python bench/infer_throughput.py --ckpt runs/X/checkpoints/best.ckpt --dev dev.jsonl \\
        --threads 2 --out docs/benchmarks-infer-cpu.json [--variants float32,int8,pipeline]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py (the script folder is on sys.path)

SINGLE = 20
VARIANTS = {  # --variants key -> (row name, quantize, runtime); "pipeline" adds the two HF pipeline rows
    # quantize "torchao-int8" is applied by this script (torchao_int8), not by TaggerPredictor
    "float32": ("refineg (float32)", None, "torch"),
    "int8": ("refineg (int8 dynamic, per-channel)", "int8", "torch"),
    "int8-per-tensor": ("refineg (int8 dynamic, per-tensor)", "int8-per-tensor", "torch"),
    "onnx": ("refineg (onnxruntime)", None, "onnx"),
    "onnx-int8": ("refineg (onnxruntime int8 per-channel)", "int8", "onnx"),
    "torchao-int8": ("refineg (torchao int8 dynamic, eager)", "torchao-int8", "torch"),
}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ours(ckpt: str, dev: list, types: list[str], quantize: str | None, runtime: str = "torch") -> dict:
    from refineg.inference.predictor import TaggerPredictor
    from refineg.metrics import evaluate_examples

    start = time.perf_counter()
    own = None if quantize == "torchao-int8" else quantize
    predictor = TaggerPredictor.from_checkpoint(ckpt, batch_size=64, device="cpu", quantize=own, runtime=runtime)
    if quantize == "torchao-int8":
        torchao_int8(predictor.module.tagger)
    setup = time.perf_counter() - start
    predictor.predict(dev[:16], progress=False)  # warm-up
    preds: list = []
    secs = timed(lambda: preds.extend(predictor.predict(dev, progress=False)))
    single = [timed(lambda p=p: predictor.predict([p], progress=False)) for p in dev[:SINGLE]]
    mner = evaluate_examples(dev, preds, types=types)["mner"]
    return {
        "posts_per_s": len(dev) / secs,
        "single_post_ms": 1e3 * statistics.median(single),
        "dev_mner_f1": mner["f1"],
        "setup_s": setup,
    }


def torchao_int8(tagger) -> None:
    """Replaces the ``nn.Linear`` weights of ``tagger.backbone`` in place by torchao int8 tensors (dynamic
    per-token int8 activations, per-row int8 weights); the head and CRF stay float32, as in ``quantize_encoder``."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(tagger.backbone, Int8DynamicActivationInt8WeightConfig())


def hf_pipeline(ckpt: str, dev: list) -> list[tuple[str, dict]]:
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, pipeline

    from refineg.weights import resolve_encoder

    hparams = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    path = resolve_encoder(hparams["model"]["encoder"])
    model = AutoModelForTokenClassification.from_config(AutoConfig.from_pretrained(path, num_labels=9)).eval()
    pipe = pipeline(
        "token-classification",
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(path),
        aggregation_strategy="first",
        device=-1,
    )
    texts = [" ".join(p.tokens) for p in dev]
    pipe(texts[:16])
    single = 1e3 * statistics.median(timed(lambda t=t: pipe(t)) for t in texts[:SINGLE])
    rows = []
    for name, kwargs in (("hf pipeline (default batch)", {}), ("hf pipeline (batch 64)", {"batch_size": 64})):
        secs = timed(lambda kw=kwargs: pipe(texts, **kw))
        rows.append((name, {"posts_per_s": len(texts) / secs, "single_post_ms": single}))
    return rows


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--dev", required=True, help="canonical JSONL with gold entities")
    p.add_argument("--posts", type=int, default=0, help="first N dev posts (0 = all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/benchmarks-infer-cpu.json")
    p.add_argument(
        "--variants",
        default=",".join([*VARIANTS, "pipeline"]),
        help=f"comma-separated rows to run, in this order (default: all): {', '.join([*VARIANTS, 'pipeline'])}",
    )
    p.add_argument(
        "--engine",
        default=None,
        help="torch.backends.quantized.engine for the torch int8 rows (x86, fbgemm, onednn; default: torch's)",
    )
    args = p.parse_args()
    wanted = args.variants.split(",")
    unknown = set(wanted) - {*VARIANTS, "pipeline"}
    if unknown:
        p.error(f"unknown --variants {sorted(unknown)}; choose from {', '.join([*VARIANTS, 'pipeline'])}")
    import torch

    from refineg.data import read_jsonl

    torch.set_num_threads(args.threads)
    if args.engine:
        torch.backends.quantized.engine = args.engine
    dev = read_jsonl(args.dev)[: args.posts or None]
    types = sorted({e.type for post in dev for e in post.entities})
    rows = []
    for key in wanted:
        if key == "pipeline":
            rows += hf_pipeline(args.ckpt, dev)
            continue
        name, quantize, runtime = VARIANTS[key]
        if runtime == "onnx" and _version("onnxruntime") is None:
            print(f"onnxruntime not installed: {name} skipped (pip install 'refineg[onnx]')")
            continue
        if quantize == "torchao-int8" and _version("torchao") is None:
            print(f"torchao not installed: {name} skipped (pip install torchao)")
            continue
        rows.append((name, ours(args.ckpt, dev, types, quantize, runtime)))
    base = dict(rows).get("hf pipeline (batch 64)", {}).get("posts_per_s")
    result = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "posts": len(dev),
        "quantized_engine": torch.backends.quantized.engine,
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "torchao": _version("torchao"),
        "ckpt": args.ckpt,
        "rows": dict(rows),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("| variant | posts/s | vs pipeline (batch 64) | 1-post ms | dev MNER F1 |\n|---|---|---|---|---|")
    for name, r in rows:
        f1 = f"{100 * r['dev_mner_f1']:.2f}" if "dev_mner_f1" in r else "-"
        speed = f"{r['posts_per_s']:.1f} | " + (f"{r['posts_per_s'] / base:.2f}x" if base else "-")
        print(f"| {name} | {speed} | {r['single_post_ms']:.1f} | {f1} |")


if __name__ == "__main__":
    main()
