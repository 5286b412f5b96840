"""The ``refineg`` command line: ``refineg <subcommand> --help`` documents each subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from refineg.data import DataFormatError, ReadReport, create_data_format, read_jsonl
from refineg.errors import UsageError, error_line, run_reporting_errors
from refineg.logs import CHATTY_LOGGERS, quiet_chatty_loggers  # noqa: F401  (CHATTY_LOGGERS: public name)

SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def subcommand(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Registers a subcommand: ``add_args`` declares its options, the decorated function runs it."""

    def wrap(run: Callable[[argparse.Namespace], int]):
        SUBCOMMANDS[name] = (help_text, add_args, run)
        return run

    return wrap


def _parse_type_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--type-map expects FROM=TO, got {item!r}")
        src, dst = item.split("=", 1)
        out[src] = dst
    return out


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format", required=True, help="input format: twitter-gmner, conll, ccks, jsonl or flickr30k-entities"
    )
    p.add_argument("--txt", help="CoNLL txt file (twitter-gmner, conll)")
    p.add_argument("--xml-dir", help="Pascal-VOC xml folder (twitter-gmner; required unless --text-only)")
    p.add_argument(
        "--text-only", action="store_true", help="twitter-gmner without --xml-dir: write every entity without boxes"
    )
    p.add_argument("--text-json", help="sample_text.json (ccks)")
    p.add_argument("--entity-json", help="sample_entity.json (ccks)")
    p.add_argument("--input", help="canonical JSONL (jsonl); the dataset folder (flickr30k-entities)")
    p.add_argument("--type-map", nargs="*", default=["MISC=OTHER"], help="type renames for conll (default MISC=OTHER)")
    p.add_argument("--out", required=True, help="output file (JSONL, CoNLL txt or CCKS sample_text.json)")
    p.add_argument("--to", default="jsonl", help="output format: jsonl (default), conll, twitter-gmner or ccks")
    p.add_argument("--out-xml-dir", help="xml folder to write (--to twitter-gmner)")
    p.add_argument("--out-entity-json", help="sample_entity.json to write (--to ccks)")


@subcommand(
    "convert",
    "convert between Twitter-GMNER, CoNLL, CCKS2025 JSON and canonical JSONL (and read Flickr30k Entities)",
    _convert_args,
)
def convert(args: argparse.Namespace) -> int:
    """Reads ``--format`` input, writes ``--to`` output, prints counts and reader warnings."""
    report = ReadReport()
    writer = create_data_format(args.to).writer
    if writer is None:
        raise UsageError(f"format {args.to!r} is read-only; choose another --to")
    if args.format == "twitter-gmner":
        if not args.xml_dir and not args.text_only:
            raise UsageError(
                "--xml-dir is required for --format twitter-gmner (its boxes are there); pass "
                "--text-only to convert the text without any box"
            )
        examples = create_data_format("twitter-gmner").reader(_need(args, "txt"), args.xml_dir, report=report)
    elif args.format == "conll":
        examples = create_data_format("conll").reader(_need(args, "txt"), type_map=_parse_type_map(args.type_map))
    elif args.format == "ccks":
        examples = create_data_format("ccks").reader(_need(args, "text_json"), args.entity_json, report=report)
    elif args.format == "flickr30k-entities":
        examples = create_data_format(args.format).reader(_need(args, "input"), report=report)
    elif args.format == "jsonl":
        examples = read_jsonl(_need(args, "input"), report=report)
    else:
        examples = create_data_format(args.format).reader(_need(args, "input"))
    if args.to == "twitter-gmner":
        writer(examples, args.out, _need(args, "out_xml_dir"))
    elif args.to == "ccks":
        writer(examples, args.out, _need(args, "out_entity_json"))
    else:
        writer(examples, args.out)
    n_ent = sum(len(e.entities) for e in examples)
    n_box = sum(1 for e in examples for ent in e.entities if ent.boxes)
    print(f"wrote {len(examples)} posts, {n_ent} entities ({n_box} with boxes) to {args.out}")
    if report.counts:
        print("warnings (counted, see log for the first of each):\n" + report.summary())
    return 0


