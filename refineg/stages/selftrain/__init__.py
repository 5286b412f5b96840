"""Self-training on unlabelled posts (issue 20).

The small tagger pseudo-labels them, its uncertainty keeps the confident labels (the uncertain ones are dropped,
masked or delegated to an MLLM), and it retrains on gold + pseudo-labels.
"""

from .config import SelfTrainConfig, SelfTrainSettings, load_selftrain_config
from .pool import UnlabeledPool, build_pool, read_unlabeled
from .run import label_pool, pick_teacher, run_selftrain, stop_reason, teacher_estimator
from .select import SELECTIONS, UNCERTAIN_POLICIES, pseudo_label_quality, select_pseudo_labels

__all__ = [
    "SelfTrainConfig",
    "SelfTrainSettings",
    "load_selftrain_config",
    "SELECTIONS",
    "UNCERTAIN_POLICIES",
    "UnlabeledPool",
    "build_pool",
    "label_pool",
    "pick_teacher",
    "pseudo_label_quality",
    "read_unlabeled",
    "run_selftrain",
    "select_pseudo_labels",
    "stop_reason",
    "teacher_estimator",
]
