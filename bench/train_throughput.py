"""GPU training throughput: refineg's tagger (Lightning, CRF) vs transformers ``Trainer`` on the same encoder.

Both train an XLM-RoBERTa-large-sized encoder built from a config (random weights: throughput only) on real
Twitter-GMNER posts (token ids from the MiniLM WordPiece tokenizer, so lengths follow the data; XLM-R's own
sentencepiece model is not available offline), batch 32, bf16 mixed precision, gradient clipping 1.0.
Each variant runs in its own process; the script also measures the card's dense bf16 matmul rate and reports
model FLOP utilisation (MFU = 6 x non-embedding parameters x tokens/s / measured matmul rate).

Usage (GPU machine, repo root, .devcarry built by bench/prepare_device_carry.sh):
    python bench/train_throughput.py --steps 60 --warmup 15 --out $OUT/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ENC_DIR = Path("/tmp/xlmr_large_cfg")
TOK_DIR = Path(".devcarry/tok")
DATA = Path(".devcarry/data/train.jsonl")


def make_encoder_folder() -> None:
    from transformers import XLMRobertaConfig

    ENC_DIR.mkdir(parents=True, exist_ok=True)
    for f in TOK_DIR.iterdir():
        shutil.copy(f, ENC_DIR / f.name)
    XLMRobertaConfig(
        vocab_size=250002,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=0,
    ).save_pretrained(ENC_DIR)


def matmul_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    n = 50
    for _ in range(n):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * n / (time.perf_counter() - t) / 1e12


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def profile_report(prof, steps: int, wall_s: float) -> dict:
    """Top operators and how busy the GPU was over the profiled steps."""
    avgs = prof.key_averages()
    print(avgs.table(sort_by="self_cpu_time_total", row_limit=18))
    print(avgs.table(sort_by="self_device_time_total", row_limit=12))
    gpu_us = sum(e.self_device_time_total for e in avgs)
    kernels = sum(e.count for e in avgs if e.self_device_time_total > 0 and e.device_type.name == "CUDA")
    return {
        "profiled_steps": steps,
        "wall_ms_per_step": 1e3 * wall_s / steps,
        "gpu_busy_ms_per_step": gpu_us / 1e3 / steps,
        "kernels_per_step": kernels / steps,
    }


class StepProfiler:
    """Profiles ``active`` steps after ``wait`` steps; call :meth:`step` at every step end."""

    def __init__(self, wait: int, active: int = 5) -> None:
        import torch

        self.wait, self.active, self.n = wait, active, 0
        self.prof = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        )
        self.report: dict = {}
        self._t0 = 0.0

    def step(self) -> None:
        import torch

        self.n += 1
        if self.n == self.wait:
            torch.cuda.synchronize()
            self.prof.__enter__()
            self._t0 = time.perf_counter()
        elif self.n == self.wait + self.active:
            torch.cuda.synchronize()
            wall = time.perf_counter() - self._t0
            self.prof.__exit__(None, None, None)
            self.report = profile_report(self.prof, self.active, wall)


def run_ours(args) -> dict:
    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from refineg.callbacks import TrainThroughput
    from refineg.config import as_dictconfig, load_config
    from refineg.datamodules.gmner import GMNERDataModule
    from refineg.modules.tagger_module import TaggerModule

    cfg = as_dictconfig(
        load_config(
            [
                f"data.root={DATA.parent}",
                "data.format=jsonl",
                "data.train=train.jsonl",
                "data.dev=train.jsonl",
                "data.test=null",
                "data.xml_dir=null",
                f"model.encoder={ENC_DIR}",
                "model.casing=false",
                f"data.batch_size={args.batch_size}",
                f"model.head={args.head}",
                f"data.bucket={str(not args.no_bucket).lower()}",
                f"data.pad_to_multiple_of={args.pad_multiple}",
                f"data.pack_length={args.pack}",
                f"data.num_workers={args.workers}",
                f"optim.embedding_rows={args.embedding_rows}",
            ]
            + (["model.backbone_kwargs.packed_attention=varlen"] if args.varlen else [])
        )
    )
    module = TaggerModule(
        OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), list(cfg.data.types), pretrained=False
    )
    torch.backends.cuda.enable_cudnn_sdp(not args.no_cudnn)
    if args.compile != "none":
        from refineg.modules.compile import compile_tagger

        compile_tagger(module.tagger, args.compile, cuda_graph=args.cuda_graph)
    if args.cuda_graph:
        module.use_step_graph(clip=1.0)
    dm = GMNERDataModule(cfg.data, cfg.model.encoder)
    dm.setup()
    dm.encoded["dev"] = dm.encoded["dev"][:0]
    meter = TrainThroughput(warmup=args.warmup)
    callbacks: list = [meter]
    profiler = None
    if args.profile:
        profiler = StepProfiler(wait=args.warmup + 5)

        class ProfileSteps(L.Callback):
            def on_train_batch_end(self, *a, **k):
                profiler.step()

        callbacks.append(ProfileSteps())
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        gradient_clip_val=None if args.cuda_graph else 1.0,
        callbacks=callbacks,
        use_distributed_sampler=False,
        enable_model_summary=False,
    )
    torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=dm)
    out = dict(meter.summary)
    out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out["non_embedding_params"] = non_embedding_params(module.tagger.backbone)
    if profiler is not None:
        out["profile"] = profiler.report
    return out


def run_hf(args) -> dict:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from refineg.data import bio_labels, entities_to_tags, read_jsonl

    labels = bio_labels(["PER", "LOC", "ORG", "OTHER"])
    ids = {t: i for i, t in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(ENC_DIR)
    rows = []
    for ex in read_jsonl(DATA):
        enc = tok(ex.tokens, is_split_into_words=True, truncation=True, max_length=128)
        tags = entities_to_tags(len(ex.tokens), ex.entities)
        prev, lab = None, []
        for w in enc.word_ids():
            lab.append(-100 if w is None or w == prev else ids[tags[w]])
            prev = w
        rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": lab})
    model = AutoModelForTokenClassification.from_config(AutoConfig.from_pretrained(ENC_DIR, num_labels=len(labels)))

    profiler = StepProfiler(wait=args.warmup + 5) if args.profile else None

    class Meter(TrainerCallback):
        """Times steps warmup+1 .. warmup+steps, synchronising only at the two ends (as TrainThroughput does)."""

        def __init__(self):
            self.n, self.t0, self.t1 = 0, 0.0, 0.0

        def on_step_end(self, *a, **k):
            self.n += 1
            if self.n in (args.warmup, args.warmup + args.steps):
                torch.cuda.synchronize()
                if self.n == args.warmup:
                    self.t0 = time.perf_counter()
                else:
                    self.t1 = time.perf_counter()
            if profiler is not None:
                profiler.step()

    meter = Meter()
    targs = TrainingArguments(
        output_dir="/tmp/hf_out",
        per_device_train_batch_size=args.batch_size,
        bf16=True,
        max_steps=args.warmup + args.steps,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        max_grad_norm=1.0,
        seed=0,
    )
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=rows,
        callbacks=[meter],
        data_collator=DataCollatorForTokenClassification(tok),
    )
    trainer.train()
    seconds = meter.t1 - meter.t0
    # posts are drawn by a seeded random sampler: count real tokens of an average post for tokens/s
    mean_tokens = sum(len(r["input_ids"]) for r in rows) / len(rows)
    posts = args.steps * args.batch_size
    return {
        "posts_per_s": posts / seconds,
        "tokens_per_s": posts * mean_tokens / seconds,
        "seconds": seconds,
        "posts": posts,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "non_embedding_params": non_embedding_params(model.roberta),
        **({"profile": profiler.report} if profiler is not None else {}),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default=None)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--head", default="crf")
    p.add_argument("--compile", default="none", help="none, backbone, layers, tagger or cudagraphs")
    p.add_argument("--pad-multiple", type=int, default=0)
    p.add_argument("--graph-pad", type=int, default=16, help="pad_to_multiple_of of the step-graph variants")
    p.add_argument("--no-cudnn", action="store_true", help="SDPA without the cuDNN backend")
    p.add_argument("--cuda-graph", action="store_true", help="record the training step as CUDA graphs")
    p.add_argument("--no-bucket", action="store_true")
    p.add_argument("--pack", type=int, default=0, help="data.pack_length (0: one post per row)")
    p.add_argument("--pack-length", type=int, default=128, help="pack_length of the packed variants")
    p.add_argument("--varlen", action="store_true", help="packed rows through variable-length FlashAttention")
    p.add_argument("--workers", type=int, default=0, help="data.num_workers (collation in worker processes)")
    p.add_argument(
        "--embedding-rows",
        default="all",
        choices=("all", "active"),
        help="optim.embedding_rows: active trains only the word-embedding rows of the training data's ids",
    )
    p.add_argument("--profile", action="store_true", help="profile 5 steps of each variant")
    p.add_argument("--log-dir", help="write each variant's stdout/stderr (profiles) here")
    p.add_argument("--only", nargs="*", help="run only these variants (names of the plan)")
    p.add_argument("--exact", action="store_true", help="--only names whole variant names, not parts")
    p.add_argument("--out", default="train_throughput.json")
    args = p.parse_args()
    if args.variant == "ours":
        print("RESULT " + json.dumps(run_ours(args)))
        return
    if args.variant == "hf":
        print("RESULT " + json.dumps(run_hf(args)))
        return
    make_encoder_folder()
    rate = matmul_tflops()
    base = [
        sys.executable,
        __file__,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
    ] + (["--profile"] if args.profile else [])

    graph = ["--cuda-graph", "--pad-multiple", str(args.graph_pad), "--no-cudnn"]
    graph_packed = ["--variant", "ours", *graph, "--no-bucket", "--pack", str(args.pack_length)]
    active = ["--embedding-rows", "active"]  # optim.embedding_rows=active (refineg.modules.active_rows)
    plan = {
        "hf-trainer (linear head)": ["--variant", "hf"],
        "ours (CRF, bucketed)": ["--variant", "ours"],
        "ours (linear head, bucketed)": ["--variant", "ours", "--head", "softmax"],
        "ours (CRF, no bucketing)": ["--variant", "ours", "--no-bucket"],
        "ours (CRF, no cuDNN attention)": ["--variant", "ours", "--no-cudnn"],
        "ours (CRF, compile backbone)": ["--variant", "ours", "--compile", "backbone", "--no-cudnn"],
        "ours (CRF, compile layers)": ["--variant", "ours", "--compile", "layers", "--no-cudnn"],
        "ours (CRF, compile tagger, pad 32)": [
            "--variant",
            "ours",
            "--compile",
            "tagger",
            "--pad-multiple",
            "32",
            "--no-cudnn",
        ],
        "ours (CRF, CUDA graphs, pad 32)": [
            "--variant",
            "ours",
            "--compile",
            "cudagraphs",
            "--pad-multiple",
            "32",
            "--no-cudnn",
        ],
        "ours (CRF, step graph)": ["--variant", "ours", *graph],
        "ours (CRF, packed)": ["--variant", "ours", "--no-bucket", "--pack", str(args.pack_length), "--no-cudnn"],
        "ours (CRF, step graph, packed, varlen)": [*graph_packed, "--varlen"],
        "ours (CRF, step graph, packed)": graph_packed,
        "ours (CRF, step graph, packed, workers)": [*graph_packed, "--workers", "4"],
        "ours (CRF, step graph, packed, compile layers)": [*graph_packed, "--compile", "layers"],
        "ours (CRF, step graph, packed, compile layers, workers)": [
            *graph_packed,
            *("--compile", "layers", "--workers", "4"),
        ],
        "ours (CRF, step graph, packed, active rows)": [*graph_packed, *active],
        "ours (CRF, step graph, packed, compile layers, active rows)": [*graph_packed, "--compile", "layers", *active],
        "ours (CRF, step graph, packed, compile layers, workers, active rows)": [
            *graph_packed,
            *("--compile", "layers", "--workers", "4"),
            *active,
        ],
    }
    if args.only:
        match = (lambda o, k: o == k) if args.exact else (lambda o, k: o in k)
        plan = {k: v for k, v in plan.items() if any(match(o, k) for o in args.only)}
    results = {
        "bf16_matmul_tflops": rate,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "runs": {},
    }
    for name, extra in plan.items():
        proc = subprocess.run(base + extra, capture_output=True, text=True)
        if args.log_dir:
            slug = "".join(c if c.isalnum() else "_" for c in name)
            Path(args.log_dir, f"{slug}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            results["runs"][name] = {"error": proc.stderr[-2000:]}
            continue
        r = json.loads(line[0][7:])
        r["mfu"] = 6 * r["non_embedding_params"] * r["tokens_per_s"] / (rate * 1e12)
        results["runs"][name] = r
        Path(args.out).write_text(json.dumps(results, indent=2))
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"bf16 matmul: {rate:.0f} TFLOP/s")
    print("| variant | posts/s | tokens/s | peak GiB | MFU |\n|---|---|---|---|---|")
    for name, r in results["runs"].items():
        if "error" in r:
            print(f"| {name} | error: {r['error'].splitlines()[-1] if r['error'] else '?'} | | | |")
        else:
            print(
                f"| {name} | {r['posts_per_s']:.0f} | {r['tokens_per_s']:.0f} | {r['peak_mem_gib']:.1f} | "
                f"{100 * r['mfu']:.1f}% |"
            )


if __name__ == "__main__":
    main()