def _need(args: argparse.Namespace, name: str) -> str:
    value = getattr(args, name)
    if not value:
        raise UsageError(f"--{name.replace('_', '-')} is required for this format")
    return value


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gold", required=True, help="gold canonical JSONL")
    p.add_argument("--pred", required=True, help="predicted canonical JSONL")
    p.add_argument(
        "--match",
        default="span",
        choices=["span", "name"],
        help="span: token spans (Twitter-GMNER); name: surface string + label (CCKS2025)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


@subcommand("evaluate", "GMNER / MNER / EEG precision, recall and F1 of predictions against gold", _evaluate_args)
def evaluate(args: argparse.Namespace) -> int:
    """Scores ``--pred`` against ``--gold`` and prints a table or JSON.

    Gold files are strict; predictions may hold overlapping or duplicate entities, which are scored (each
    predicted triple counts, a duplicate is a false positive) and counted.
    """
    from refineg.metrics import evaluate_examples, format_scores

    golds, preds = read_jsonl(args.gold), read_jsonl(args.pred, allow_overlaps=True)
    try:
        result = evaluate_examples(golds, preds, match=args.match)
    except ValueError as err:
        raise DataFormatError(args.pred, str(err)) from None
    if args.json:
        print(json.dumps(result, indent=None))
    else:
        print(format_scores(result))
        overlaps = result["overlapping_predictions"]
        if overlaps["entities"]:
            posts = f"{overlaps['posts']} post{'s' if overlaps['posts'] != 1 else ''}"
            print(
                f"\nnote: {overlaps['entities']} predicted entities (in {posts}) overlap or repeat an earlier one; "
                "each was scored (a duplicate is a false positive)"
            )
    return 0


def _checkpoints_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--ckpt A [B ...]`` (repeatable; the values of every ``--ckpt`` are joined)."""
    p.add_argument("--ckpt", required=True, nargs="+", action="extend", help=help_text)


def _predict_args(p: argparse.ArgumentParser) -> None:
    _checkpoints_arg(
        p,
        "checkpoint written by train.py (e.g. runs/X/checkpoints/best-*.ckpt); several (same encoder and "
        "types, e.g. other seeds): tag with their ensemble (geometric mean of the CRFs, refineg.inference.ensemble)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="posts to tag: canonical JSONL, Twitter-GMNER txt or CoNLL txt")
    src.add_argument("--text", help="one post as raw text")
    p.add_argument("--format", default=None, help="input format (default: jsonl for .jsonl, else twitter-gmner)")
    p.add_argument("--xml-dir", help="xml folder when the input is Twitter-GMNER (gold boxes are not needed)")
    p.add_argument("--out", help="output canonical JSONL (required with --input)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="tag only the first N posts of --input")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--quantize",
        choices=["int8", "int8-per-tensor"],
        default=None,
        help="CPU only: dynamic int8 quantisation of the encoder; int8 = per-channel weights, within 0.1 "
        "F1 of float32 (int8-per-tensor: torch's default, ~2 F1 lower); see docs/benchmarks.md",
    )
    p.add_argument(
        "--runtime",
        choices=["torch", "onnx"],
        default="torch",
        help="onnx: run the encoder and emission layer in ONNX Runtime on the CPU (pip install "
        "'refineg[onnx]'); the export is cached by weights hash in $REFINEG_ONNX_CACHE or <tmp>",
    )


@subcommand(
    "predict", "tag posts with a trained tagger and write canonical JSONL with per-entity scores", _predict_args
)
def predict(args: argparse.Namespace) -> int:
    """Tags ``--input`` (or ``--text``) and writes/prints the predictions."""
    import torch

    from refineg.data import Example, write_jsonl
    from refineg.data.tokenize import word_tokenize
    from refineg.inference.predictor import TaggerPredictor

    if args.text is not None:
        examples = [Example("text-0", word_tokenize(args.text), source="predicted")]
    else:
        if not args.out:
            raise UsageError("--out is required with --input")
        fmt = args.format or ("jsonl" if args.input.endswith(".jsonl") else "twitter-gmner")
        if fmt == "jsonl":
            examples = read_jsonl(args.input)
        elif fmt == "twitter-gmner":
            examples = create_data_format(fmt).reader(args.input, args.xml_dir, types=None)
        elif fmt == "conll":
            examples = create_data_format(fmt).reader(args.input, type_map={})
        else:
            raise UsageError(f"--format must be jsonl, twitter-gmner or conll, got {fmt!r}")
        if args.limit is not None:
            if args.limit < 1:
                raise UsageError(f"--limit must be >= 1, got {args.limit}")
            examples = examples[: args.limit]
    if args.runtime == "onnx":
        from refineg.inference.onnx_runtime import require_onnxruntime

        require_onnxruntime()  # before loading anything
    cpu_only = args.quantize or args.runtime == "onnx"
    device = args.device or ("cpu" if cpu_only else "cuda" if torch.cuda.is_available() else "cpu")
    if len(args.ckpt) > 1 and cpu_only:
        raise UsageError("--quantize and --runtime onnx take one --ckpt, not an ensemble")
    if len(args.ckpt) > 1:
        from refineg.inference.ensemble import ensemble_tagger

        try:
            module = ensemble_tagger(args.ckpt)
        except ValueError as err:
            raise UsageError(str(err)) from None
    else:
        from refineg.inference.predictor import load_tagger

        module = load_tagger(args.ckpt[0])
    predictor = TaggerPredictor(
        module,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=device,
        quantize=args.quantize,
        runtime=args.runtime,
    )
    preds = predictor.predict(examples, progress=args.text is None)
    if args.out:
        write_jsonl(preds, args.out)
        n = sum(len(p.entities) for p in preds)
        print(f"tagged {len(preds)} posts, {n} entities -> {args.out}")
    if args.text is not None:
        for ent in preds[0].entities:
            print(f"{ent.text(preds[0].tokens)}\t{ent.type}\t{ent.score:.3f}")
        if not preds[0].entities:
            print(f"no entity found in {len(preds[0].tokens)} words")
    return 0


def _soup_args(p: argparse.ArgumentParser) -> None:
    _checkpoints_arg(
        p,
        "two or more checkpoints of one architecture and entity types, best trained with one model.init_seed "
        "(other seeds)",
    )
    p.add_argument("--out", required=True, help="the averaged checkpoint to write (.ckpt)")
    p.add_argument("--dev", help="gold canonical JSONL: score every member and the soup (MNER F1)")
    p.add_argument(
        "--greedy",
        action="store_true",
        help="with --dev: add the members best first, each only if the soup's dev F1 does not drop (selects on "
        "--dev, so the soup's score there is optimistic)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--device", default=None, help="torch device for --dev (default: cuda when available, else cpu)")


@subcommand(
    "soup",
    "average the weights of several trained taggers into one (a model soup: one tagger's inference cost)",
    _soup_args,
)
def soup_cmd(args: argparse.Namespace) -> int:
    """Writes the uniform (or, with ``--greedy``, the greedy) soup of ``--ckpt`` and prints the dev scores."""
    import torch

    from refineg.inference.predictor import checkpoint_mner_f1
    from refineg.inference.soup import check_out, greedy_order, write_soup

    if len(args.ckpt) < 2:
        raise UsageError(f"--ckpt: a soup needs at least 2 checkpoints, got {len(args.ckpt)}")
    if args.greedy and not args.dev:
        raise UsageError("--greedy needs --dev (it keeps the members that do not lower the dev score)")
    try:
        check_out(args.out)  # before --greedy scores the members
    except ValueError as err:
        raise UsageError(str(err)) from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gold = read_jsonl(args.dev) if args.dev else []

    def dev_f1(path: Path) -> float:
        return checkpoint_mner_f1(path, gold, args.batch_size, args.max_length, device)

    members = list(args.ckpt)
    try:
        if args.greedy:
            members, log = greedy_order(members, dev_f1, Path(args.out).parent)
            for rec in log:
                soup = "" if "soup" not in rec else f"  soup with it {100 * rec['soup']:.2f}"
                print(f"{100 * rec['own']:6.2f}{soup}  {'kept' if rec['kept'] else 'left out'}  {rec['checkpoint']}")
        out = write_soup(members, args.out)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.dev:
        if not args.greedy:
            for path in members:
                print(f"{100 * dev_f1(Path(path)):6.2f}  {path}")
        print(f"{100 * dev_f1(out):6.2f}  soup of {len(members)} -> {out}  (dev MNER F1, {args.dev})")
    else:
        print(f"soup of {len(members)} -> {out}")
    return 0


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="tagger checkpoint")
    p.add_argument("--data", required=True, help="gold canonical JSONL (dev)")
    p.add_argument("--out-dir", default=None, help="report folder (default: <ckpt folder>/calibration)")
    p.add_argument(
        "--heads",
        default=None,
        help="comma-separated uncertainty heads (default: every head that needs only the checkpoint)",
    )
    p.add_argument(
        "--head-kwargs",
        default="{}",
        help='JSON {head: {kwarg: value}}, e.g. \'{"mc_dropout": {"samples": 16, "dropout": 0.1}}\'',
    )
    p.add_argument("--ensemble", nargs="*", default=None, help="member checkpoints: adds the ensemble head")
    p.add_argument(
        "--fit",
        action="append",
        default=None,
        metavar="HEAD=TRAIN_JSONL",
        help="fit an uncertainty head that learns (evidential, learned) on these labelled posts, save it in the "
        "report folder as <head>.pt/.json and add it; its fit settings come from --head-kwargs' fit_<head> entry",
    )
    p.add_argument("--evidential", default=None, help='alias: --head-kwargs \'{"evidential": {"path": E}}\'')
    p.add_argument("--fit-evidential", default=None, metavar="TRAIN_JSONL", help="alias: --fit evidential=TRAIN_JSONL")
    p.add_argument("--fit-temperature", action="store_true", help="fit a temperature on --data, report heads again")
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)


def _fit_item(raw: str) -> tuple[str, str]:
    """``HEAD=TRAIN_JSONL`` of ``refineg calibrate --fit``.

    Raises:
        UsageError: No ``=`` or an empty side.
    """
    name, sep, path = raw.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise UsageError(f"--fit {raw!r}: expected HEAD=TRAIN_JSONL, e.g. --fit evidential=train.jsonl")
    return name.strip(), path.strip()


@subcommand(
    "calibrate",
    "per uncertainty head: error-detection AUROC, ECE, risk-coverage/AURC; JSON + PNG plots",
    _calibrate_args,
)
def calibrate_cmd(args: argparse.Namespace) -> int:
    """Scores the uncertainty heads of ``--ckpt`` on ``--data`` and writes the report."""
    from refineg.data.files import torch_archive
    from refineg.inference.predictor import load_tagger
    from refineg.stages.refinement.calibrate import calibrate, default_heads, summary_table

    for ckpt in [args.ckpt, *(args.ensemble or [])]:  # predict's checks (missing file, not a checkpoint), up front
        torch_archive(ckpt)
    if args.evidential:
        from refineg.inference.uncertainty.evidential import check_evidential_file

        check_evidential_file(args.evidential)
    examples = read_jsonl(args.data)
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.ckpt).resolve().parent / "calibration"
    try:
        extra = json.loads(args.head_kwargs)
    except json.JSONDecodeError as err:
        raise UsageError(f"--head-kwargs is not JSON ({err}): {args.head_kwargs!r}") from None
    if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
        raise UsageError(f"--head-kwargs must be a JSON object {{head: {{kwarg: value}}}}, got {args.head_kwargs!r}")
    fits = [_fit_item(raw) for raw in args.fit or []]
    if args.fit_evidential:  # kept as an alias: docs/results.md and docs/refinement.md use it
        fits.append(("evidential", args.fit_evidential))
    heads = None
    if args.heads:
        heads = {h.strip(): dict(extra.get(h.strip(), {})) for h in args.heads.split(",") if h.strip()}
    if args.ensemble or args.evidential or fits or (extra and heads is None):
        from refineg.inference.uncertainty import UNCERTAINTY_HEADS

        module = load_tagger(args.ckpt).eval()
        if heads is None:
            heads = {k: {**v, **extra.get(k, {})} for k, v in default_heads(module).items()}
        if args.ensemble:
            heads["ensemble"] = {"checkpoints": list(args.ensemble), **extra.get("ensemble", {})}
        for name, train in fits:
            head_cls = UNCERTAINTY_HEADS.get(name)
            if not head_cls.needs_fit:
                raise UsageError(f"--fit {name}: this uncertainty head learns nothing; list it in --heads instead")
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{name}{head_cls.state_suffix}"
            head_cls.fit(module, read_jsonl(train), **extra.get(f"fit_{name}", {})).save(path)
            heads[name] = {"path": str(path)}
        if args.evidential and "evidential" not in dict(fits):  # alias of the evidential head's path= setting
            heads["evidential"] = {"path": args.evidential}
    report = calibrate(
        args.ckpt,
        examples,
        out_dir,
        heads,
        args.fit_temperature,
        args.bins,
        args.batch_size,
        args.max_length,
        progress=True,
    )
    print(summary_table(report))
    print(f"\nreport: {out_dir / 'calibration.json'}; plots: reliability.png, risk_coverage.png")
    return 0


def llm_exit_status(stage: str, total: dict | None, kept: str) -> int:
    """Exit status of an LLM stage: 1, with a one-line error, when it sent requests and none got an answer.

    Args:
        stage: The command's name, for the message.
        total: The ``total`` section of the stage's LLM usage (``requests``, ``ok``, ``failures_by_kind``), or
            ``None`` when no LLM was involved.
        kept: What the stage wrote anyway, for the message.
    """
    from refineg.llm.usage import no_answer_problem

    problem = no_answer_problem(total)
    if problem is None:
        return 0
    print(f"error: {stage}: {problem}; {kept}", file=sys.stderr)
    return 1


def _usage_total(report: dict) -> dict | None:
    return (report.get("usage") or {}).get("total")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="training config: groups data=NAME model=NAME experiment=NAME (configs/), dotted keys "
        "data.root=DIR trainer.max_epochs=15, lists logger.tags+=TAG; None means null "
        "(refineg/config.py lists every key)",
    )


@subcommand("train", "train the small GMNER tagger (the same arguments as python train.py)", _train_args)
def train_cmd(args: argparse.Namespace) -> int:
    """Loads the training config from the overrides, trains and prints the dev/test scores.

    A config error prints one ``error: ...`` line and returns 2 (as every expected error of :mod:`refineg.errors`).
    """
    import os

    from refineg.config import load_config

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cfg = load_config(args.overrides)
    except ValueError as err:
        print(error_line(err), file=sys.stderr)
        return 2
    from refineg.training import print_summary, train

    result = train(cfg)
    if "dev" in result:
        print_summary(result)
    return 0


def _refine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="predicted canonical JSONL (with uncertainties, or set ckpt= head=)")
    p.add_argument("--out", required=True, help="refined canonical JSONL (a <out>.report.json is written next to it)")
    p.add_argument(
        "--gold",
        default=None,
        help="gold JSONL: print MNER/GMNER scores before and after; also the "
        "answers of the simulated backends (oracle, noisy-oracle)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="RefineConfig key=value overrides, e.g. tau=0.5 head=crf_marginal "
        "ckpt=C backend=oracle gold=dev.jsonl llm.model=M llm.base_url=U",
    )


@subcommand(
    "refine", "delegate uncertain entities to an MLLM (or a simulation) and merge its corrections", _refine_args
)
def refine_cmd(args: argparse.Namespace) -> int:
    """Runs the refinement stage on ``--pred`` and writes ``--out``."""
    from refineg.metrics import evaluate_examples
    from refineg.stages.refinement import load_refine_config, run_refine

    try:  # --gold also feeds the simulated backends (a gold= override wins)
        cfg = load_refine_config(args.overrides, base={"gold": args.gold} if args.gold else None)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.gold and cfg.gold != args.gold and cfg.backend != "mllm":
        print(f"note: the {cfg.backend} simulation answers from gold={cfg.gold}; scores use --gold {args.gold}")
    report = run_refine(cfg, args.pred, args.out)
    if report["simulated"]:
        print(f"SIMULATION: answers come from {report['backend']}, not from an MLLM")
    if report.get("mode") == "release":
        print(
            f"release mode: {report['posts_sent']} of {report['posts']} posts sent, {report['posts_replaced']} entity "
            f"lists replaced ({report['entities']} -> {report['entities_after']} entities), "
            f"{report['backend_failures_kept_small_model']} backend failures kept the small model's answer"
        )
    else:
        print(
            f"{report['delegated']} of {report['entities']} entities delegated "
            f"({100 * report['delegation_rate']:.1f}%), {report['over_budget']} over the call budget, "
            f"{report['backend_failures_kept_small_model']} backend failures kept the small model's answer"
        )
    for key, value in report["outcomes"].items():
        print(f"  {key:<28}{value:>7}")
    if args.gold:
        golds = read_jsonl(args.gold)
        before, after = evaluate_examples(golds, read_jsonl(args.pred)), evaluate_examples(golds, read_jsonl(args.out))
        note = f"  (simulation: {report['backend']})" if report["simulated"] else ""
        for task in ("mner", "gmner"):
            print(f"{task.upper()} F1: {100 * before[task]['f1']:.2f} -> {100 * after[task]['f1']:.2f}{note}")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.report.json')}")
    return llm_exit_status("refine", _usage_total(report), f"{args.out} keeps the small model's answers")


def _synthesize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seeds",
        help="gold seed posts (canonical JSONL); default: the training split of the data "
        "config (data=NAME data.root=... data.gold_limit=N seed=S pick it)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output JSONL of synthetic training posts; the report "
        "(<stem>.report.json/.txt), <stem>.dev.jsonl and <stem>_work/ go "
        "next to it",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. synthesizer=swap domain=ccks_military llm.model=NAME "
        "llm.base_url=URL n_reuse=20 n_new=10 dev_fraction=0.25 consistency.mode=drop "
        "(refineg/stages/synthesis/config.py lists every key)",
    )


@subcommand(
    "synthesize",
    "make labelled synthetic posts from gold seeds (LLM or LLM-free swap synthesiser), "
    "with generic-mention, length, duplicate and consistency filters",
    _synthesize_args,
)
def synthesize(args: argparse.Namespace) -> int:
    """Runs the synthesis stage and prints the report table."""
    from refineg.stages.synthesis import load_synthesis_config, run_synthesis

    overrides = list(args.overrides) + ([f"seeds={args.seeds}"] if args.seeds else [])
    try:
        cfg = load_synthesis_config(overrides)
    except ValueError as err:
        raise UsageError(str(err)) from None
    output = run_synthesis(cfg, args.out)
    print(output.report.table())
    written = [str(output.train)] + ([str(output.dev)] if output.dev else [])
    print(f"\nwrote {', '.join(written)}\nreport: {output.report_json}, {output.report_txt}")
    total = output.report.request_total()
    return llm_exit_status("synthesize", total, f"wrote {sum(output.report.kept.values())} posts")


def _ground_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="predicted (or refined) canonical JSONL whose entities are grounded")
    p.add_argument("--pool", required=True, help="labelled canonical JSONL (gold boxes): the demonstration pool")
    p.add_argument("--images", default=None, help="image folder (post images load lazily; missing ones answer none)")
    p.add_argument("--out", required=True, help="grounded canonical JSONL (a <stem>.summary.json goes next to it)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="GroundConfig overrides, e.g. mllm.llm.model=M mllm.llm.base_url=URL selector.k=3 "
        "selector.mode=text groundability_threshold=0.5 grounder.name=clip "
        "(refineg/stages/grounding/config.py lists every key)",
    )


@subcommand(
    "ground",
    "ground each entity to boxes in the post image (MLLM with selected demonstrations, or another registered grounder)",
    _ground_args,
)
def ground_cmd(args: argparse.Namespace) -> int:
    """Runs the grounding stage on ``--pred`` and writes ``--out``."""
    from refineg.stages.grounding import run_ground

    try:
        summary = run_ground(args.pred, args.pool, args.out, args.images, args.overrides)
    except DataFormatError:
        raise  # status 2, as every data error
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    print(f"grounder: {summary['grounder']}\nselector: {summary['selector']}")
    print(
        f"{summary['posts']} posts ({summary['posts_without_image']} without image), {summary['entities']} "
        f"entities, {summary['grounded']} grounded ({summary['boxes']} boxes), {summary['posts_failed']} posts "
        f"failed"
    )
    for reason, n in summary["none_by_reason"].items():
        print(f"  none: {reason:<22}{n:>7}")
    if summary.get("demos_without_image"):
        print(
            f"demonstrations: {summary['demos_without_image']} of {summary['demos_selected']} without an image "
            f"(left out); {summary['posts_without_usable_demos']} posts asked without any"
        )
    if "mllm" in summary:
        m = summary["mllm"]
        print(
            f"MLLM: {m['requests']} requests, {m['calls']} calls, {m['cache_hits']} cached, {m['failed']} failed, "
            f"tokens {m['prompt_tokens']} prompt + {m['completion_tokens']} completion"
        )
    print(f"wrote {args.out} and {summary['summary_path']}")
    return llm_exit_status("ground", _usage_total(summary), f"{args.out} answers none for the asked entities")


def _fit_region_scorer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        required=True,
        help="labelled posts (canonical JSONL with gold boxes); split by image "
        "into train and dev unless --train is given (then it is dev)",
    )
    p.add_argument("--images", required=True, help="folder of post images (Example.image is relative to it)")
    p.add_argument("--out", required=True, help="state file to write (load it with the clip grounder's state=)")
    p.add_argument(
        "--train",
        default=None,
        help="labelled posts to train the scoring head on (default: a seeded split of --data by image)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="e.g. model_name=ViT-B-32 pretrained=/path/open_clip.bin proposals=file "
        "proposal_kwargs.path=vinvl.jsonl head.epochs=20 limit=200 "
        "(refineg/stages/grounding/region_fit.py lists every key)",
    )


@subcommand(
    "fit-region-scorer",
    "fit the open_clip region scorer (grounder 'clip'): propose and embed boxes, "
    "train its scoring head, fit the none-threshold on dev",
    _fit_region_scorer_args,
)
def fit_region_scorer_cmd(args: argparse.Namespace) -> int:
    """Fits and saves the ``clip`` grounder's state, prints the dev report."""
    from refineg.stages.grounding.region_fit import fit_region_scorer, load_fit_config

    overrides = list(args.overrides) + ([f"train={args.train}"] if args.train else [])
    try:
        cfg = load_fit_config(overrides)
        report = fit_region_scorer(cfg, args.data, args.images, args.out)
    except DataFormatError:
        raise  # status 2, as every data error
    except ValueError as err:
        raise UsageError(str(err)) from None
    dev = report["dev"]
    print(
        f"{report['label']}: {report['dev_entities']} dev entities on {report['dev_images']} dev images "
        f"({report['dev_posts_without_image']} posts without image left out)"
    )
    if report.get("split", {}).get("dev") and report.get("dev_fraction") is not None:
        print(f"split by image (seed {report['split_seed']}): {report['split']['train']}, {report['split']['dev']}")
    threshold = report["threshold"]
    print(
        f"threshold {'none (always answer)' if threshold is None else f'{threshold:.4f}'}: dev Acc@{cfg.iou} "
        f"{_pct(dev['acc'])} of {dev['with_box']} phrases with a box, none-accuracy {_pct(dev['none_acc'])} of "
        f"{dev['without_box']} without; overall {_pct(dev['accuracy'])} ({report['seconds']:.0f} s)"
    )
    for etype, row in dev["per_type"].items():
        print(
            f"  {etype:<12} Acc {_pct(row['acc'])} ({row['with_box']})  none {_pct(row['none_acc'])} "
            f"({row['without_box']})"
        )
    print(f"wrote {args.out}")
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="experiment file, e.g. configs/pipeline/refineg_sample.yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="PipelineConfig overrides, e.g. refine.tau=0.3 stages.ground=false mode=zeroshot "
        "predict.head=entropy train.model.head=softmax train.data=twitter_gmner (refineg/stages/pipeline/config.py)",
    )


