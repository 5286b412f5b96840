"""W&B sweep files read without a W&B server: the search space, the trial grid or sample, and trial commands.

The same ``configs/sweeps/*.yaml`` file works with ``wandb sweep FILE`` + ``wandb agent ID`` and with
``refineg sweep FILE``. Supported keys (W&B's meaning): ``program``, ``method`` (``grid``, ``random``; ``bayes`` is
sampled like ``random`` locally), ``metric`` (``name``, ``goal``), ``parameters`` (each with ``value``, ``values``
(+ ``probabilities``) or a ``distribution``), ``command``, ``run_cap``, ``name``, ``description``.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from refineg.resources import resolve_path

logger = logging.getLogger(__name__)

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
#: The shipped sweeps' programs as modules of the installed package. An install from a wheel has neither train.py nor
#: tools/, so where the script is not in the trials' working folder the local runner runs the module instead.
PACKAGED_PROGRAMS = {
    "train.py": ["-m", "refineg.cli", "train"],
    "tools/refine_trial.py": ["-m", "refineg.sweeps.refine_trial"],
}
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "log_uniform_values",
    "log_uniform",
    "q_uniform",
    "q_log_uniform_values",
)
METHODS = ("grid", "random", "bayes")


@dataclass
class SweepSpec:
    """A parsed W&B sweep file.

    Attributes:
        name: Sweep name (default: the file's stem).
        program: Script each trial runs.
        method: ``grid``, ``random`` or ``bayes``.
        metric: Metric name the trials are ranked by (a key the trial logs, e.g. ``val/mner_f1_best``).
        goal: ``maximize`` or ``minimize``.
        parameters: ``{key: W&B parameter dict}``.
        command: Command template (W&B macros ``${env}``, ``${interpreter}``, ``${program}``, ``${args}``,
            ``${args_no_hyphens}``).
        run_cap: Most trials (random search default count).
        path: File it came from.
    """

    name: str
    program: str
    method: str
    metric: str
    goal: str = "maximize"
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    command: list[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    run_cap: int | None = None
    description: str = ""
    path: Path | None = None

    @property
    def maximize(self) -> bool:
        """Whether a larger metric is better."""
        return self.goal == "maximize"

    def expand(self, count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
        """The trials' parameter values, in a fixed order.

        Args:
            count: Trials to draw (random/bayes; default ``run_cap``); for grid, the first ``count`` grid points.
            seed: Seed of the random draws (the same seed gives the same trials, so a rerun resumes).

        Returns:
            One ``{key: value}`` dict per trial.

        Raises:
            ValueError: A random search without ``count``/``run_cap``, or a grid over a continuous parameter.
        """
        if self.method == "grid":
            keys = list(self.parameters)
            choices = []
            for key in keys:
                p = self.parameters[key]
                if "value" in p:
                    choices.append([p["value"]])
                elif "values" in p:
                    choices.append(list(p["values"]))
                else:
                    raise ValueError(f"{self._where()}: grid search needs 'value' or 'values' for {key!r}")
            trials = [dict(zip(keys, combo)) for combo in itertools.product(*choices)]
            return trials[:count] if count is not None else trials
        n = count if count is not None else self.run_cap
        if n is None:
            raise ValueError(f"{self._where()}: {self.method} search needs run_cap in the file or --count")
        if self.method == "bayes":
            logger.warning("%s: bayes search is sampled at random by the local runner", self._where())
        rng = random.Random(seed)
        return [{key: sample_parameter(key, p, rng) for key, p in self.parameters.items()} for _ in range(n)]

    def command_for(
        self, params: dict[str, Any], interpreter: str | None = None, cwd: str | Path | None = None
    ) -> list[str]:
        """The trial's argv, built from ``command`` as the W&B agent does.

        With ``cwd`` (the trials' working folder), a shipped program that is not there (an install from a wheel) is
        run as its packaged module (:data:`PACKAGED_PROGRAMS`).

        ``${args}`` gives ``--key=value`` and ``${args_no_hyphens}`` gives ``key=value``, values as Python
        ``str()`` (so ``None`` and ``True`` appear as such; ``refineg.config`` maps ``None`` to null).
        ``${interpreter}`` is the running Python (W&B: ``python``).

        Raises:
            ValueError: An unknown ``${...}`` macro.
        """
        argv: list[str] = []
        pairs = [f"{k}={v}" for k, v in params.items()]
        for token in self.command:
            if token == "${env}":
                if sys.platform != "win32":
                    argv.append("/usr/bin/env")
            elif token == "${interpreter}":
                argv.append(interpreter or sys.executable)
            elif token == "${program}":
                missing = cwd is not None and not (Path(cwd) / self.program).is_file()
                argv.extend(
                    PACKAGED_PROGRAMS[self.program] if missing and self.program in PACKAGED_PROGRAMS else [self.program]
                )
            elif token == "${args}":
                argv.extend(f"--{p}" for p in pairs)
            elif token == "${args_no_hyphens}":
                argv.extend(pairs)
            elif token.startswith("${") and token.endswith("}"):
                raise ValueError(f"{self._where()}: command macro {token} is not supported by the local runner")
            else:
                argv.append(str(token))
        return argv

    def _where(self) -> str:
        return str(self.path) if self.path else self.name


def sample_parameter(key: str, p: dict[str, Any], rng: random.Random) -> Any:
    """Draws one value of a W&B parameter dict.

    Raises:
        ValueError: An unknown distribution or missing bounds.
    """
    if "value" in p:
        return p["value"]
    dist = p.get("distribution", "categorical" if "values" in p else None)
    if dist in ("categorical", "constant") and "values" in p:
        return rng.choices(list(p["values"]), weights=p.get("probabilities"))[0]
    if dist not in DISTRIBUTIONS or "min" not in p or "max" not in p:
        raise ValueError(f"parameter {key!r}: need value, values or a distribution with min/max; got {p}")
    lo, hi = p["min"], p["max"]
    if dist == "int_uniform":
        return rng.randint(int(lo), int(hi))
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if dist == "log_uniform":  # W&B: min/max are natural logs
        return math.exp(rng.uniform(lo, hi))
    q = p.get("q", 1)
    if dist == "q_uniform":
        return round(rng.uniform(lo, hi) / q) * q
    return round(math.exp(rng.uniform(math.log(lo), math.log(hi))) / q) * q  # q_log_uniform_values


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Reads a W&B sweep YAML file.

    Args:
        path: The sweep file (used as given where it exists; ``configs/sweeps/NAME.yaml`` else is the packaged one).
        overrides: ``{key: value}`` fixed values that replace (or add) parameters, e.g. a data root.

    Raises:
        ValueError: Missing ``program``/``metric``, an unknown method or goal, a malformed parameter.
    """
    path = resolve_path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a sweep file is a YAML mapping")
    for key in ("program", "method", "metric", "parameters"):
        if key not in raw:
            raise ValueError(f"{path}: missing {key!r}")
    if raw["method"] not in METHODS:
        raise ValueError(f"{path}: method must be one of {METHODS}, got {raw['method']!r}")
    metric = raw["metric"]
    if not isinstance(metric, dict) or "name" not in metric:
        raise ValueError(f"{path}: metric must be {{name: ..., goal: maximize|minimize}}")
    goal = metric.get("goal", "minimize")  # W&B's default
    if goal not in ("maximize", "minimize"):
        raise ValueError(f"{path}: metric goal must be maximize or minimize, got {goal!r}")
    params = dict(raw["parameters"] or {})
    for key, p in params.items():
        if not isinstance(p, dict) or not ({"value", "values", "distribution", "min"} & set(p)):
            raise ValueError(f"{path}: parameter {key!r} needs value, values or a distribution, got {p!r}")
        if "parameters" in p:
            raise ValueError(f"{path}: nested parameters ({key!r}) are not supported; use dotted keys")
    for key, value in (overrides or {}).items():
        params[key] = {"value": value}
    return SweepSpec(
        name=str(raw.get("name") or path.stem),
        program=str(raw["program"]),
        method=raw["method"],
        metric=str(metric["name"]),
        goal=goal,
        parameters=params,
        command=[str(t) for t in raw.get("command") or DEFAULT_COMMAND],
        run_cap=raw.get("run_cap"),
        description=str(raw.get("description") or ""),
        path=path,
    )
