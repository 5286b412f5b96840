"""CPU benchmark: refineg's tagger (Lightning training path, TaggerPredictor) vs the plain Hugging Face recipe.

Variants, each in its own fresh subprocess so that peak RSS (``ru_maxrss``) is per variant:

- ``ours-train`` / ``ours-train-softmax``: ``TaggerModule`` (minilm + casing, CRF / softmax head) on
  ``GMNERDataModule`` batches (length-bucketed, dynamic padding), ``lightning.Trainer`` + ``TrainThroughput``.
- ``hf-trainer``: ``AutoModelForTokenClassification`` + ``transformers.Trainer`` +
  ``DataCollatorForTokenClassification`` (labels on the first subword, -100 elsewhere), timed between
  ``on_step_end`` calls after the warm-up steps.
- ``ours-infer``: ``TaggerPredictor(batch_size=64).predict`` on dev posts, plus single-post latency.
- ``hf-pipeline``: ``pipeline("token-classification", aggregation_strategy="first")`` on the same posts as text.
- with ``--quality``: ``quality-ours`` (CRF) and ``quality-hf`` train ``--epochs`` epochs and report dev MNER F1.

Usage:
    HF_HUB_OFFLINE=1 python bench/tagger_cpu.py --data sample --warmup 3 --steps 15 --infer-posts 150 --threads 2
    HF_HUB_OFFLINE=1 python bench/tagger_cpu.py --warmup 1 --steps 3 --posts 40 --infer-posts 20 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from machine import cpu_model  # bench/machine.py (the script folder is on sys.path)

FULL_ROOT = "/work/shared/data/twitter-gmner/Twitter10000_v2.0"
VARIANTS = ("ours-train", "ours-train-softmax", "hf-trainer", "ours-infer", "hf-pipeline")
QUALITY = ("quality-ours", "quality-hf")
SINGLE = 20  # posts for the single-post latency median


# ---------------------------------------------------------------------------------------------- shared helpers
def config(args: argparse.Namespace, head: str = "crf"):
    from refineg.config import load_config

    over = [f"model.head={head}", f"data.batch_size={args.batch_size}", "data.test=null"]
    if args.data == "full":
        over = ["data=twitter_gmner", f"data.root={args.data_root}"] + over
    if args.posts:
        over.append(f"data.gold_limit={args.posts}")
    return load_config(over)


def train_examples(cfg) -> list:
    """The training posts GMNERDataModule uses (same seeded ``gold_limit`` sample)."""
    from refineg.datamodules.gmner import read_split

    train = read_split(cfg.data, "train")
    if cfg.data.gold_limit is not None and cfg.data.gold_limit < len(train):
        train = random.Random(cfg.seed).sample(train, cfg.data.gold_limit)
    return train


def dev_examples(cfg, n: int | None = None) -> list:
    from refineg.datamodules.gmner import read_split

    dev = read_split(cfg.data, "dev")
    return dev[:n] if n else dev


def build_module(cfg):
    from omegaconf import OmegaConf

    from refineg.modules.tagger_module import TaggerModule

    return TaggerModule(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), list(cfg.data.types))


def fit_ours(cfg, callbacks: list, **limits):
    """refineg's training path without validation, checkpoints, logger or progress bar; returns the trainer."""
    import lightning as L

    from refineg.datamodules.gmner import GMNERDataModule

    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    dm = GMNERDataModule(cfg.data, cfg.model.encoder, cfg.model.word_dropout, cfg.seed)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        use_distributed_sampler=False,
        callbacks=callbacks,
        **limits,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


def hf_model(cfg):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from refineg.data import bio_labels
    from refineg.weights import resolve_encoder

    path = resolve_encoder(cfg.model.encoder)
    labels = bio_labels(list(cfg.data.types))
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={t: i for i, t in enumerate(labels)}
    )
    return model, AutoTokenizer.from_pretrained(path), labels