@subcommand(
    "pipeline",
    "synthesise -> train -> predict -> refine -> ground -> evaluate in one run folder; up-to-date stages are skipped",
    _pipeline_args,
)
def pipeline_cmd(args: argparse.Namespace) -> int:
    """Runs the stage chain and prints one line per stage and the final scores."""
    from refineg.stages.pipeline import StageFailedError, load_pipeline_config, run_pipeline

    try:
        cfg = load_pipeline_config(args.config, list(args.overrides))
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        summary = run_pipeline(cfg)
    except StageFailedError as err:
        _print_stage_table(err.summary or {})
        print(f"run folder: {cfg.run_dir}", flush=True)
        print(f"error: pipeline: stage {err.stage}: {err}", file=sys.stderr)
        return 1
    _print_stage_table(summary)
    scores, simulated = summary["scores"], summary.get("simulated") or {}
    if scores:
        label = f"{summary['final']} (SIMULATION)" if summary["final"] in simulated else summary["final"]
        print(f"\n{label}: " + "  ".join(f"{k.upper()} F1 {100 * v:.2f}" for k, v in scores.items()))
    if simulated:
        backend = next(iter(simulated.values()))
        print(
            f"SIMULATION: the refine stage's answers come from {backend}, not from an MLLM; the scores of "
            f"{' and '.join(simulated)} are simulated"
        )
    print(f"run folder: {summary['run_dir']} (summary.json, timings.json, evaluate/metrics.json)")
    return 0


