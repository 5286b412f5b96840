"""A Markdown report page per run folder, built from whatever artifacts the run left.

``build_report(run_dir)`` writes ``<run_dir>/report.md`` and ``<run_dir>/report_assets/*.png``. It reads, when
present: ``config.yaml`` (what was trained), ``metrics.json`` (dev/test GMNER/MNER/EEG scores and per-type tables,
or the flat metrics of a refinement trial), ``**/calibration.json`` (uncertainty heads; its reliability and
risk-coverage plots are redrawn), ``**/*.report.json`` (refinement: delegation rate, outcomes, MLLM usage),
``**/*.summary.json`` of the grounding stage (grounded entities, MLLM usage), ``**/llm_usage.json`` (MLLM calls and
tokens per stage) and ``predictions_<split>.jsonl`` with the gold posts of the run's data config (side-by-side box
drawings of the first posts). Each missing artifact gets one line saying so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from refineg.data import Example, read_jsonl

logger = logging.getLogger(__name__)
ASSETS = "report_assets"
TASKS = ("gmner", "mner", "eeg")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _backend_label(backend: Any, simulated: Any) -> str:
    """The refinement backend's label, marked as a simulation when it is one (once)."""
    label = str(backend or "-")
    return label + " (simulation)" if simulated and "simulation" not in label.lower() else label


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return path.relative_to(run_dir).as_posix()
    except ValueError:
        return str(path)


def _json_files(run_dir: Path, pattern: str, key: str | None = None) -> list[tuple[Path, object]]:
    """``(path, parsed JSON)`` of the files under ``run_dir`` matching ``pattern``, the report's assets skipped.

    With ``key``, only JSON objects that have that key are kept.
    """
    found = []
    for path in sorted(p for p in run_dir.rglob(pattern) if ASSETS not in p.parts):
        data = json.loads(path.read_text())
        if key is None or (isinstance(data, dict) and key in data):
            found.append((path, data))
    return found


def score_tables(result: dict[str, Any], title: str) -> list[str]:
    """Markdown tables of one :func:`refineg.metrics.evaluate_examples` result (percentages)."""
    lines = [f"### {title}", "", "| task | P | R | F1 |", "|---|---|---|---|"]
    for task in TASKS:
        if task in result:
            s = result[task]
            lines.append(f"| {task.upper()} | {_pct(s['precision'])} | {_pct(s['recall'])} | {_pct(s['f1'])} |")
    if result.get("per_type"):
        lines += ["", "| type | GMNER F1 | MNER F1 | support |", "|---|---|---|---|"]
        for etype, s in result["per_type"].items():
            lines.append(
                f"| {etype} | {_pct(s.get('gmner_f1'))} | {_pct(s.get('mner_f1'))} | {s.get('support', '-')} |"
            )
    return lines + [""]


def _config_section(run_dir: Path) -> list[str]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return ["- no `config.yaml` (not a train.py run folder, or written by another stage)", ""]
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    if "mode" in cfg and "stages" in cfg:  # a refineg pipeline run folder
        switches = ", ".join(f"{k}={v}" for k, v in OmegaConf.to_container(cfg.stages).items())
        rows = [
            ("pipeline", f"{cfg.get('name')} (mode {cfg.mode}, seed {cfg.get('seed')})"),
            ("stages", switches),
            ("images", str(cfg.get("images"))),
        ]
        return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    if "model" not in cfg or "trainer" not in cfg:
        return [f"`config.yaml` keys: {', '.join(str(k) for k in cfg)}", ""]
    data = cfg.data
    rows = [
        ("data", f"{data.get('name')} (mixing {data.get('mixing')}, gold_limit {data.get('gold_limit')})"),
        ("model", f"{cfg.model.get('backbone')} / {cfg.model.get('encoder')} / head {cfg.model.get('head')}"),
        (
            "trainer",
            f"{cfg.trainer.get('max_epochs')} epochs, precision {cfg.trainer.get('precision')}, "
            f"batch {cfg.data.get('batch_size')}",
        ),
        ("seed", str(cfg.get("seed"))),
    ]
    return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]


def _pipeline_simulated(path: Path, metrics: dict[str, Any]) -> dict[str, str]:
    """``{stage: backend}`` of the scored outputs that rest on simulated refinement answers."""
    if "simulated" in metrics:
        return dict(metrics["simulated"] or {})
    from refineg.stages.pipeline.stages import simulated_outputs

    # a metrics.json written before the key existed: ask the refine stage's report
    return simulated_outputs(path.parent.parent, list(metrics.get("by_stage") or {}))


