"""Tiny untrained taggers with confident, varied predictions, saved as real checkpoints (no training needed)."""

from pathlib import Path

import torch

from refineg.config import SAMPLE_ROOT
from refineg.data import Entity, Example, create_data_format
from refineg.modules.tagger_module import TaggerModule

TYPES = ["PER", "LOC", "ORG", "OTHER"]
OPTIM = {"encoder_lr": 1e-4, "head_lr": 1e-3, "crf_lr": 5e-2, "weight_decay": 0.0, "warmup_ratio": 0.1}


def make_tiny_tagger(
    encoder: str, head: str = "crf", dropout: float = 0.1, seed: int = 0, gain: float = 6.0
) -> TaggerModule:
    """A random tiny tagger whose emission layer is scaled by ``gain`` so that it predicts many entities."""
    torch.manual_seed(seed)
    model = {"backbone": "hf", "encoder": encoder, "head": head, "casing": True, "dropout": dropout}
    module = TaggerModule(model, OPTIM, TYPES)
    with torch.no_grad():
        module.tagger.head.emission.weight.mul_(gain)
        module.tagger.head.emission.bias.zero_()
        module.tagger.head.emission.bias[0] = 1.0  # some O, so entities stay short
    return module.eval()


def save_checkpoint(module: TaggerModule, path: Path) -> Path:
    """Writes a Lightning checkpoint that ``TaggerModule.load_from_checkpoint(path)`` reads."""
    import lightning as L

    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def sample_posts(split: str = "dev", n: int = 40) -> list[Example]:
    """The first ``n`` posts of the bundled Twitter-GMNER sample split."""
    reader = create_data_format("twitter-gmner").reader
    return reader(str(SAMPLE_ROOT / "txt" / f"{split}.txt"), str(SAMPLE_ROOT / "xml"))[:n]


def gold_from_predictions(preds: list[Example], every: int = 2) -> list[Example]:
    """Gold posts in which every ``every``-th predicted entity is right and the others have another type."""
    golds, k = [], 0
    for p in preds:
        ents = []
        for e in p.entities:
            etype = e.type if k % every == 0 else TYPES[(TYPES.index(e.type) + 1) % len(TYPES)]
            ents.append(Entity(e.start, e.end, etype))
            k += 1
        golds.append(Example(p.id, p.tokens, p.image, ents, source="gold", image_size=p.image_size))
    return golds