def _print_stage_table(summary: dict) -> None:
    print(f"{'stage':<12}{'status':<10}{'now s':>9}{'made in s':>11}")
    for name, t in (summary.get("timings") or {}).get("stages", {}).items():
        print(f"{name:<12}{t['status']:<10}{t['wall_s']:>9.1f}{t['last_run_wall_s']:>11.1f}")


def _zeroshot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="posts to annotate (canonical JSONL)")
    p.add_argument("--out", required=True, help="predicted canonical JSONL (<out>.report.json is written next to it)")
    p.add_argument("--images", default=None, help="folder of the posts' images (Example.image is relative to it)")
    p.add_argument("--gold", default=None, help="gold JSONL: print GMNER/MNER/EEG scores")
    p.add_argument("--match", default="span", choices=["span", "name"], help="scorer matching (with --gold)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="ZeroShotConfig overrides, e.g. llm.model=M llm.base_url=U types=[PER,LOC,ORG,OTHER] "
        "max_posts=50 prompts_dir=DIR",
    )


@subcommand(
    "zeroshot", "the zero-shot MLLM baseline: the MLLM alone extracts entities, types and boxes", _zeroshot_args
)
def zeroshot_cmd(args: argparse.Namespace) -> int:
    """Runs the zero-shot baseline on ``--data`` and writes ``--out``."""
    from refineg.stages.zeroshot import load_zeroshot_config, run_zeroshot

    try:
        cfg = load_zeroshot_config(list(args.overrides) + ([f"images_dir={args.images}"] if args.images else []))
    except ValueError as err:
        raise UsageError(str(err)) from None
    report = run_zeroshot(cfg, args.data, args.out)
    print(
        f"{report['posts']} posts ({report['images_sent']} with image): {report['posts_ok']} answered, "
        f"{report['posts_unparseable']} unparseable, {report['posts_failed']} failed; "
        f"{report['entities_kept']} of {report['entities_returned']} returned entities kept "
        f"({report['entities_boxed']} with a box)"
    )
    for key, value in report["dropped_or_changed"].items():
        print(f"  {key:<20}{value:>7}")
    if args.gold:
        from refineg.metrics import evaluate_examples, format_scores

        print(format_scores(evaluate_examples(read_jsonl(args.gold), read_jsonl(args.out), match=args.match)))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.report.json')}")
    return llm_exit_status("zeroshot", _usage_total(report), f"{args.out} has no entities for the failed posts")


