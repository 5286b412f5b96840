"""Gold only vs gold + LLM-free (swap) synthetic data, per mixing mode and training seed: dev MNER F1.

For each seed S the swap synthesiser builds synthetic posts from exactly the gold sample training draws for S
(``data.gold_limit`` with ``seed=S``), then four runs train: ``gold_only``, ``ratio``, ``two_stage``, ``concat``.
Each run is a fresh ``train.py`` process; a run whose ``metrics.json`` exists is not repeated (rerun to resume).

    HF_HUB_OFFLINE=1 python bench/synthesis_mixing.py --out runs/bench-synthesis \\
        --data data=twitter_gmner_500 data.root=/data/Twitter10000_v2.0 data.test=null

Tiny smoke run (bundled sample, tiny settings):

    HF_HUB_OFFLINE=1 python bench/synthesis_mixing.py --out /tmp/bench-syn --seeds 1 \\
        --data data.gold_limit=32 --train trainer.max_epochs=1 model.encoder=/path/to/tiny --synth swap.per_seed=2

Writes ``<out>/results.json`` (every run's F1 and the commands) and ``<out>/results.md`` (mean ± sample std).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("gold_only", "ratio", "two_stage", "concat")


def run(cmd: list[str], log: Path) -> None:
    """Runs ``cmd`` from the repository root, output to ``log``; raises with the log's tail on failure."""
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{tail}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for synthetic data, runs and results")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds (also gold sample seeds)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--data", nargs="*", default=[], help="data overrides for synthesis and training")
    p.add_argument("--train", nargs="*", default=[], help="extra training overrides")
    p.add_argument("--synth", nargs="*", default=[], help="extra synthesis overrides")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    records, commands = [], []
    for seed in args.seeds:
        syn = args.out / f"swap_seed{seed}.jsonl"
        if not syn.is_file():
            cmd = [
                py,
                "-m",
                "refineg.cli",
                "synthesize",
                "--out",
                str(syn),
                "synthesizer=swap",
                f"seed={seed}",
                "progress=false",
                *args.data,
                *args.synth,
            ]
            commands.append(shlex.join(cmd))
            run(cmd, args.out / f"swap_seed{seed}.log")
        for mode in args.modes:
            name = f"{mode}-s{seed}"
            metrics = args.out / "runs" / name / "metrics.json"
            mixing = (
                ["data.mixing=gold_only"]
                if mode == "gold_only"
                else [f"data.mixing={mode}", f"data.synthetic={syn.resolve()}"]
            )
            cmd = [
                py,
                "train.py",
                *args.data,
                *mixing,
                f"seed={seed}",
                f"run_name={name}",
                f"runs_dir={(args.out / 'runs').resolve()}",
                "logger.wandb=false",
                "trainer.enable_progress_bar=false",
                *args.train,
            ]
            commands.append(shlex.join(cmd))
            if not metrics.is_file():
                start = time.time()
                run(cmd, args.out / f"{name}.log")
                print(f"{name}: {time.time() - start:.0f} s", flush=True)
            result = json.loads(metrics.read_text())
            records.append(
                {
                    "mode": mode,
                    "seed": seed,
                    "dev_mner_f1": result["dev"]["mner"]["f1"],
                    "best_val_mner_f1": result["best_val_mner_f1"],
                    "run_dir": result["run_dir"],
                }
            )
    lines = ["| data | mixing | runs | dev MNER F1 (mean ± std) | per seed |", "|---|---|---|---|---|"]
    summary = {}
    for mode in args.modes:
        f1 = [100 * r["dev_mner_f1"] for r in records if r["mode"] == mode]
        std = statistics.stdev(f1) if len(f1) > 1 else 0.0
        summary[mode] = {"mean": statistics.fmean(f1), "std": std, "n": len(f1)}
        data = "gold" if mode == "gold_only" else "gold + swap"
        lines.append(
            f"| {data} | {mode} | {len(f1)} | {summary[mode]['mean']:.2f} ± {std:.2f} | "
            + ", ".join(f"{v:.2f}" for v in f1)
            + " |"
        )
    table = "\n".join(lines)
    (args.out / "results.json").write_text(
        json.dumps({"argv": sys.argv, "summary": summary, "runs": records, "commands": commands}, indent=2)
    )
    (args.out / "results.md").write_text(f"`{shlex.join(sys.argv)}`\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