def _pipeline_scores(path: Path) -> list[str]:
    metrics = json.loads(path.read_text())
    by_stage = metrics.get("by_stage") or {}
    simulated = _pipeline_simulated(path, metrics)
    final = metrics.get("final")
    lines = [
        f"`refineg pipeline` scores on {metrics.get('posts')} {metrics.get('split')} posts "
        f"(match {metrics.get('match')}); final: **{final}**{' (simulation)' if final in simulated else ''}",
        "",
    ]
    if simulated:
        backend = _backend_label(next(iter(simulated.values())), True)
        lines += [
            f"**Simulation:** the refine stage's answers come from {backend}, not from an MLLM; the rows "
            "marked *(simulation)* are not MLLM results.",
            "",
        ]
    lines += ["| stage output | GMNER F1 | MNER F1 | EEG F1 |", "|---|---|---|---|"]
    for stage, r in by_stage.items():
        name = f"{stage} *(simulation)*" if stage in simulated else stage
        lines.append(f"| {name} | {_pct(r['gmner']['f1'])} | {_pct(r['mner']['f1'])} | {_pct(r['eeg']['f1'])} |")
    lines.append("")
    if final in by_stage:
        lines += score_tables(
            by_stage[final], f"final ({final}{', simulation' if final in simulated else ''}) scores (%)"
        )
    return lines


def _metrics_section(run_dir: Path) -> list[str]:
    path = run_dir / "metrics.json"
    if not path.is_file() and (run_dir / "evaluate" / "metrics.json").is_file():
        return _pipeline_scores(run_dir / "evaluate" / "metrics.json")
    if not path.is_file():
        return ["- no `metrics.json`: no scores (training did not finish, or predict=false)", ""]
    metrics = json.loads(path.read_text())
    lines: list[str] = []
    if "best_val_mner_f1" in metrics:
        lines += [
            f"Best validation MNER F1: **{_pct(metrics['best_val_mner_f1'])}**"
            f" (checkpoint `{Path(metrics.get('best_checkpoint') or '-').name}`)",
            "",
        ]
    tp = metrics.get("train_throughput") or {}
    if tp.get("posts_per_s"):
        lines += [f"Training throughput: {tp['posts_per_s']:.1f} posts/s", ""]
    for split in ("dev", "test"):
        if isinstance(metrics.get(split), dict) and "mner" in metrics[split]:
            lines += score_tables(metrics[split], f"{split} scores (%)")
    if "refined" in metrics:  # a refinement trial (refineg.sweeps.refine_trial)
        title = "### refinement trial (%)"
        if metrics.get("simulated"):
            title = (
                f"### refinement trial, simulation (%)\n\n**Simulation:** the refined scores come from "
                f"{_backend_label(metrics.get('backend'), True)}, not from an MLLM."
            )
        lines += [title, "", "| task | before | refined | gain |", "|---|---|---|---|"]
        for task in TASKS:
            key = f"{task}_f1"
            lines.append(
                f"| {task.upper()} F1 | {_pct(metrics['before'][key])} | {_pct(metrics['refined'][key])} "
                f"| {100 * metrics['gain'][key]:+.2f} |"
            )
        lines += [
            "",
            f"Delegation rate {_pct(metrics.get('delegation_rate'))}%, backend "
            f"{_backend_label(metrics.get('backend'), metrics.get('simulated'))}.",
            "",
        ]
    if not lines:
        lines = [f"- `metrics.json` has no score tables (keys: {', '.join(sorted(metrics))})", ""]
    return lines