def _visualize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="predicted canonical JSONL")
    p.add_argument("--gold", required=True, help="gold canonical JSONL")
    p.add_argument("--images", default=None, help="image folder (posts without an image get a grey canvas)")
    p.add_argument("--out", required=True, help="output folder: <id>.png per post")
    p.add_argument("--ids", nargs="*", default=None, help="only these post ids")
    p.add_argument("--limit", type=int, default=None, help="at most this many posts")
    p.add_argument("--max-side", type=int, default=640, help="longest image side per panel in pixels")
    p.add_argument(
        "--calibration",
        default=None,
        help="calibration.json of refineg calibrate: also draw its reliability and risk-coverage plots into --out",
    )
    p.add_argument(
        "--wandb",
        action="store_true",
        help="also log the drawings (a table) and plots to W&B (offline unless WANDB_API_KEY or WANDB_MODE is set)",
    )
    p.add_argument("--project", default="refineg", help="W&B project")


@subcommand(
    "visualize",
    "draw gold (left) and predicted (right) boxes with entity labels on the post images; "
    "calibration plots; optionally to W&B",
    _visualize_args,
)
def visualize_cmd(args: argparse.Namespace) -> int:
    """Writes one side-by-side PNG per post (and the calibration plots)."""
    from refineg.viz import draw_posts

    golds, preds = read_jsonl(args.gold), read_jsonl(args.pred)
    heads = None
    if args.calibration:  # read before drawing anything
        from refineg.data.files import load_json

        calibration = load_json(args.calibration)
        if not isinstance(calibration, dict) or not isinstance(calibration.get("heads"), dict):
            raise DataFormatError(args.calibration, "not a calibration.json written by refineg calibrate (no 'heads')")
        heads = calibration["heads"]
    paths = draw_posts(golds, preds, args.out, args.images, args.ids, args.limit, args.max_side)
    plots: dict[str, Path] = {}
    if heads is not None:
        from refineg.stages.refinement.plots import plot_reliability, plot_risk_coverage

        plots["calibration/reliability"] = plot_reliability(heads, Path(args.out) / "reliability.png")
        plots["calibration/risk_coverage"] = plot_risk_coverage(heads, Path(args.out) / "risk_coverage.png")
    print(f"wrote {len(paths)} post drawings{' and 2 plots' if plots else ''} to {args.out}")
    if args.wandb:
        from refineg.viz.wandb_log import log_visuals

        by_id = {p.id: p for p in preds}
        drawn = {p.stem: p for p in paths}
        posts = [(g, by_id.get(g.id), drawn[g.id]) for g in golds if g.id in drawn]
        folder = log_visuals(posts, plots, args.out, args.project, name=f"visualize-{Path(args.out).name}")
        print(f"W&B run files: {folder}")
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run folder (train.py, refinement trial, or any folder with the artifacts)")
    p.add_argument("--posts", type=int, default=3, help="posts to draw gold vs predicted (0: none)")
    p.add_argument("--images", default=None, help="image folder (default: the run config's data.image_dir)")
    p.add_argument("--gold", default=None, help="gold canonical JSONL for the drawings (default: from the run config)")
    p.add_argument("--wandb", action="store_true", help="also log the report's images to W&B")
    p.add_argument("--project", default="refineg", help="W&B project")


