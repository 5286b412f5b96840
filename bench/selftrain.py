"""Self-training experiment (issue 20): dev MNER F1 of gold only vs self-training, per round and training seed.

Two groups of ``refineg selftrain`` runs, each in one or more pseudo-label variants (``--g500-variants``,
``--full-variants``; see ``VARIANTS``) and seeds, all started at once (one process each, ``--parallel`` at a time):

- ``g500``: 500 gold posts (``data.gold_limit=500``); the pool is the other training posts with their labels hidden
  (``data.unlabeled_from_train=true``). Round 0 of each run is the gold-only baseline, trained in the same run.
- ``full``: all training posts; there is no other unlabelled post in the release, so the pool is the training posts
  themselves (self-distillation, ``data.unlabeled=<train file> data.unlabeled_hidden_gold=true``).

Each run writes its per-round ``selftrain.json``; this script copies it to ``<out>/runs/<group>-<variant>-s<seed>.json``
(with the command, exit status and wall time) and writes ``<out>/summary.json`` and ``<out>/summary.md`` (per group,
variant and round: dev MNER F1 mean ± sample std over seeds, the gain over round 0, pseudo-label counts and
precision). The summary is
rewritten whenever a run ends. At ``--budget-s`` the runs still going are stopped and the summary keeps every round
they finished (a rerun with the same ``--runs-dir`` continues them: ``refineg selftrain`` resumes by run name).

GPU machine (repository root, ``.devcarry/`` built by ``bench/prepare_device_carry.sh``, carried)::

    bash bench/selftrain.sh                 # = python bench/selftrain.py --out $OUT after installing the wheels

Tiny CPU check::

    HF_HUB_OFFLINE=1 python bench/selftrain.py --out /tmp/st --data-root DIR --encoder TINY --seeds 1 \\
        --gold 64 --common trainer.accelerator=cpu trainer.max_epochs=1 selftrain.epochs=1 data.unlabeled_limit=64
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The self-training settings of every run (any of them can be overridden with --common/--g500/--full).
SELFTRAIN = [
    "selftrain.head=crf_marginal",
    "selftrain.tau=0.2",
    "selftrain.selection=entity",
    "selftrain.uncertain=mask",
    "selftrain.outside_min=0.9",
    "selftrain.init=scratch",
    "selftrain.patience=1",
]
#: Pseudo-label variants: ``partial`` trains on the teacher's confident entities and confident O words (hard labels,
#: the rest unlabelled); ``soft`` trains on its CRF marginals there instead. More with --variant NAME=k=v,k=v.
VARIANTS = {
    "partial": ["selftrain.soft_targets=false"],
    "soft": ["selftrain.soft_targets=true"],
    # knowledge distillation: every pool post keeps all the teacher's marginals (nothing masked)
    "kd": ["selftrain.soft_targets=true", "selftrain.tau=1.0", "selftrain.outside_min=null"],
}
#: Round 0 trains 6 epochs at batch 16 (as the gold-only rows of docs/results.md); pseudo-labelling rounds see 14x
#: (g500) or 2x (full) as many posts per epoch and train 3. Full data trains at batch 32 to fit the time budget.
GROUPS = {
    "g500": [
        "data.batch_size=16",
        "trainer.max_epochs=6",
        "selftrain.epochs=3",
        "selftrain.rounds=2",
        "data.unlabeled_from_train=true",
    ],
    "full": [
        "data.batch_size=32",
        "trainer.max_epochs=6",
        "selftrain.epochs=3",
        "selftrain.rounds=1",
        "data.unlabeled_hidden_gold=true",
    ],
}


def run_command(args: argparse.Namespace, group: str, variant: str, seed: int, name: str) -> list[str]:
    """The ``refineg selftrain`` command line of one run."""
    data = Path(args.data_root).resolve()
    cmd = [
        sys.executable,
        "-m",
        "refineg.cli",
        "selftrain",
        "data.format=jsonl",
        f"data.root={data}",
        f"data.train={args.train}",
        f"data.dev={args.dev}",
        "data.test=null",
        "data.xml_dir=null",
        f"data.eval_batch_size={args.eval_batch_size}",
        f"model.encoder={args.encoder}",
        "logger.wandb=false",
        "trainer.enable_progress_bar=false",
        f"seed={seed}",
        f"runs_dir={Path(args.runs_dir).resolve()}",
        f"run_name={name}",
        *SELFTRAIN,
        *GROUPS[group],
        *VARIANTS[variant],
    ]
    cmd += [f"data.gold_limit={args.gold}"] if group == "g500" else [f"data.unlabeled={data / args.train}"]
    return cmd + list(args.common) + list(getattr(args, group))


def load_state(args: argparse.Namespace, name: str) -> dict | None:
    """The run's ``selftrain.json`` (``None`` before its first round ends)."""
    path = Path(args.runs_dir) / name / "selftrain.json"
    return json.loads(path.read_text()) if path.is_file() else None


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for one value) in F1 points."""
    pts = [100 * v for v in values]
    return {
        "mean": statistics.fmean(pts) if pts else None,
        "std": statistics.stdev(pts) if len(pts) > 1 else 0.0,
        "n": len(pts),
        "values": pts,
    }


def summarise(args: argparse.Namespace, jobs: dict[str, dict]) -> dict:
    """Per group and round: dev MNER F1 over seeds, gain over round 0, pseudo-label counts and precision."""
    out: dict = {"groups": {}}
    for group in dict.fromkeys(j["group"] for j in jobs.values()):  # group-variant, in launch order
        runs = {n: j for n, j in jobs.items() if j["group"] == group}
        states = {n: load_state(args, n) for n in runs}
        by_round: dict[int, list[dict]] = {}
        for name, state in states.items():
            for rec in (state or {}).get("rounds", []):
                by_round.setdefault(rec["round"], []).append({"seed": runs[name]["seed"], **rec})
        rounds = {}
        base = {r["seed"]: r["dev_mner_f1"] for r in by_round.get(0, [])}
        for k, recs in sorted(by_round.items()):
            gains = [r["dev_mner_f1"] - base[r["seed"]] for r in recs if r["seed"] in base]
            prec = [r["pseudo_quality"]["precision_kept"] for r in recs if r.get("pseudo_quality")]
            rounds[k] = {
                "dev_mner_f1": mean_std([r["dev_mner_f1"] for r in recs]),
                "gain_over_round0": mean_std(gains),
                "seeds": [r["seed"] for r in recs],
                "pseudo_posts": [r.get("pseudo", {}).get("posts") for r in recs],
                "pseudo_entities": [r.get("pseudo", {}).get("entities") for r in recs],
                "pseudo_precision_kept": [None if p is None else round(100 * p, 2) for p in prec],
                "teacher_dev_mner_f1": [
                    None if r.get("teacher_dev_mner_f1") is None else round(100 * r["teacher_dev_mner_f1"], 2)
                    for r in recs
                ],
                "seconds": [r["seconds"] for r in recs],
                "train_posts_per_s": [(r.get("train_throughput") or {}).get("posts_per_s") for r in recs],
            }
        best = [s["rounds"][s["best_round"]]["dev_mner_f1"] for s in states.values() if s and "best_round" in s]
        best_gain = [
            s["rounds"][s["best_round"]]["dev_mner_f1"] - s["rounds"][0]["dev_mner_f1"]
            for s in states.values()
            if s and "best_round" in s
        ]
        out["groups"][group] = {
            "rounds": rounds,
            "best_round_on_dev": mean_std(best),
            "best_round_gain": mean_std(best_gain),
            "runs": {n: {k: v for k, v in j.items() if k != "proc"} for n, j in runs.items()},
        }
    return out


def write_outputs(args: argparse.Namespace, jobs: dict[str, dict], started: float, device: str) -> dict:
    """Writes every run's JSON, ``summary.json`` and ``summary.md``; returns the summary."""
    out = Path(args.out)
    for name, job in jobs.items():
        record = {k: v for k, v in job.items() if k != "proc"} | {"selftrain": load_state(args, name)}
        (out / "runs" / f"{name}.json").write_text(json.dumps(record, indent=2))
    summary = summarise(args, jobs) | {
        "argv": sys.argv,
        "device": device,
        "wall_s": round(time.time() - started, 1),
        "selftrain_settings": SELFTRAIN,
        "group_settings": GROUPS,
        "variants": VARIANTS,
        "note": "dev MNER F1 on the dev split; round 0 = gold only (g500) / all gold (full); "
        "best_round_on_dev picks the round on dev itself, so it is optimistic; the per-round rows are not",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"`{shlex.join(sys.argv)}` on {device}, {summary['wall_s']:.0f} s", ""]
    lines += ["| group | round | runs | dev MNER F1 (mean ± std) | gain over round 0 | pseudo precision | teacher F1 |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for group, g in summary["groups"].items():
        for k, r in g["rounds"].items():
            f1, gain = r["dev_mner_f1"], r["gain_over_round0"]
            prec = ", ".join(str(p) for p in r["pseudo_precision_kept"]) or "-"
            lines.append(
                f"| {group} | {k} | {f1['n']} | {f1['mean']:.2f} ± {f1['std']:.2f} | "
                f"{gain['mean']:+.2f} ± {gain['std']:.2f} | {prec} | "
                f"{', '.join(str(t) for t in r['teacher_dev_mner_f1'] if t is not None) or '-'} |"
            )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def dev_f1(args: argparse.Namespace, checkpoints: list[str], env: dict, max_length: int | None = None) -> float:
    """Dev MNER F1 (points) of one tagger or of the ensemble of several (``refineg predict``, ``evaluate``).

    ``max_length``: subwords per post (``None``: ``refineg predict``'s default).
    """
    dev = str(Path(args.data_root).resolve() / args.dev)
    cli = [sys.executable, "-m", "refineg.cli"]
    with tempfile.TemporaryDirectory() as work:
        pred = str(Path(work) / "pred.jsonl")
        predict = [*cli, "predict", "--ckpt", *checkpoints, "--input", dev, "--out", pred]
        predict += ["--max-length", str(max_length)] if max_length else []
        subprocess.run(predict, cwd=ROOT, env=env, check=True, capture_output=True)
        evaluate = [*cli, "evaluate", "--gold", dev, "--pred", pred, "--json"]
        scores = subprocess.run(evaluate, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return round(100 * json.loads(scores.stdout)["mner"]["f1"], 2)


def student_ensembles(args: argparse.Namespace, jobs: dict[str, dict], env: dict) -> dict[str, dict]:
    """Per group: dev MNER F1 of the ensemble of its runs' last-round taggers (``refineg predict --ckpt A B ...``)."""
    out: dict[str, dict] = {}
    for group in dict.fromkeys(j["group"] for j in jobs.values()):
        states = [load_state(args, n) for n, j in jobs.items() if j["group"] == group]
        last = [s["rounds"][-1] for s in states if s and s["rounds"]]
        if len(last) < 2:
            continue
        out[group] = {
            "members": len(last),
            "rounds": [r["round"] for r in last],
            "dev_mner_f1": dev_f1(args, [r["checkpoint"] for r in last], env),
        }
    return out


def soups(args: argparse.Namespace, jobs: dict[str, dict], env: dict) -> dict[str, dict]:
    """Per group and round: dev MNER F1 of the weight average of its runs' taggers (``refineg soup``) and of each.

    The members' scores are the runs' own dev scores; only the soup is tagged, at the runs' ``data.max_length`` (the
    length their dev scores were taken at).
    """
    out: dict[str, dict] = {}
    for group in dict.fromkeys(j["group"] for j in jobs.values()):
        states = [load_state(args, n) for n, j in jobs.items() if j["group"] == group]
        rounds = [{r["round"]: r for r in s["rounds"]} for s in states if s]
        max_length = next((s["config"]["data"]["max_length"] for s in states if s and "config" in s), None)
        for k in sorted(set.intersection(*(set(r) for r in rounds))) if len(rounds) > 1 else []:
            soup = Path(args.runs_dir) / f"soup-{group}-round{k}.ckpt"
            cmd = [sys.executable, "-m", "refineg.cli", "soup", "--ckpt", *(r[k]["checkpoint"] for r in rounds)]
            subprocess.run([*cmd, "--out", str(soup)], cwd=ROOT, env=env, check=True, capture_output=True)
            out.setdefault(group, {})[str(k)] = {
                "members": [round(100 * r[k]["dev_mner_f1"], 2) for r in rounds],
                "soup": dev_f1(args, [str(soup)], env, max_length),
                "checkpoint": str(soup),
            }
    return out


def stop(job: dict) -> None:
    """Stops a run's process group (SIGTERM, then SIGKILL after 20 s)."""
    proc = job["proc"]
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def device_name() -> str:
    """The GPU's name, or "cpu"."""
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as err:  # noqa: BLE001  (a report field only)
        return f"unknown ({err})"


def run_phase(
    args: argparse.Namespace, jobs: dict[str, dict], parallel: int, env: dict, started: float, device: str, tag: str
) -> None:
    """Runs every job's command (``parallel`` at a time) until all end or ``--budget-s`` is spent; logs per phase."""
    out = Path(args.out)
    waiting = [n for n, j in jobs.items() if "returncode" not in j and not j.get("stopped_by_budget")]
    for name in waiting:
        jobs[name].pop("proc", None)
    while True:
        running = [n for n, j in jobs.items() if "proc" in j and j["proc"].poll() is None]
        while waiting and len(running) < parallel:
            name = waiting.pop(0)
            job = jobs[name]
            job["log"] = str(out / "logs" / f"{name}{'-' + tag if tag else ''}.log")
            log = Path(job["log"]).open("w")
            job["proc"] = subprocess.Popen(
                job["command"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            job["start_s"] = round(time.time() - started, 1)
            running.append(name)
            print(f"{job['start_s']:7.1f} s  started {name} {tag}", flush=True)
        changed = False
        for name, job in jobs.items():
            proc = job.get("proc")
            if proc is not None and "returncode" not in job and proc.poll() is not None:
                job["returncode"], job["wall_s"] = proc.returncode, round(time.time() - started - job["start_s"], 1)
                print(f"{time.time() - started:7.1f} s  {name} ended ({proc.returncode})", flush=True)
                changed = True
        if changed:
            write_outputs(args, jobs, started, device)
        if not waiting and all("returncode" in j for j in jobs.values()):
            return
        if time.time() - started > args.budget_s:
            for job in jobs.values():
                if "proc" in job and "returncode" not in job:
                    stop(job)
                    job["returncode"], job["stopped_by_budget"] = job["proc"].returncode, True
                    job["wall_s"] = round(time.time() - started - job["start_s"], 1)
                elif "proc" not in job:
                    job["not_started"] = True
            print(f"budget of {args.budget_s:.0f} s reached: unfinished runs stopped", flush=True)
            return
        time.sleep(2)


def planned_rounds(command: list[str]) -> int:
    """The ``selftrain.rounds`` a run command sets (the last override wins; else the config's default)."""
    from refineg.stages.selftrain.config import SelfTrainSettings

    values = [c.split("=", 1)[1] for c in command if c.startswith("selftrain.rounds=")]
    return int(values[-1]) if values else SelfTrainSettings.rounds


def teacher_members(args: argparse.Namespace, jobs: dict[str, dict], family: list[str], name: str, k: int) -> list[str]:
    """``--ensemble``: the other seeds' round-``k-1`` checkpoints that join run ``name``'s own as round ``k``'s teacher.

    One member per other seed whose round ``k-1`` finished: the run of the same variant, or for round 1 (round-0
    taggers), when that one did not finish, a run of another variant of the group ``family`` (they train round 0
    alike unless the variant changes a training setting).
    """
    job = jobs[name]
    by_seed: dict[int, str] = {}
    for other in sorted(family, key=lambda o: jobs[o]["group"] != job["group"]):  # the same variant's runs first
        done = load_state(args, other)
        if jobs[other]["seed"] != job["seed"] and done and len(done["rounds"]) >= k:
            if k == 1 or jobs[other]["group"] == job["group"]:  # later rounds: the same variant's only
                by_seed.setdefault(jobs[other]["seed"], done["rounds"][k - 1]["checkpoint"])
    return list(by_seed.values())


def run_ensemble_phases(
    args: argparse.Namespace, jobs: dict[str, dict], parallel: int, env: dict, started: float, device: str
) -> None:
    """``--ensemble``: every round's teacher is the ensemble of all seeds' taggers of the round before.

    Phase 0 trains every run's round 0 only. Phase ``k`` continues each run to round ``k`` with
    ``selftrain.teacher=last`` (its own round ``k-1``) and ``selftrain.ensemble`` = the round-``k-1`` taggers of the
    group's other seeds (``refineg selftrain`` lets the members change when a run is continued); the runs share one
    ``selftrain.label_cache``, so a pool the seeds share (the ``full`` group's) is labelled once per round; a ``g500``
    seed's pool (the training posts outside its own gold sample) is its own. The rounds are not
    stopped early (``selftrain.patience=k``), so every run reports every round. A run whose round ``k-1`` did not
    finish (e.g. the time budget) stops there.
    """
    # the runs of a round share one teacher: where they also share the pool, one labels it and the others read it
    shared = f"selftrain.label_cache={Path(args.runs_dir).resolve() / 'labels'}"
    final = {n: [*j["command"], "selftrain.teacher=last", shared] for n, j in jobs.items()}
    rounds = max(planned_rounds(c) for c in final.values())
    family: dict[str, list[str]] = {}
    for name, job in jobs.items():
        family.setdefault(job["group"].split("-")[0], []).append(name)
    for k in range(rounds + 1):
        for name, job in jobs.items():
            state = load_state(args, name)
            if k > 0 and (not state or len(state["rounds"]) < k or planned_rounds(final[name]) < k):
                job["returncode"] = job.get("returncode", 0)  # nothing more to run for this one
                continue
            extra = [f"selftrain.rounds={k}", f"selftrain.patience={max(k, 1)}"]
            if k > 0:
                members = teacher_members(args, jobs, family[job["group"].split("-")[0]], name, k)
                extra.append(f"selftrain.ensemble=[{','.join(members)}]")
                job["ensemble_members"] = 1 + len(members)
            job["command"] = [*final[name], *extra]
            job.pop("returncode", None)
        run_phase(args, jobs, parallel, env, started, device, f"round{k}")
        if time.time() - started > args.budget_s:
            break


def main() -> int:
    carried = ROOT / ".devcarry" / "minilm"  # the fp16 copy bench/prepare_device_carry.sh makes
    default_encoder = str(carried) if (carried / "config.json").is_file() else "minilm"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench_selftrain"), help="results folder (default $OUT)")
    p.add_argument("--runs-dir", default="/tmp/selftrain-runs", help="run folders with checkpoints (not copied)")
    p.add_argument("--data-root", default=str(ROOT / ".devcarry" / "data"), help="folder of the JSONL splits")
    p.add_argument("--train", default="train.jsonl")
    p.add_argument("--dev", default="dev.jsonl")
    p.add_argument("--encoder", default=default_encoder, help="default: .devcarry/minilm when present, else minilm")
    p.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--gold", type=int, default=500, help="gold posts of the g500 group")
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--parallel", type=int, default=0, help="runs at once (0: all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: CPU cores / runs at once)")
    p.add_argument("--budget-s", type=float, default=510, help="stop the runs still going after this many seconds")
    p.add_argument("--common", nargs="*", default=[], help="overrides for every run")
    p.add_argument("--g500", nargs="*", default=[], help="overrides for the g500 runs")
    p.add_argument("--full", nargs="*", default=[], help="overrides for the full-data runs")
    p.add_argument("--g500-variants", nargs="+", default=["partial", "soft"], help="variants of the g500 group")
    p.add_argument("--full-variants", nargs="+", default=["soft"], help="variants of the full-data group")
    p.add_argument("--variant", nargs="*", default=[], help="extra variants NAME=key=value,key=value")
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="train the runs round by round: each round's teacher is the ensemble of the previous round's taggers "
        "of all seeds of its group (round 1: the round-0 taggers of g500 or full; later rounds: the same variant's)",
    )
    p.add_argument(
        "--student-ensemble",
        action="store_true",
        help="at the end, score the ensemble of each group's last-round taggers (one per seed) on dev",
    )
    p.add_argument(
        "--soup",
        action="store_true",
        help="at the end, score the weight average (refineg soup) of each group's taggers of every round on dev "
        "(give the runs one model.init_seed, and at --gold N one data.gold_seed)",
    )
    args = p.parse_args()
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    for item in args.variant:
        vname, _, overrides = item.partition("=")
        VARIANTS[vname] = [o for o in overrides.split(",") if o]
    jobs: dict[str, dict] = {}
    for group in args.groups:
        for variant in getattr(args, f"{group}_variants"):
            if variant not in VARIANTS:
                raise SystemExit(f"error: unknown variant {variant!r}; known: {', '.join(VARIANTS)} (--variant adds)")
            label = f"g{args.gold}" if group == "g500" else group  # the g500 group at --gold N
            for seed in args.seeds:
                name = f"{label}-{variant}-s{seed}"
                jobs[name] = {
                    "group": f"{label}-{variant}",
                    "seed": seed,
                    "command": run_command(args, group, variant, seed, name),
                }
    parallel = args.parallel or len(jobs)
    threads = args.threads or max(1, (os.cpu_count() or 2) // parallel)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    device = device_name()
    started = time.time()
    if args.ensemble:
        run_ensemble_phases(args, jobs, parallel, env, started, device)
    else:
        run_phase(args, jobs, parallel, env, started, device, "")
    summary = write_outputs(args, jobs, started, device)
    if args.student_ensemble:
        summary["student_ensemble"] = student_ensembles(args, jobs, env)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        with (out / "summary.md").open("a") as fh:
            for group, ens in summary["student_ensemble"].items():
                fh.write(
                    f"\nEnsemble of the {ens['members']} last-round taggers of {group} (rounds {ens['rounds']}): "
                    f"dev MNER F1 {ens['dev_mner_f1']:.2f}\n"
                )
    if args.soup:
        summary["soup"] = soups(args, jobs, env)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        with (out / "summary.md").open("a") as fh:
            for group, by_round in summary["soup"].items():
                for k, sp in by_round.items():
                    fh.write(
                        f"\nWeight average (soup) of the {len(sp['members'])} round-{k} taggers of {group}: dev MNER "
                        f"F1 {sp['soup']:.2f} (members {', '.join(f'{m:.2f}' for m in sp['members'])})\n"
                    )
    print((out / "summary.md").read_text())
    failed = [n for n, j in jobs.items() if j.get("returncode") not in (0, None) and not j.get("stopped_by_budget")]
    for name in failed:
        tail = Path(jobs[name]["log"]).read_text().splitlines()[-5:]
        print(f"{name} failed:\n  " + "\n  ".join(tail))
    return 1 if failed or not summary["groups"] else 0


if __name__ == "__main__":
    sys.exit(main())
