"""One trial of a refinement sweep (configs/sweeps/uncertainty_heads.yaml, thresholds.yaml).

``python tools/refine_trial.py source=runs/X head=entropy tau=0.3 backend=oracle [runs_dir=D run_name=N wandb=true]``;
see refineg/sweeps/refine_trial.py for the keys and the metrics it writes.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from refineg.sweeps.refine_trial import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