@subcommand(
    "report",
    "write RUN_DIR/report.md: scores, per-type tables, calibration, delegation rate, MLLM calls and tokens, drawings",
    _report_args,
)
def report_cmd(args: argparse.Namespace) -> int:
    """Builds the run's Markdown report page."""
    from refineg.viz import build_report

    try:
        out = build_report(args.run_dir, args.posts, args.images, args.gold)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    print(f"wrote {out}")
    if args.wandb:
        from refineg.viz.wandb_log import log_visuals

        assets = out.parent / "report_assets"
        plots = {f"report/{p.stem}": p for p in sorted(assets.glob("*.png"))}
        plots.update({f"report/posts/{p.stem}": p for p in sorted((assets / "posts").glob("*.png"))})
        from refineg.viz.report import score_rows

        rows = score_rows(out.parent)
        tables = {"report/scores": (["split", "task", "precision", "recall", "f1"], rows)} if rows else {}
        folder = log_visuals([], plots, out.parent, args.project, name=f"report-{out.parent.name}", tables=tables)
        print(f"W&B run files: {folder}")
    return 0


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="W&B sweep YAML, e.g. configs/sweeps/heads.yaml")
    p.add_argument("--out", default=None, help="output folder (default: sweeps/<sweep name>)")
    p.add_argument(
        "--count",
        type=int,
        default=None,
        help="trials (random search; default the file's run_cap) or the first N grid points",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random search")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="key=value",
        help="fix a parameter for every trial (replaces the file's values), e.g. data.root=/data/gmner",
    )
    p.add_argument("--timeout", type=float, default=None, help="per-trial time limit in seconds")
    p.add_argument(
        "--columns",
        nargs="*",
        default=[],
        metavar="METRIC",
        help="more metrics to tabulate next to the sweep metric, e.g. delegation_rate before/gmner_f1",
    )
    p.add_argument("--dry-run", action="store_true", help="print the trials' commands, run nothing")


