"""Batched inference with a trained tagger: posts in, predicted posts (entities + confidence) out.

A checkpoint with a groundability head also fills :attr:`refineg.data.schema.Entity.groundable`.
"""

from __future__ import annotations

import copy
import pickle
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from refineg.data import DataFormatError, Example
from refineg.data.files import torch_archive
from refineg.datamodules.encoding import PostCollator, encode_posts
from refineg.inference.quantize import QUANTIZE_SCHEMES, quantize_encoder
from refineg.metrics import evaluate_examples
from refineg.modules.tagger_module import TaggerModule
from refineg.weights import load_tokenizer

__all__ = ["QUANTIZE_SCHEMES", "TaggerPredictor", "load_tagger", "quantize_encoder"]


def load_tagger(path: str | Path) -> TaggerModule:
    """The :class:`TaggerModule` of a checkpoint written by ``train.py``, on the CPU.

    Raises:
        DataFormatError: The file is missing, is not a PyTorch checkpoint (``torch.save`` writes zip archives), or
            is one without a tagger's hyper-parameters.
    """
    path = torch_archive(path)
    try:
        return TaggerModule.load_from_checkpoint(str(path), map_location="cpu", weights_only=False)
    except (KeyError, TypeError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise DataFormatError(
            path, f"not a tagger checkpoint written by train.py ({type(err).__name__}: {err})"
        ) from None


def read_tagger_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict of a tagger checkpoint written by ``train.py`` (tensors on the CPU), not built.

    Raises:
        DataFormatError: As :func:`load_tagger`: a missing file, not a PyTorch checkpoint, or one without a
            tagger's weights and hyper-parameters.
    """
    path = torch_archive(path)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
        if "state_dict" not in ckpt or not {"model", "types"} <= set(ckpt.get("hyper_parameters", {})):
            raise KeyError("state_dict, hyper_parameters.model and hyper_parameters.types")
    except (KeyError, TypeError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise DataFormatError(
            path, f"not a tagger checkpoint written by train.py ({type(err).__name__}: {err})"
        ) from None
    return ckpt


class TaggerPredictor:
    """Tags posts with a :class:`TaggerModule`, longest-first batches, no gradients.

    Args:
        module: A trained module (e.g. ``TaggerModule.load_from_checkpoint(path)``).
        batch_size: Posts per forward pass.
        max_length: Subword budget per post.
        device: Torch device (default: the module's).
        quantize: ``"int8"``: dynamic int8 quantisation of the encoder's linear layers (CPU only; per-channel
            weights, activations quantised per batch; ``"int8-per-tensor"``: torch's default, less accurate; see
            :func:`~refineg.inference.quantize.quantize_encoder`); with ``runtime="onnx"``, ``"int8"`` is ONNX
            Runtime's per-channel dynamic int8 quantisation of the exported graph. ``None`` keeps the trained precision.
        runtime: ``"torch"`` (default) or ``"onnx"``: the emission graph (backbone, casing, emission layer) runs in
            ONNX Runtime on the CPU and decoding stays in torch (needs ``pip install 'refineg[onnx]'``; text-only
            taggers). The export is cached in ``onnx_cache_dir`` keyed by a hash of the weights.
        onnx_cache_dir: Folder of cached ONNX exports (default ``$REFINEG_ONNX_CACHE`` or ``<tmp>/refineg-onnx``).
    """

    def __init__(
        self,
        module: TaggerModule,
        batch_size: int = 64,
        max_length: int = 128,
        device: str | torch.device | None = None,
        quantize: str | None = None,
        runtime: str = "torch",
        onnx_cache_dir: str | Path | None = None,
    ) -> None:
        if runtime not in ("torch", "onnx"):
            raise ValueError(f"unknown runtime {runtime!r}; supported: torch, onnx")
        self.module = module.eval()
        if runtime == "onnx":
            if device is not None and torch.device(device).type != "cpu":
                raise ValueError(f"runtime='onnx' runs on the CPU; got device={device}")
            self.module.to("cpu")
        elif device is not None:
            self.module.to(device)
        if quantize is not None and runtime == "torch":
            quantize_encoder(self.module, quantize)
        self.tokenizer = load_tokenizer(module.hparams.model["encoder"])
        self.collate = PostCollator(self.tokenizer.pad_token_id)
        self.batch_size, self.max_length = batch_size, max_length
        self.onnx = None
        if runtime == "onnx":
            from refineg.inference.onnx_runtime import OnnxEmissions

            # two posts of different lengths, so that no axis is traced at size 1 (torch.export specialises those)
            probe = [
                Example("probe-0", ["An", "example", "post", "from", "Paris"], None, []),
                Example("probe-1", ["Another", "one"], None, []),
            ]
            example = self.collate(encode_posts(probe, self.tokenizer, None, self.max_length))
            self.onnx = OnnxEmissions(
                self.module.tagger, example, hparams=dict(module.hparams), cache_dir=onnx_cache_dir, quantize=quantize
            )

    def run(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, W, K)`` emissions and (groundability head only) ``(B, S, H)`` subword states of a batch."""
        return self.onnx(batch) if self.onnx is not None else self.module.run(batch)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> TaggerPredictor:
        """Loads a Lightning checkpoint written by ``train.py`` (see :func:`load_tagger`)."""
        return cls(load_tagger(path), **kwargs)

    def batches(
        self, examples: Sequence[Example], progress: bool = False, desc: str = "tagging", labels: bool = False
    ) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        """Longest-first collated batches on the module's device, with the indices of their posts.

        With ``labels`` the batches carry the gold BIO labels of ``examples`` (for fitting calibration layers).
        """
        label_ids = {lab: i for i, lab in enumerate(self.module.labels)} if labels else None
        encoded = encode_posts(list(examples), self.tokenizer, label_ids, self.max_length)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
        device = self.module.device
        bar = tqdm(total=len(encoded), desc=desc, unit="post", disable=not progress)
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            yield idx, {k: v.to(device) for k, v in self.collate([encoded[i] for i in idx]).items()}
            bar.update(len(idx))
        bar.close()

    @torch.inference_mode()
    def predict(self, examples: Sequence[Example], progress: bool = True) -> list[Example]:
        """Predicted copies of ``examples`` (same ids and order; ``source="predicted"``)."""
        examples = list(examples)
        out: list[Example | None] = [None] * len(examples)
        for idx, batch in self.batches(examples, progress):
            for i, pred in zip(idx, self.module.decode(batch, [examples[i] for i in idx], self.run(batch))):
                out[i] = pred
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def score_groundability(self, examples: Sequence[Example], progress: bool = False) -> list[Example]:
        """Copies of ``examples`` whose given entities (gold, refined, ...) carry ``groundable`` from the head.

        Entities of a type outside the tagger's inventory, or cut off by ``max_length``, get ``groundable=None``.

        Raises:
            RuntimeError: The checkpoint has no groundability head.
        """
        if self.module.tagger.groundability is None:
            raise RuntimeError("this checkpoint has no groundability head (train with model.groundability=true)")
        out = [copy.deepcopy(ex) for ex in examples]
        for idx, batch in self.batches(out, progress, desc="groundability"):
            _, states = self.run(batch)
            probs = self.module.score_groundability(batch, states, [out[i].entities for i in idx])
            for i, post in zip(idx, probs):
                for ent, p in zip(out[i].entities, post):
                    ent.groundable = p
        return out


def checkpoint_mner_f1(
    path: str | Path,
    gold: Sequence[Example],
    batch_size: int = 64,
    max_length: int = 128,
    device: str | torch.device | None = None,
) -> float:
    """MNER F1 (0-1) of the tagger checkpoint at ``path`` on ``gold`` posts (tagged without their labels' help).

    Raises:
        DataFormatError: As :func:`load_tagger`.
    """
    predictor = TaggerPredictor(load_tagger(path), batch_size, max_length, device=device)
    return evaluate_examples(gold, predictor.predict(gold, progress=False))["mner"]["f1"]
