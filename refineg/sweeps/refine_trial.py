"""One refinement trial of an uncertainty-head or threshold sweep (``tools/refine_trial.py key=value ...``).

Takes a finished ``train.py`` run folder (``source=runs/X``), refines its dev (or test) predictions with
``refineg refine`` settings given as ``key=value`` (``head=entropy tau=0.3 backend=oracle ...``, every
:class:`~refineg.stages.refinement.RefineConfig` key), scores before and after against the split's gold posts
(read through the run's ``config.yaml``) and writes ``<runs_dir>/<run_name>/metrics.json`` with flat keys
(``refined/mner_f1``, ``gain/gmner_f1``, ``delegation_rate``, ``llm/calls``, ...). With ``wandb=true`` the same values
go to W&B (inside a W&B agent, to the sweep's run).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from refineg.config import parse_override

logger = logging.getLogger(__name__)
TRIAL_KEYS = {
    "source": None,
    "split": "dev",
    "runs_dir": "runs",
    "run_name": None,
    "wandb": "false",
    "project": "refineg",
}


def find_checkpoint(run_dir: Path) -> Path:
    """The run's best checkpoint (``best-*.ckpt``), else ``last.ckpt``.

    Raises:
        FileNotFoundError: Neither exists.
    """
    ckpts = sorted((run_dir / "checkpoints").glob("best-*.ckpt")) or sorted((run_dir / "checkpoints").glob("last.ckpt"))
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}/checkpoints has no best-*.ckpt or last.ckpt")
    return ckpts[-1]


def run_refine_trial(argv: list[str]) -> dict[str, Any]:
    """Runs one trial and returns the metrics it wrote.

    Raises:
        ValueError: No ``source=`` or a bad refinement key.
        FileNotFoundError: The source run lacks its config, predictions or checkpoint.
    """
    from refineg.data import read_jsonl, write_jsonl
    from refineg.datamodules.gmner import read_split
    from refineg.metrics import evaluate_examples
    from refineg.stages.refinement import load_refine_config, run_refine

    trial = dict(TRIAL_KEYS)
    refine_overrides = []
    for raw in argv:
        ov = parse_override(raw)
        if ov.key in trial and not ov.append:
            trial[ov.key] = ov.value
        else:
            refine_overrides.append(f"{ov.key}{'+' if ov.append else ''}={ov.value}")
    if not trial["source"] or trial["source"] == "null":
        raise ValueError("source=<train.py run folder> is required")
    source = Path(trial["source"])
    if not source.is_dir():
        raise FileNotFoundError(
            f"source={source} does not exist: train it first (python train.py "
            f"run_name={source.name} runs_dir={source.parent}) or set source= to a train.py run "
            "folder"
        )
    name = trial["run_name"] if trial["run_name"] not in (None, "null") else os.environ.get("REFINEG_RUN_NAME")
    out = Path(trial["runs_dir"]) / (name or f"refine-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    split = trial["split"]
    if not (source / "config.yaml").is_file():
        raise FileNotFoundError(f"{source}/config.yaml not found: source= must be a train.py run folder")
    pred_path = source / f"predictions_{split}.jsonl"
    if not pred_path.is_file():
        raise FileNotFoundError(f"{pred_path} not found (train.py writes it unless predict=false)")
    golds = read_split(OmegaConf.load(source / "config.yaml").data, split)
    gold_path = out / f"gold_{split}.jsonl"
    write_jsonl(golds, gold_path)
    ckpt = find_checkpoint(source)
    cfg = load_refine_config(refine_overrides, base={"ckpt": str(ckpt), "gold": str(gold_path), "run_dir": str(out)})
    report = run_refine(cfg, pred_path, out / f"refined_{split}.jsonl")
    before = evaluate_examples(golds, read_jsonl(pred_path))
    after = evaluate_examples(golds, read_jsonl(out / f"refined_{split}.jsonl"))
    usage = (report.get("usage") or {}).get("total", {})
    metrics: dict[str, Any] = {
        "source": str(source),
        "split": split,
        "backend": report["backend"],
        "simulated": report["simulated"],
        "delegation_rate": report["delegation_rate"],
        "delegated": report["delegated"],
        "entities": report["entities"],
        "llm": {
            "calls": usage.get("calls", 0),
            "tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0),
        },
    }
    for task in ("mner", "gmner", "eeg"):
        metrics.setdefault("before", {})[f"{task}_f1"] = before[task]["f1"]
        metrics.setdefault("refined", {})[f"{task}_f1"] = after[task]["f1"]
        metrics.setdefault("gain", {})[f"{task}_f1"] = after[task]["f1"] - before[task]["f1"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if str(trial["wandb"]).lower() == "true":
        _log_wandb(metrics, trial, refine_overrides, out)
    return metrics


def _log_wandb(metrics: dict[str, Any], trial: dict[str, Any], overrides: list[str], out: Path) -> None:
    import wandb

    if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")):
        os.environ["WANDB_MODE"] = "offline"
    config = {**trial, **dict(o.split("=", 1) for o in overrides)}
    run = wandb.init(project=trial["project"], name=out.name, dir=str(out), config=config)
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in value.items()})
        elif isinstance(value, (int, float)):
            flat[key] = value
    run.log(flat)
    run.finish()


def main(argv: list[str]) -> int:
    """Entry point of ``tools/refine_trial.py``; prints the refined scores."""
    from refineg.logs import quiet_chatty_loggers

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_chatty_loggers(verbose=False)
    try:
        metrics = run_refine_trial(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}")
        return 2
    print(json.dumps({k: metrics[k] for k in ("delegation_rate", "before", "refined", "gain", "llm")}, indent=1))
    return 0


if __name__ == "__main__":  # python -m refineg.sweeps.refine_trial (what the local runner runs from a wheel install)
    import sys

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1:]))
