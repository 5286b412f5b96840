"""Running a chain of stages with up-to-date checks, atomic stamps and per-stage timings.

A stage is up to date when every artifact it declares exists and the stamp ``<run>/stages/<name>.json`` written
after them holds the same fingerprint: the SHA-256 of the stage's resolved config section, of the fingerprints of
its input stages and of the size and modification time of any outside file it reads. A killed stage leaves no
stamp (the stamp is removed before the stage starts and written, by rename, only after its artifacts), so the next
run repeats exactly the unfinished stages; a changed setting changes the fingerprint of its stage and of every
stage downstream, and only those run again. A stage that finishes without a usable result (every LLM request
failed) raises :class:`StageFailedError`: its artifacts stay, it gets no stamp and the chain stops there, so the
next run repeats it and everything after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refineg.resources import resolve_path

logger = logging.getLogger(__name__)


def write_json_atomic(path: str | Path, value: Any) -> Path:
    """Writes ``value`` as indented JSON to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def file_signature(path: str | Path | None) -> Any:
    """What an outside input looks like without reading it.

    Returns:
        ``[size, mtime_ns]`` of a file, ``[entries, newest mtime_ns]`` of a folder, ``None`` when it does not exist.
    """
    if path is None:
        return None
    p = resolve_path(path)  # the file the stage reads: a missing configs/... path means the packaged one
    if p.is_file():
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    if p.is_dir():
        n, newest = 0, p.stat().st_mtime_ns
        with os.scandir(p) as it:
            for entry in it:
                n += 1
                newest = max(newest, entry.stat().st_mtime_ns)
        return [n, newest]
    return None


def fingerprint(name: str, section: Any, inputs: dict[str, str], external: dict[str, Any]) -> str:
    """SHA-256 (hex) of a stage's name, config section, input fingerprints and outside-file signatures."""
    material = json.dumps(
        {"stage": name, "config": section, "inputs": inputs, "external": external}, sort_keys=True, default=str
    )
    return hashlib.sha256(material.encode()).hexdigest()


