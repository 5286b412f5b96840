"""Local sweep runner: every trial of a W&B sweep file as its own process, results ranked by the sweep metric.

Each trial gets the run name ``<sweep>-<index>-<hash of its values>`` through ``run_name=`` and the
``REFINEG_RUN_NAME`` environment variable, and ``runs_dir=<out>/runs`` (unless the sweep fixes ``runs_dir``), so its
``metrics.json`` lands in ``<out>/runs/<name>/``. A trial whose metric is already there is not run again; a failed
trial is recorded with its return code and the tail of its output, and the sweep goes on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .spec import SweepSpec

logger = logging.getLogger(__name__)


@dataclass
class TrialResult:
    """One trial's outcome.

    Attributes:
        index: Position in the expanded sweep.
        name: Run name (also the run folder's name).
        params: The sweep values of the trial.
        status: ``done`` (ran now), ``resumed`` (metric found from an earlier run), ``failed`` (non-zero exit or
            timeout), ``no_metric`` (exited 0 but the metric is missing).
        metric: The metric's value, or ``None``.
        returncode: Exit status (``None`` when not run now).
        seconds: Wall-clock seconds of the run now.
        error: Last lines of the trial's output when it failed.
        run_dir: The trial's run folder.
    """

    index: int
    name: str
    params: dict[str, Any]
    status: str
    metric: float | None = None
    returncode: int | None = None
    seconds: float = 0.0
    error: str = ""
    run_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def trial_name(sweep: str, index: int, params: dict[str, Any]) -> str:
    """``<sweep>-<index>-<6 hex digits of the values>``: stable across reruns of the same sweep."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{sweep}-{index:03d}-{digest}"


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    else:
        out[prefix] = obj
    return out


def read_metric(run_dir: str | Path, name: str) -> float | None:
    """The value of metric ``name`` for a finished run folder, or ``None``.

    Looks in ``metrics.json`` first (nested keys joined by ``/`` or ``.``: ``dev/gmner/f1``, ``best_val_mner_f1``),
    then in the CSV logger's ``csv/version_*/metrics.csv`` for the last logged value of the column (what W&B's
    run summary holds, e.g. ``val/mner_f1_best``).
    """
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if path.is_file():
        try:
            flat = _flatten(json.loads(path.read_text()))
        except json.JSONDecodeError:
            logger.warning("%s: not valid JSON", path)
            flat = {}
        for key in (name, name.replace(".", "/")):
            value = flat.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    last = None
    for csv_path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with csv_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get(name) not in (None, ""):
                    last = float(row[name])
    return last


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def last_error_line(error: str) -> str:
    """The last non-blank line of a failed trial's output tail (usually the exception or ``error: ...`` line)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    count: int | None = None,
    seed: int = 0,
    timeout_s: float | None = None,
    cwd: str | Path | None = None,
    dry_run: bool = False,
    env: dict[str, str] | None = None,
    columns: list[str] | None = None,
    on_trial: Callable[[TrialResult], None] | None = None,
) -> list[TrialResult]:
    """Runs (or resumes) every trial of ``spec`` one after the other and writes the ranked results.

    Args:
        spec: The sweep.
        out_dir: Receives ``runs/<trial>/``, ``logs/<trial>.log``, ``results.csv`` and ``results.md``.
        count: Trials to run (random search; default the file's ``run_cap``) or the first ``count`` grid points.
        seed: Seed of the random search.
        timeout_s: Per-trial time limit; a trial over it counts as failed.
        cwd: Working folder of the trials (default: the current one); ``program`` is relative to it.
        dry_run: Only list the trials and their commands (``status="planned"``), run nothing.
        env: Extra environment variables for the trials.
        columns: More metrics to show next to the sweep metric (read like it, e.g. ``delegation_rate``).
        on_trial: Called with each finished trial (progress reporting).

    Returns:
        Trial results in sweep order.
    """
    out_dir = Path(out_dir).resolve()
    runs_dir = out_dir / "runs"
    cwd = Path(cwd) if cwd else Path.cwd()
    results = []
    trials = spec.expand(count, seed)
    for index, params in enumerate(tqdm(trials, desc=f"sweep {spec.name}", disable=dry_run)):
        name = trial_name(spec.name, index, params)
        args = dict(params)
        args.setdefault("runs_dir", str(runs_dir))
        args["run_name"] = name
        run_dir = Path(args["runs_dir"]) / name
        if not run_dir.is_absolute():
            run_dir = cwd / run_dir
        argv = spec.command_for(args, cwd=cwd)
        result = TrialResult(index, name, params, "planned", run_dir=str(run_dir), extra={"command": argv})
        if dry_run:
            results.append(result)
            continue
        previous = read_metric(run_dir, spec.metric)
        if previous is not None:
            result.status, result.metric = "resumed", previous
        else:
            result = _run_trial(result, argv, spec.metric, out_dir, cwd, timeout_s, env)
        results.append(result)
        if on_trial:
            on_trial(result)
        write_results(spec, results, out_dir, columns)
    if not dry_run:
        write_results(spec, results, out_dir, columns)
    return results


def _run_trial(
    result: TrialResult,
    argv: list[str],
    metric: str,
    out_dir: Path,
    cwd: Path,
    timeout_s: float | None,
    env: dict[str, str] | None,
) -> TrialResult:
    log_path = out_dir / "logs" / f"{result.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    trial_env = {**os.environ, **(env or {}), "REFINEG_RUN_NAME": result.name}
    logger.info("trial %s: %s", result.name, " ".join(argv))
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, env=trial_env, capture_output=True, text=True, timeout=timeout_s)
        returncode, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        returncode = -9
        output = f"{err.stdout or ''}{err.stderr or ''}\ntimed out after {timeout_s} s"
        output = output if isinstance(output, str) else output.decode(errors="replace")
    except OSError as err:  # program or interpreter missing
        returncode, output = 127, str(err)
    result.seconds = time.perf_counter() - start
    result.returncode = returncode
    log_path.write_text(f"$ {' '.join(argv)}\n{output}")
    if returncode != 0:
        result.status, result.error = "failed", _tail(output)
        logger.warning(
            "trial %s failed (exit %s): %s; log: %s", result.name, returncode, last_error_line(result.error), log_path
        )
        return result
    result.metric = read_metric(result.run_dir, metric)
    if result.metric is None:
        result.status = "no_metric"
        result.error = f"exit 0 but {metric!r} is not in {result.run_dir}/metrics.json or its CSV logs"
    else:
        result.status = "done"
    return result


def rank(spec: SweepSpec, results: list[TrialResult]) -> list[TrialResult]:
    """Trials with a metric, best first, then the others in sweep order."""
    scored = [r for r in results if r.metric is not None and not math.isnan(r.metric)]
    scored.sort(key=lambda r: r.metric, reverse=spec.maximize)  # type: ignore[arg-type, return-value]
    return scored + [r for r in results if r not in scored]


def write_results(
    spec: SweepSpec, results: list[TrialResult], out_dir: str | Path, columns: list[str] | None = None
) -> tuple[Path, Path]:
    """Writes ``results.csv`` and ``results.md`` (ranked by the sweep metric) into ``out_dir``.

    Args:
        spec: The sweep.
        results: Trial results.
        out_dir: Output folder.
        columns: More metrics read from each trial's run folder (see :func:`read_metric`), shown after the
            sweep metric.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in results for k in r.params))
    columns = [c for c in columns or [] if c != spec.metric]
    extra = {r.name: [read_metric(r.run_dir, c) for c in columns] for r in results}
    ranked = rank(spec, results)
    csv_path = out_dir / "results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "rank",
                "trial",
                "status",
                spec.metric,
                *columns,
                *keys,
                "returncode",
                "seconds",
                "run_dir",
                "error",
                "command",
            ]
        )
        for i, r in enumerate(ranked, 1):
            writer.writerow(
                [
                    i if r.metric is not None else "",
                    r.name,
                    r.status,
                    "" if r.metric is None else r.metric,
                    *["" if v is None else v for v in extra[r.name]],
                    *[r.params.get(k, "") for k in keys],
                    "" if r.returncode is None else r.returncode,
                    f"{r.seconds:.1f}",
                    r.run_dir,
                    r.error,
                    " ".join(r.extra.get("command", [])),
                ]
            )
    md_path = out_dir / "results.md"
    lines = [f"# Sweep `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [
        f"Source: `{spec.path}`; method {spec.method}; ranked by `{spec.metric}` ({spec.goal}).",
        "",
        "| rank | trial | "
        + " | ".join(f"`{k}`" for k in keys)
        + f" | **{spec.metric}** | "
        + "".join(f"{c} | " for c in columns)
        + "status | s |",
        "|---" * (len(keys) + len(columns) + 5) + "|",
    ]
    for i, r in enumerate(ranked, 1):
        value = "" if r.metric is None else f"{r.metric:.4f}"
        more = ["" if v is None else f"{v:.4f}" for v in extra[r.name]]
        cells = [
            str(i) if r.metric is not None else "",
            r.name,
            *[str(r.params.get(k, "")) for k in keys],
            value,
            *more,
            r.status if r.returncode in (None, 0) else f"{r.status} (exit {r.returncode})",
            f"{r.seconds:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in results if r.error]
    if failed:
        lines += ["", "## Failed trials", ""]
        for r in failed:
            lines += [f"### {r.name} (exit {r.returncode})", "", "```", r.error, "```", ""]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
