import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

FIXTURES = Path(__file__).parent / "data" / "fixtures"
SHARED_GMNER = Path(__file__).resolve().parents[2] / "shared" / "data" / "twitter-gmner" / "Twitter10000_v2.0"