class StageFailedError(RuntimeError):
    """A stage wrote its artifacts but its result is not usable (e.g. none of its LLM requests got an answer).

    The runner does not stamp the stage and stops the chain; the next run repeats it.

    Args:
        message: What went wrong and what was kept.
        info: The stage's info dict (kept in the summary).

    Attributes:
        stage: The failed stage's name (set by :class:`StageRunner`).
        outcomes: The outcomes up to and including the failed stage (set by :class:`StageRunner`).
        summary: The run summary written for the failed run (set by :func:`run_pipeline`).
    """

    def __init__(self, message: str, info: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.info = dict(info or {})
        self.stage: str | None = None
        self.outcomes: list[StageOutcome] = []
        self.summary: dict[str, Any] | None = None


@dataclass
class Stage:
    """One step of the pipeline.

    Attributes:
        name: Stage name (``data``, ``train``, ...).
        section: JSON-ready settings that decide the stage's output (its fingerprint material).
        inputs: Names of the stages whose artifacts it reads.
        artifacts: Files it writes, relative to the run folder; all must exist for it to be up to date.
        run: Writes the artifacts; gets the stage's fingerprint, returns a small JSON-ready info dict.
        external: Outside files it reads: ``{label: file_signature(path)}``.
    """

    name: str
    section: Any
    inputs: Sequence[str]
    artifacts: Sequence[str]
    run: Callable[[str], dict[str, Any]]
    external: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageOutcome:
    """What happened to a stage in one invocation.

    Attributes:
        name: Stage name.
        status: ``ran``, ``skipped`` or ``failed`` (see :class:`StageFailedError`).
        wall_s: Seconds spent now (0 when skipped).
        last_run_wall_s: Seconds of the run that made the current artifacts.
        fingerprint: The stage's fingerprint.
        info: The info dict of the run that made the artifacts.
    """

    name: str
    status: str
    wall_s: float
    last_run_wall_s: float
    fingerprint: str
    info: dict[str, Any]


class StageRunner:
    """Runs stages in order, skipping the up-to-date ones.

    Args:
        run_dir: The run folder (artifacts are relative to it; stamps go to ``stages/``).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.stamp_dir = self.run_dir / "stages"

    def stamp_path(self, name: str) -> Path:
        """``<run>/stages/<name>.json``."""
        return self.stamp_dir / f"{name}.json"

    def _stamp(self, name: str) -> dict[str, Any] | None:
        path = self.stamp_path(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def up_to_date(self, stage: Stage, fp: str) -> dict[str, Any] | None:
        """The stage's stamp when it matches ``fp`` and every artifact exists, else ``None``."""
        stamp = self._stamp(stage.name)
        if stamp is None or stamp.get("fingerprint") != fp:
            return None
        if not all((self.run_dir / a).exists() for a in stage.artifacts):
            return None
        return stamp

    def run(self, stages: Sequence[Stage], before_first_run: Callable[[], None] | None = None) -> list[StageOutcome]:
        """Runs or skips every stage in order.

        Args:
            stages: The chain, inputs before the stages that read them.
            before_first_run: Called once before the first stage that is not up to date (e.g. heavy imports, so
                that their cost is not charged to whichever stage happens to import first).

        Raises:
            KeyError: A stage names an input that is not an earlier stage.
            StageFailedError: A stage ran without a usable result; it is not stamped and no later stage runs.
        """
        self.stamp_dir.mkdir(parents=True, exist_ok=True)
        fps: dict[str, str] = {}
        ran: set[str] = set()  # a stage whose input was made now runs too, whatever its stamp says
        outcomes = []
        for stage in stages:
            missing = [i for i in stage.inputs if i not in fps]
            if missing:
                raise KeyError(f"stage {stage.name} reads {missing}, which do not run before it")
            fp = fingerprint(stage.name, stage.section, {i: fps[i] for i in stage.inputs}, stage.external)
            stamp = None if ran.intersection(stage.inputs) else self.up_to_date(stage, fp)
            if stamp is not None:
                outcome = StageOutcome(
                    stage.name, "skipped", 0.0, float(stamp.get("wall_s", 0.0)), fp, stamp.get("info") or {}
                )
                logger.info("stage %-10s skipped (up to date)", stage.name)
            else:
                if before_first_run is not None:
                    before_first_run()
                    before_first_run = None
                self.stamp_path(stage.name).unlink(missing_ok=True)
                logger.info("stage %-10s running", stage.name)
                start = time.perf_counter()
                try:
                    info = stage.run(fp) or {}
                except StageFailedError as err:
                    wall = time.perf_counter() - start
                    logger.info("stage %-10s failed after %.1f s (not marked done)", stage.name, wall)
                    err.stage = stage.name
                    err.outcomes = [
                        *outcomes,
                        StageOutcome(stage.name, "failed", wall, wall, fp, {**err.info, "error": str(err)}),
                    ]
                    raise
                wall = time.perf_counter() - start
                write_json_atomic(
                    self.stamp_path(stage.name),
                    {
                        "stage": stage.name,
                        "fingerprint": fp,
                        "wall_s": round(wall, 3),
                        "artifacts": list(stage.artifacts),
                        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "inputs": list(stage.inputs),
                        "info": info,
                    },
                )
                outcome = StageOutcome(stage.name, "ran", wall, wall, fp, info)
                ran.add(stage.name)
                logger.info("stage %-10s ran in %.1f s", stage.name, wall)
            fps[stage.name] = fp
            outcomes.append(outcome)
        return outcomes


def run_pipeline(cfg: Any) -> dict[str, Any]:
    """``refineg pipeline``: runs the stage chain of a :class:`~refineg.stages.pipeline.config.PipelineConfig`.

    Writes ``config.yaml`` (the resolved config), ``timings.json`` (per stage: ran/skipped, seconds now, seconds of
    the run that made the artifacts) and ``summary.json`` (timings, every stage's info, the final scores and
    ``simulated``: ``{stage: backend}`` of the outputs that rest on simulated refinement answers) into the run
    folder.

    Returns:
        The summary.

    Raises:
        StageFailedError: A stage ran without a usable result (see :class:`StageFailedError`); ``timings.json``
            and ``summary.json`` (with ``failed``: the stage and the message) are written first and the summary is
            the error's ``summary``.
    """
    from omegaconf import OmegaConf

    from .stages import build_stages

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), run_dir / "config.yaml")
    start = time.perf_counter()
    startup: dict[str, float] = {}

    def import_libraries() -> None:
        t0 = time.perf_counter()
        import lightning  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401

        import refineg.metrics  # noqa: F401

        startup["import_s"] = round(time.perf_counter() - t0, 3)

    try:
        outcomes = StageRunner(run_dir).run(build_stages(cfg), import_libraries)
    except StageFailedError as err:
        failed = {"stage": err.stage, "error": str(err)}
        err.summary = _write_summary(cfg, err.outcomes, time.perf_counter() - start, startup, failed)
        raise
    return _write_summary(cfg, outcomes, time.perf_counter() - start, startup)


def _write_summary(
    cfg: Any,
    outcomes: list[StageOutcome],
    total: float,
    startup: dict[str, float],
    failed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes ``timings.json`` and ``summary.json`` of a run (``failed`` only when a stage failed)."""
    run_dir = cfg.run_dir
    timings = {
        "total_wall_s": round(total, 3),
        "library_import_s": startup.get("import_s", 0.0),
        "stages": {
            o.name: {"status": o.status, "wall_s": round(o.wall_s, 3), "last_run_wall_s": round(o.last_run_wall_s, 3)}
            for o in outcomes
        },
    }
    write_json_atomic(run_dir / "timings.json", timings)
    evaluate = next((o.info for o in outcomes if o.name == "evaluate"), {})
    summary = {
        "run_dir": str(run_dir),
        "mode": cfg.mode,
        "timings": timings,
        "stages": {o.name: {"status": o.status, "fingerprint": o.fingerprint, "info": o.info} for o in outcomes},
        "final": evaluate.get("final"),
        "scores": evaluate.get("f1", {}).get(evaluate.get("final"), {}),
        "simulated": evaluate.get("simulated", {}),
        "variants": {
            name: {"source": src, "scores": evaluate.get("f1", {}).get(src, {})}
            for name, src in (evaluate.get("variants") or {}).items()
        },
    }
    if failed is not None:
        summary["failed"] = failed
    write_json_atomic(run_dir / "summary.json", summary)
    return summary
