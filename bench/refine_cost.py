"""MLLM calls and tokens per post: ReFineG's uncertainty delegation vs checking every predicted entity.

Both settings run the real refinement code (selection, prompts, merge) with the same simulated MLLM (``oracle`` or
``noisy-oracle``), so quality is compared at equal answer quality. Every check the simulation answers is turned into
the exact prompt the ``mllm`` backend would send (system + user text from ``configs/prompts/refinement``) and counted
with the packaged all-MiniLM-L6-v2 WordPiece tokenizer (an approximation of an MLLM's tokenizer; images not
included: each call would also carry one image). Answer tokens count the JSON answer without chain of thought.

    python bench/refine_cost.py --pred runs/bench/refineg_sample/predict/predictions.jsonl \
        --gold runs/bench/refineg_sample/data/eval.jsonl --out docs/pipeline_refine_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer  # noqa: E402

from refineg.data import read_jsonl  # noqa: E402
from refineg.metrics import evaluate_examples  # noqa: E402
from refineg.stages.refinement import RefinementPrompts, load_refine_config, refine_examples  # noqa: E402
from refineg.stages.refinement.backends import create_refinement_backend  # noqa: E402
from refineg.weights import resolve_encoder  # noqa: E402


class TokenCounter:
    """Wraps a simulation backend: answers as it does, and counts the prompts an MLLM would have been sent."""

    def __init__(self, backend, prompts: RefinementPrompts, tokenizer) -> None:
        self.backend, self.prompts, self.tok = backend, prompts, tokenizer
        self.label, self.simulated = backend.label, backend.simulated
        self.calls = {"span": 0, "type": 0}
        self.prompt_tokens = 0
        self.answer_tokens = 0
        self.posts: set[str] = set()

    def _count(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def _record(self, check: str, queries, answers, types) -> None:
        system = self._count(self.prompts.system)
        for q, a in zip(queries, answers):
            ent = q.entity.text(q.post.tokens)
            text = (
                self.prompts.span(q.post.tokens, ent, q.entity.type, types)
                if check == "span"
                else self.prompts.type_box(q.post.tokens, ent, q.entity.type, types, (1000, 750))
            )
            self.calls[check] += 1
            self.posts.add(q.post.id)
            self.prompt_tokens += system + self._count(text)
            answer = {k: v for k, v in (a.parsed or {}).items() if k != "reasoning_process"}
            self.answer_tokens += self._count(json.dumps(answer))

    def span_check(self, queries, types):
        answers = self.backend.span_check(queries, types)
        self._record("span", queries, answers, types)
        return answers

    def type_check(self, queries, types):
        answers = self.backend.type_check(queries, types)
        self._record("type", queries, answers, types)
        return answers

    def usage(self):
        return {}

    def close(self):
        self.backend.close()


def measure(preds, golds, gold_path: str, overrides: list[str], tokenizer) -> dict:
    """Refines ``preds`` with ``overrides`` and returns calls, tokens per post and scores."""
    cfg = load_refine_config([f"gold={gold_path}", *overrides])
    counter = TokenCounter(create_refinement_backend(cfg), RefinementPrompts.load(cfg.prompts_dir), tokenizer)
    refined, report = refine_examples(preds, cfg, counter, sorted({e.type for g in golds for e in g.entities}))
    n = len(preds)
    scores = evaluate_examples(golds, refined)
    calls = sum(counter.calls.values())
    return {
        "overrides": overrides,
        "delegated_entities": report["delegated"],
        "entities": report["entities"],
        "calls": calls,
        "span_calls": counter.calls["span"],
        "type_calls": counter.calls["type"],
        "posts_sent": len(counter.posts),
        "calls_per_post": calls / n,
        "prompt_tokens_per_post": counter.prompt_tokens / n,
        "answer_tokens_per_post": counter.answer_tokens / n,
        "mner_f1": scores["mner"]["f1"],
        "gmner_f1": scores["gmner"]["f1"],
        "eeg_f1": scores["eeg"]["f1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pred", required=True, help="predictions with uncertainties (the pipeline's predict stage)")
    parser.add_argument("--gold", required=True, help="gold posts of the same ids")
    parser.add_argument("--out", default=None, help="JSON file for the table")
    parser.add_argument(
        "--accuracy",
        type=float,
        nargs="*",
        default=[0.8, 1.0],
        help="simulated MLLM accuracies (1.0 = oracle, else noisy-oracle)",
    )
    args = parser.parse_args()
    preds, golds = read_jsonl(args.pred), read_jsonl(args.gold)
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder("minilm"))
    base = evaluate_examples(golds, preds)
    rows = []
    for acc in args.accuracy:
        backend = ["backend=oracle"] if acc >= 1.0 else ["backend=noisy-oracle", f"oracle_accuracy={acc}"]
        for setting, extra in (
            ("ReFineG delegation (tau=0.5)", ["tau=0.5"]),
            ("every entity (rate 1.0)", ["delegation_rate=1.0"]),
        ):
            row = measure(preds, golds, args.gold, [*backend, *extra], tokenizer)
            rows.append({"setting": setting, "simulated_accuracy": acc, **row})
    posts_with_entities = sum(1 for p in preds if p.entities)
    result = {
        "posts": len(preds),
        "entities": sum(len(p.entities) for p in preds),
        "posts_with_entities": posts_with_entities,
        "tagger": {t: base[t]["f1"] for t in ("mner", "gmner", "eeg")},
        "rows": rows,
    }
    print(
        f"{len(preds)} posts, {result['entities']} predicted entities, {posts_with_entities} posts with >= 1 "
        f"(the release's one call per such post: {posts_with_entities / len(preds):.2f} calls/post)"
    )
    print(f"tagger alone: MNER F1 {100 * base['mner']['f1']:.2f}  GMNER F1 {100 * base['gmner']['f1']:.2f}")
    print(
        f"{'setting':<30}{'acc':>5}{'deleg':>7}{'calls/post':>11}{'prompt tok/post':>16}{'answer tok/post':>16}"
        f"{'MNER F1':>9}{'GMNER F1':>10}"
    )
    for r in rows:
        print(
            f"{r['setting']:<30}{r['simulated_accuracy']:>5.1f}{r['delegated_entities']:>7}"
            f"{r['calls_per_post']:>11.2f}{r['prompt_tokens_per_post']:>16.1f}{r['answer_tokens_per_post']:>16.1f}"
            f"{100 * r['mner_f1']:>9.2f}{100 * r['gmner_f1']:>10.2f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