@subcommand(
    "sweep",
    "run a W&B sweep file locally (grid/random), one process per trial; resumable; writes "
    "results.csv and results.md ranked by the sweep metric",
    _sweep_args,
)
def sweep_cmd(args: argparse.Namespace) -> int:
    """Runs or resumes the sweep and prints the ranked table."""
    from refineg.sweeps import last_error_line, load_sweep, rank, run_sweep

    fixed = {}
    for item in args.set:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        fixed[key] = value
    try:
        spec = load_sweep(args.spec, fixed)
        out = Path(args.out or Path("sweeps") / spec.name)
        results = run_sweep(spec, out, args.count, args.seed, args.timeout, dry_run=args.dry_run, columns=args.columns)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.dry_run:
        for r in results:
            print(f"{r.name}: {' '.join(r.extra['command'])}")
        return 0
    print(f"{'rank':<5}{'trial':<32}{spec.metric:>20}  status")
    for i, r in enumerate(rank(spec, results), 1):
        value = "-" if r.metric is None else f"{r.metric:.4f}"
        print(f"{i:<5}{r.name:<32}{value:>20}  {r.status}")
        if r.status in ("failed", "no_metric") and r.error:
            print(f"{'':<5}  {last_error_line(r.error)}")
    print(f"\nresults: {out / 'results.csv'}, {out / 'results.md'}")
    return 0 if any(r.metric is not None for r in results) else 1


