import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

FIXTURES = Path(__file__).parent / "data" / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SHARED_GMNER = Path(__file__).resolve().parents[2] / "shared" / "data" / "twitter-gmner" / "Twitter10000_v2.0"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    from tests.tiny_models import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def load_script(relative: str, name: str):
    """Imports a script of the repository that is not in a package (``train.py``, ``bench/*.py``) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