def hf_features(examples: list, tok, labels: list[str], max_length: int) -> list[dict]:
    """HF's token-classification recipe: label on each word's first subword, -100 on the others and specials."""
    from refineg.data.bio import entities_to_tags

    label_ids = {t: i for i, t in enumerate(labels)}
    enc = tok([list(e.tokens) for e in examples], is_split_into_words=True, truncation=True, max_length=max_length)
    feats = []
    for k, ex in enumerate(examples):
        tags = entities_to_tags(len(ex.tokens), ex.entities)
        prev, ids = None, []
        for w in enc.word_ids(k):
            ids.append(-100 if w is None or w == prev else label_ids[tags[w]])
            prev = w
        feats.append({**{key: enc[key][k] for key in enc.keys()}, "labels": ids})
    return feats


def hf_fit(cfg, args: argparse.Namespace, feats: list[dict], model, tok, **schedule):
    """``transformers.Trainer`` with the brief's arguments; returns the per-step clock and per-batch counts."""
    from transformers import DataCollatorForTokenClassification, Trainer, TrainerCallback, TrainingArguments

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter())

    collate = DataCollatorForTokenClassification(tok)
    batches: list[tuple[int, int]] = []  # (posts, non-pad tokens) per collated batch, in consumption order

    def counting_collate(items):
        batch = collate(items)
        batches.append((len(items), int(batch["attention_mask"].sum())))
        return batch

    clock = StepClock()
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-bench-"),
        seed=cfg.seed,
        per_device_train_batch_size=args.batch_size,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **schedule,
    )
    Trainer(model=model, args=targs, train_dataset=feats, data_collator=counting_collate, callbacks=[clock]).train()
    return clock.times, batches


def hf_decode(model, tok, examples: list, labels: list[str], max_length: int, batch_size: int = 64) -> list:
    """Predicted posts from the first-subword argmax labels (words cut by truncation are ``O``)."""
    import torch

    from refineg.data import Example
    from refineg.data.bio import tags_to_entities

    model.eval()
    out = []
    with torch.inference_mode():
        for lo in range(0, len(examples), batch_size):
            chunk = examples[lo : lo + batch_size]
            enc = tok(
                [list(e.tokens) for e in chunk],
                is_split_into_words=True,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            pred = model(**enc).logits.argmax(-1).tolist()
            for k, ex in enumerate(chunk):
                tags, prev = ["O"] * len(ex.tokens), None
                for pos, w in enumerate(enc.word_ids(k)):
                    if w is not None and w != prev:
                        tags[w] = labels[pred[k][pos]]
                    prev = w
                out.append(Example(ex.id, ex.tokens, ex.image, tags_to_entities(tags), source="predicted"))
    return out


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def mner(golds: list, preds: list, types: list[str]) -> dict:
    from refineg.metrics import evaluate_examples

    m = evaluate_examples(golds, preds, types=types)["mner"]
    return {"dev_mner_f1": m["f1"], "dev_mner_precision": m["precision"], "dev_mner_recall": m["recall"]}


# ---------------------------------------------------------------------------------------------- variants
def ours_train(args: argparse.Namespace, head: str) -> list[dict]:
    from refineg.callbacks import TrainThroughput

    throughput = TrainThroughput(warmup=args.warmup)
    trainer = fit_ours(config(args, head), [throughput], max_steps=args.warmup + args.steps)
    s = throughput.summary
    row = {
        "variant": "ours-train" + ("-softmax" if head == "softmax" else ""),
        "posts_per_s": s["posts_per_s"],
        "tokens_per_s": s["tokens_per_s"],
        "timed_seconds": s["seconds"],
        "timed_posts": s["posts"],
    }
    epoch = trainer.datamodule.steps_per_epoch(0)
    if args.warmup + args.steps > epoch:
        row["note"] = (
            f"{args.warmup}+{args.steps} steps exceed one epoch ({epoch} batches): TrainThroughput skips "
            f"{args.warmup} steps again in every epoch, so fewer steps were timed"
        )
    return [row]


def hf_trainer(args: argparse.Namespace) -> list[dict]:
    cfg = config(args)
    model, tok, labels = hf_model(cfg)
    feats = hf_features(train_examples(cfg), tok, labels, cfg.data.max_length)
    times, batches = hf_fit(cfg, args, feats, model, tok, max_steps=args.warmup + args.steps)
    w, n = args.warmup, args.steps  # step k (1-based) ends at times[k - 1] and consumed batches[k - 1]
    secs = times[w + n - 1] - times[w - 1]
    posts = sum(b[0] for b in batches[w : w + n])
    tokens = sum(b[1] for b in batches[w : w + n])
    return [
        {
            "variant": "hf-trainer",
            "posts_per_s": posts / secs,
            "tokens_per_s": tokens / secs,
            "timed_seconds": secs,
            "timed_posts": posts,
        }
    ]


def ours_infer(args: argparse.Namespace) -> list[dict]:
    from refineg.inference.predictor import TaggerPredictor

    cfg = config(args)
    dev = dev_examples(cfg, args.infer_posts)
    predictor = TaggerPredictor(build_module(cfg), batch_size=64, max_length=cfg.data.max_length)
    predictor.predict(dev[:8], progress=False)  # warm-up
    secs = seconds(lambda: predictor.predict(dev, progress=False))
    single = [seconds(lambda p=p: predictor.predict([p], progress=False)) for p in dev[:SINGLE]]
    return [
        {
            "variant": "ours-infer (batch 64)",
            "posts_per_s": len(dev) / secs,
            "ms_per_post": 1e3 * secs / len(dev),
            "single_post_ms": 1e3 * statistics.median(single),
            "timed_posts": len(dev),
        }
    ]


def hf_pipeline(args: argparse.Namespace) -> list[dict]:
    from transformers import pipeline

    cfg = config(args)
    texts = [" ".join(e.tokens) for e in dev_examples(cfg, args.infer_posts)]
    model, tok, _ = hf_model(cfg)
    pipe = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="first", device=-1)
    pipe(texts[:8])  # warm-up
    single = 1e3 * statistics.median(seconds(lambda t=t: pipe(t)) for t in texts[:SINGLE])
    rows = []
    for name, kwargs in (("hf-pipeline (batch default)", {}), ("hf-pipeline (batch 64)", {"batch_size": 64})):
        secs = seconds(lambda kw=kwargs: pipe(texts, **kw))
        rows.append(
            {
                "variant": name,
                "posts_per_s": len(texts) / secs,
                "ms_per_post": 1e3 * secs / len(texts),
                "single_post_ms": single,
                "timed_posts": len(texts),
            }
        )
    return rows