def _selftrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="training overrides as for train.py (data=NAME data.root=... data.gold_limit=500 run_name=NAME) plus "
        "data.unlabeled=FILE or data.unlabeled_from_train=true, selftrain.* (rounds, epochs, head, tau, "
        "selection, uncertain, outside_min, soft_targets, init, patience, ensemble, refine_backend) and refine.* "
        "for the delegation (refine.llm.model=M, refine.gold=FILE; refineg/stages/selftrain/config.py)",
    )


@subcommand(
    "selftrain",
    "self-training: pseudo-label unlabelled posts with the tagger, keep the confident labels by uncertainty, "
    "retrain on gold + pseudo-labels, round by round until dev MNER F1 stops improving",
    _selftrain_args,
)
def selftrain_cmd(args: argparse.Namespace) -> int:
    """Runs (or continues, same ``run_name``) the self-training rounds and prints one line per round."""
    from refineg.stages.selftrain import load_selftrain_config, run_selftrain

    try:
        cfg = load_selftrain_config(args.overrides)
    except ValueError as err:
        raise UsageError(str(err)) from None
    state = run_selftrain(cfg)
    print(f"{'round':<7}{'dev MNER F1':>12}{'pseudo posts':>14}{'entities':>10}{'precision':>11}{'seconds':>9}")
    for r in state["rounds"]:
        counts, quality = r.get("pseudo") or {}, r.get("pseudo_quality") or {}
        prec = quality.get("precision_kept")
        print(
            f"{r['round']:<7}{100 * r['dev_mner_f1']:>12.2f}{counts.get('posts', '-'):>14}"
            f"{counts.get('entities', '-'):>10}{'-' if prec is None else f'{100 * prec:.2f}':>11}{r['seconds']:>9.0f}"
        )
        if r.get("refinement_note"):
            print(f"       {r['refinement_note']}")
    best = state["best_round"]
    print(f"\nbest round {best}: dev MNER F1 {100 * state['best_dev_mner_f1']:.2f} ({state['stopped']})")
    print(f"per-round record: {Path(state['rounds'][0]['run_dir']).parent / 'selftrain.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``refineg`` argument parser with every registered subcommand."""
    from refineg import __version__

    parser = argparse.ArgumentParser(prog="refineg", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"refineg {__version__}")
    subs = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, run) in SUBCOMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        add_args(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``refineg`` console script.

    Exit status: 0; 2 with a one-line message for expected errors (bad data, a missing file or checkpoint, a missing
    extra, a replay cache miss: :mod:`refineg.errors`); 1 with a one-line message when an LLM stage (refine,
    zeroshot, ground, synthesize, or a stage of pipeline) sent requests and none got an answer (its outputs are
    written all the same; pipeline does not mark that stage done).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":  # every item after the command, in order: key=value and W&B's --key=value
        args.overrides = argv[argv.index("train") + 1 :]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    quiet_chatty_loggers(args.verbose)
    return run_reporting_errors(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
