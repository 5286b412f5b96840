"""Hyper-parameter sweeps: W&B sweep files (``configs/sweeps/``) run by a W&B agent or by the local runner."""

from .runner import TrialResult, last_error_line, rank, read_metric, run_sweep, trial_name, write_results
from .spec import SweepSpec, load_sweep, sample_parameter

__all__ = [
    "SweepSpec",
    "TrialResult",
    "last_error_line",
    "load_sweep",
    "rank",
    "read_metric",
    "run_sweep",
    "sample_parameter",
    "trial_name",
    "write_results",
]