def quality_ours(args: argparse.Namespace) -> list[dict]:
    from refineg.inference.predictor import TaggerPredictor

    cfg = config(args)
    start = time.perf_counter()
    module = fit_ours(cfg, [], max_epochs=args.epochs).lightning_module
    train_s = time.perf_counter() - start
    dev = dev_examples(cfg)
    preds = TaggerPredictor(module, batch_size=64, max_length=cfg.data.max_length).predict(dev, progress=False)
    return [
        {
            "variant": "quality-ours (crf)",
            "epochs": args.epochs,
            "train_seconds": train_s,
            **mner(dev, preds, list(cfg.data.types)),
        }
    ]


def quality_hf(args: argparse.Namespace) -> list[dict]:
    cfg = config(args)
    model, tok, labels = hf_model(cfg)
    feats = hf_features(train_examples(cfg), tok, labels, cfg.data.max_length)
    start = time.perf_counter()
    hf_fit(cfg, args, feats, model, tok, num_train_epochs=args.epochs, learning_rate=args.hf_lr)
    train_s = time.perf_counter() - start
    dev = dev_examples(cfg)
    preds = hf_decode(model, tok, dev, labels, cfg.data.max_length)
    return [
        {
            "variant": "quality-hf (trainer)",
            "epochs": args.epochs,
            "train_seconds": train_s,
            **mner(dev, preds, list(cfg.data.types)),
        }
    ]


RUNNERS = {
    "ours-train": lambda a: ours_train(a, "crf"),
    "ours-train-softmax": lambda a: ours_train(a, "softmax"),
    "hf-trainer": hf_trainer,
    "ours-infer": ours_infer,
    "hf-pipeline": hf_pipeline,
    "quality-ours": quality_ours,
    "quality-hf": quality_hf,
}