def _calibration_section(run_dir: Path, assets: Path) -> list[str]:
    from refineg.stages.refinement.plots import plot_reliability, plot_risk_coverage

    files = _json_files(run_dir, "calibration.json")
    if not files:
        return ["- no `calibration.json` (run `refineg calibrate`)", ""]
    lines = []
    for i, (path, report) in enumerate(files):
        heads = report.get("heads") or {}
        lines += [
            f"From `{_rel(path, run_dir)}`: {report.get('posts')} posts, {report.get('entities')} predicted "
            f"entities, temperature {_num(report.get('temperature'))}.",
            "",
            "| head | field | n | error % | AUROC | ECE | AURC |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, rep in heads.items():
            for field, r in rep.items():
                err = None if r.get("error_rate") is None else r["error_rate"]
                lines.append(
                    f"| {name} | {field} | {r.get('n')} | {_pct(err)} | {_num(r.get('auroc'))} | "
                    f"{_num(r.get('ece'))} | {_num(r.get('aurc'))} |"
                )
        if heads:
            rel = plot_reliability(heads, assets / f"reliability_{i}.png")
            rc = plot_risk_coverage(heads, assets / f"risk_coverage_{i}.png")
            lines += ["", f"![reliability]({_rel(rel, run_dir)}) ![risk-coverage]({_rel(rc, run_dir)})"]
        lines.append("")
    return lines


def _usage_rows(usage: dict[str, Any]) -> list[str]:
    rows = []
    for name, s in [*(usage.get("stages") or {}).items(), ("total", usage.get("total") or {})]:
        if s:
            rows.append(
                f"| {name} | {s.get('requests', 0)} | {s.get('calls', 0)} | {s.get('cache_hits', 0)} | "
                f"{s.get('failed', 0)} | {s.get('budget_exhausted', 0)} | {s.get('prompt_tokens', 0)} | "
                f"{s.get('completion_tokens', 0)} |"
            )
    return rows


USAGE_HEADER = [
    "| stage | requests | calls | cached | failed | over budget | prompt tokens | completion tokens |",
    "|---|---|---|---|---|---|---|---|",
]


def _refinement_section(run_dir: Path) -> list[str]:
    reports = _json_files(run_dir, "*.report.json", "delegation_rate")
    if not reports:
        return ["- no refinement report (`<out>.report.json` of `refineg refine`)", ""]
    lines = [
        "| report | backend | entities | delegated | delegation % | over budget | backend failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, r in reports:
        backend = _backend_label(r.get("backend"), r.get("simulated"))
        lines.append(
            f"| `{_rel(path, run_dir)}` | {backend} | {r.get('entities')} | {r.get('delegated')} | "
            f"{_pct(r.get('delegation_rate'))} | {r.get('over_budget', 0)} | "
            f"{r.get('backend_failures_kept_small_model', 0)} |"
        )
    for path, r in reports:
        trial = path.parent / "metrics.json"  # a refinement sweep trial keeps its before/after scores there
        if trial.is_file() and "refined" in (scores := json.loads(trial.read_text())):
            label = "Simulated scores" if r.get("simulated") else "Scores"
            lines += [
                "",
                f"{label} of `{_rel(path, run_dir)}` (%): "
                + ", ".join(
                    f"{t.upper()} F1 {_pct(scores['before'][f'{t}_f1'])} -> {_pct(scores['refined'][f'{t}_f1'])}"
                    for t in TASKS
                ),
            ]
        if r.get("outcomes"):
            lines += [
                "",
                f"Outcomes of `{_rel(path, run_dir)}`: " + ", ".join(f"{k} {v}" for k, v in r["outcomes"].items()),
            ]
        if (r.get("usage") or {}).get("total"):
            lines += ["", f"MLLM usage of `{_rel(path, run_dir)}`:", "", *USAGE_HEADER, *_usage_rows(r["usage"])]
    return lines + [""]


def _grounding_section(run_dir: Path) -> list[str]:
    summaries = _json_files(run_dir, "*.summary.json", "grounder")
    if not summaries:
        return ["- no grounding summary (`<out stem>.summary.json` of `refineg ground`)", ""]
    lines = [
        "| summary | grounder | selector | posts | without image | entities | grounded | boxes | posts failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path, g in summaries:
        lines.append(
            f"| `{_rel(path, run_dir)}` | {g.get('grounder')} | {g.get('selector', '-')} | {g.get('posts')} | "
            f"{g.get('posts_without_image', '-')} | {g.get('entities')} | {g.get('grounded')} | "
            f"{g.get('boxes', '-')} | {g.get('posts_failed', '-')} |"
        )
    for path, g in summaries:
        if g.get("none_by_reason"):
            lines += [
                "",
                f"Entities answered none in `{_rel(path, run_dir)}`: "
                + ", ".join(f"{k} {v}" for k, v in g["none_by_reason"].items()),
            ]
        if (g.get("usage") or {}).get("total"):
            lines += ["", f"MLLM usage of `{_rel(path, run_dir)}`:", "", *USAGE_HEADER, *_usage_rows(g["usage"])]
    return lines + [""]


def _usage_section(run_dir: Path) -> list[str]:
    files = _json_files(run_dir, "llm_usage.json")
    if not files:
        return ["- no `llm_usage.json` (no MLLM/LLM calls were made from this folder)", ""]
    lines = []
    for path, usage in files:
        lines += [f"`{_rel(path, run_dir)}`:", "", *USAGE_HEADER, *_usage_rows(usage), ""]
    return lines


def _gold_for(run_dir: Path, split: str, gold_path: str | Path | None) -> list[Example] | None:
    if gold_path is not None:
        return read_jsonl(gold_path)
    for candidate in (run_dir / f"gold_{split}.jsonl",):
        if candidate.is_file():
            return read_jsonl(candidate)
    if (run_dir / "config.yaml").is_file():
        from omegaconf import OmegaConf

        from refineg.datamodules.gmner import read_split

        try:
            return read_split(OmegaConf.load(run_dir / "config.yaml").data, split)
        except (OSError, ValueError, KeyError) as err:
            logger.warning("report: cannot read the %s gold posts of %s: %s", split, run_dir, err)
    return None


def _pipeline_predictions(run_dir: Path) -> tuple[str, Path] | None:
    """``(label, final prediction file)`` of a ``refineg pipeline`` run folder, else ``None``."""
    path = run_dir / "evaluate" / "metrics.json"
    if not (path.is_file() and (run_dir / "data" / "eval.jsonl").is_file()):
        return None
    from refineg.stages.pipeline.stages import PREDICTION_FILES

    final = json.loads(path.read_text()).get("final")
    if final not in PREDICTION_FILES or not (run_dir / PREDICTION_FILES[final]).is_file():
        return None
    return f"{final} output", run_dir / PREDICTION_FILES[final]


def _examples_section(
    run_dir: Path, assets: Path, n_posts: int, images_dir: str | None, gold_path: str | Path | None
) -> list[str]:
    from .boxes import draw_posts

    pipeline = _pipeline_predictions(run_dir)
    split = next((s for s in ("dev", "test") if (run_dir / f"predictions_{s}.jsonl").is_file()), None)
    if pipeline is not None:
        split, pred_path = pipeline
    elif split is not None:
        pred_path = run_dir / f"predictions_{split}.jsonl"
    if split is None or n_posts <= 0:
        return [
            "- no `predictions_dev.jsonl` / `predictions_test.jsonl`: no drawings"
            if split is None
            else "- drawings turned off",
            "",
        ]
    golds = read_jsonl(run_dir / "data" / "eval.jsonl") if pipeline else _gold_for(run_dir, split, gold_path)
    if golds is None:
        return [f"- no gold posts for {split} (pass --gold): no drawings", ""]
    preds = read_jsonl(pred_path)
    if images_dir is None and (run_dir / "config.yaml").is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(run_dir / "config.yaml")
        images_dir = cfg.get("images") if pipeline else cfg.data.get("image_dir")
    # posts with a gold box first: they show the most
    chosen = [g.id for g in golds if any(e.boxes for e in g.entities)][:n_posts] or [g.id for g in golds][:n_posts]
    paths = draw_posts(golds, preds, assets / "posts", images_dir, ids=chosen)
    lines = [
        f"Gold (left) and predicted (right) entities of {len(paths)} posts ({split})"
        f"{'' if images_dir else ' (no image folder: grey canvases of the image size)'}:",
        "",
    ]
    return lines + [f"![{p.stem}]({_rel(p, run_dir)})" for p in paths] + [""]


def score_rows(run_dir: str | Path) -> list[list]:
    """``[split, task, P, R, F1]`` rows (fractions) of ``metrics.json``'s dev/test scores; ``[]`` without them."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return []
    metrics = json.loads(path.read_text())
    return [
        [split, task, s["precision"], s["recall"], s["f1"]]
        for split in ("dev", "test")
        if isinstance(metrics.get(split), dict)
        for task in TASKS
        if isinstance(s := metrics[split].get(task), dict)
    ]


def build_report(
    run_dir: str | Path, n_posts: int = 3, images_dir: str | None = None, gold: str | Path | None = None
) -> Path:
    """Writes ``<run_dir>/report.md`` (and ``report_assets/``) from the artifacts found in ``run_dir``.

    Args:
        run_dir: A run folder (train.py, a refinement trial, or any folder holding the artifacts).
        n_posts: Posts to draw gold vs predicted (0: none).
        images_dir: Image folder for the drawings (default: the run config's ``data.image_dir``).
        gold: Gold canonical JSONL for the drawings (default: ``gold_<split>.jsonl`` in the folder or the run
            config's data split).

    Returns:
        The report's path.

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a folder")
    assets = run_dir / ASSETS
    assets.mkdir(exist_ok=True)
    lines = [
        f"# Run report: `{run_dir.name}`",
        "",
        f"Folder: `{run_dir}`",
        "",
        "## Configuration",
        "",
        *_config_section(run_dir),
        "## Scores",
        "",
        *_metrics_section(run_dir),
        "## Uncertainty and calibration",
        "",
        *_calibration_section(run_dir, assets),
        "## Refinement (delegation to the MLLM)",
        "",
        *_refinement_section(run_dir),
        "## Grounding",
        "",
        *_grounding_section(run_dir),
        "## MLLM calls and tokens",
        "",
        *_usage_section(run_dir),
        "## Predictions",
        "",
        *_examples_section(run_dir, assets, n_posts, images_dir, gold),
    ]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out