# ---------------------------------------------------------------------------------------------- driver
def child(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = RUNNERS[args.child](args)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    for row in rows:
        row["peak_rss_mib"] = rss
    Path(args.result).write_text(json.dumps({"rows": rows, "threads": torch.get_num_threads()}))


def run_variant(name: str) -> tuple[list[dict], int | None]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    cmd = [sys.executable, __file__, *sys.argv[1:], "--child", name, "--result", result]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"[{name}] running ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not Path(result).stat().st_size:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        print(f"[{name}] FAILED (exit {proc.returncode})\n" + "\n".join(tail), file=sys.stderr)
        return [{"variant": name, "error": "\n".join(tail)}], None
    out = json.loads(Path(result).read_text())
    os.unlink(result)
    print(f"[{name}] done in {wall:.1f} s", file=sys.stderr, flush=True)
    return [{**row, "process_wall_s": wall} for row in out["rows"]], out["threads"]


COLUMNS = (
    ("variant", "variant", "{}"),
    ("posts_per_s", "posts/s", "{:.1f}"),
    ("tokens_per_s", "tokens/s", "{:.0f}"),
    ("ms_per_post", "ms/post (batched)", "{:.2f}"),
    ("single_post_ms", "1-post ms (median)", "{:.1f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
    ("dev_mner_f1", "dev MNER F1", "{:.4f}"),
)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(c[1] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [
            "error" if "error" in row and key != "variant" else fmt.format(row[key]) if key in row else ""
            for key, _, fmt in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("sample", "full"), default="sample")
    parser.add_argument("--data-root", default=FULL_ROOT, help="Twitter-GMNER release folder for --data full")
    parser.add_argument("--posts", type=int, default=0, help="use a seeded sample of this many train posts (0 = all)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps before them (>= 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    parser.add_argument("--infer-posts", type=int, default=150, help="dev posts to tag (0 = all)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--quality", action="store_true", help="also train ours (CRF) and HF for --epochs; dev F1")
    parser.add_argument("--epochs", type=int, default=3, help="--quality training epochs")
    parser.add_argument("--hf-lr", type=float, default=5e-5, help="--quality HF learning rate")
    parser.add_argument("--out", default="docs/benchmarks-tagger-cpu.json")
    parser.add_argument("--child", choices=tuple(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    if args.child:
        return child(args)

    names = [v for v in args.variants.split(",") if v] + (list(QUALITY) if args.quality else [])
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(RUNNERS)}")
    rows, threads = [], None
    for name in names:
        got, t = run_variant(name)
        rows += got
        threads = threads or t

    import lightning
    import torch
    import transformers

    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "data": args.data,
        "train_posts": args.posts or "all",
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "infer_posts": args.infer_posts or "all",
        "quality_epochs": args.epochs if args.quality else None,
    }
    by = {r["variant"]: r for r in rows if "error" not in r}
    ratios = {
        "ours-train / hf-trainer posts/s": ("ours-train", "hf-trainer"),
        "ours-infer / hf-pipeline(batch 64) posts/s": ("ours-infer (batch 64)", "hf-pipeline (batch 64)"),
    }
    speedups = {k: by[a]["posts_per_s"] / by[b]["posts_per_s"] for k, (a, b) in ratios.items() if a in by and b in by}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows, "speedups": speedups}, indent=2) + "\n")
    print(
        f"\n{meta['cpu_model']}, {threads} torch threads, torch {meta['torch']}, transformers "
        f"{meta['transformers']}, lightning {meta['lightning']}; data={args.data}, batch {args.batch_size}, "
        f"{args.warmup} warm-up + {args.steps} timed steps\n"
    )
    print(markdown(rows))
    for row in rows:
        if "note" in row:
            print(f"\nnote ({row['variant']}): {row['note']}")
    for k, v in speedups.items():
        print(f"\n{k}: {v:.2f}x", end="")
    print(f"\n\nwritten: {out}")


if __name__ == "__main__":
    main()
