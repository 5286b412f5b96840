"""ONNX Runtime for the tagger's emission graph (fast CPU inference); decoding stays in torch.

The exported graph is backbone -> first-subword gather -> casing embedding -> emission layer, with dynamic batch,
subword and word axes. The CRF/softmax decoding and the groundability head (when present, from the exported subword
states) run in torch, so predictions go through exactly the same decoding code as the torch path.

Exports are cached by a hash of the tagger's weights and hyper-parameters, so a retrained or edited checkpoint is
exported again and an unchanged one is not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from refineg.errors import MissingExtraError
from refineg.modules.tagger import SequenceTagger

logger = logging.getLogger(__name__)

#: Bump when the exported graph's inputs, outputs or export settings change (invalidates cached exports).
EXPORT_VERSION = 1
#: Bump when the int8 quantisation settings change.
QUANT_VERSION = 1
INPUTS = ("input_ids", "attention_mask", "word_index", "casing")
INSTALL_HINT = "pip install 'refineg[onnx]' (or: pip install onnxruntime onnx onnxscript)"
#: Loggers of the exporter and its graph optimiser, which log every optimisation pass at INFO (ONNX Runtime's
#: quantiser logs every tensor at INFO on the root logger itself).
EXPORT_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


def _warning_or_worse(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


@contextlib.contextmanager
def export_logs_as_debug() -> Iterator[None]:
    """Within the block, INFO lines of the exporter and quantiser show only when this module logs at DEBUG.

    That is the :data:`EXPORT_LOGGERS` and what is logged on the root logger itself; loggers given a level of their
    own are left alone.
    """
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    quiet = [lg for lg in map(logging.getLogger, EXPORT_LOGGERS) if lg.level == logging.NOTSET]
    root = logging.getLogger()
    for lg in quiet:
        lg.setLevel(logging.WARNING)
    root.addFilter(_warning_or_worse)  # a logger's filters see only what is logged on it, not what its children pass up
    try:
        yield
    finally:
        root.removeFilter(_warning_or_worse)
        for lg in quiet:
            lg.setLevel(logging.NOTSET)


def require_onnxruntime():
    """Imports ``onnxruntime``, or raises a :class:`~refineg.errors.MissingExtraError` that names the pip command."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError(f"runtime='onnx' needs onnxruntime; {INSTALL_HINT}") from None
    return onnxruntime


class EmissionGraph(nn.Module):
    """The exported part of a :class:`SequenceTagger`: ids, mask, word positions, casing -> emissions.

    Args:
        tagger: A text-only tagger in eval mode (dropout is the identity and is left out).
    """

    def __init__(self, tagger: SequenceTagger) -> None:
        super().__init__()
        self.tagger = tagger
        self.with_states = tagger.groundability is not None

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, word_index: Tensor, casing: Tensor
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``(B, S)`` ids/mask and ``(B, W)`` word starts/casing -> ``(B, W, K)`` emissions [, ``(B, S, H)`` states]."""
        states, words = self.tagger.encode(input_ids, attention_mask, word_index, casing)
        emissions = self.tagger.head(words)
        return (emissions, states) if self.with_states else emissions


def weights_hash(tagger: SequenceTagger, hparams: dict | None = None) -> str:
    """Hex SHA-256 of the tagger's state dict, its hyper-parameters, the torch version and :data:`EXPORT_VERSION`."""
    digest = hashlib.sha256()
    meta = {"hparams": hparams or {}, "torch": torch.__version__, "export_version": EXPORT_VERSION}
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, value in sorted(tagger.state_dict().items()):
        digest.update(name.encode())
        digest.update(str((value.dtype, tuple(value.shape))).encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$REFINEG_ONNX_CACHE``, else ``<system temp>/refineg-onnx``."""
    return Path(os.environ.get("REFINEG_ONNX_CACHE") or Path(tempfile.gettempdir()) / "refineg-onnx")


def export_emission_graph(tagger: SequenceTagger, example: dict[str, Tensor], path: str | Path) -> Path:
    """Exports :class:`EmissionGraph` of ``tagger`` to ``path`` (one self-contained file, written atomically).

    Args:
        tagger: A text-only tagger on the CPU.
        example: A collated batch (``input_ids``, ``attention_mask``, ``word_index``, ``casing``) to trace with;
            its batch, subword and word lengths become dynamic axes.
        path: Destination ``.onnx`` file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = EmissionGraph(tagger).eval()
    args = tuple(example[k].cpu() for k in INPUTS)
    batch, subwords, words = (torch.export.Dim(n) for n in ("batch", "subwords", "words"))
    dynamic = {
        "input_ids": {0: batch, 1: subwords},
        "attention_mask": {0: batch, 1: subwords},
        "word_index": {0: batch, 1: words},
        "casing": {0: batch, 1: words},
    }
    outputs = ["emissions", "states"] if graph.with_states else ["emissions"]
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(f"exporting to ONNX needs {err.name}; {INSTALL_HINT}") from None
    with warnings.catch_warnings(), torch.no_grad(), export_logs_as_debug():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            args,
            str(tmp),
            input_names=list(INPUTS),
            output_names=outputs,
            dynamic_shapes=dynamic,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    os.replace(tmp, path)
    return path


class OnnxEmissions:
    """Runs a tagger's emission graph with ONNX Runtime on the CPU.

    Args:
        tagger: A text-only tagger (backbone ``hf``), on the CPU, in eval mode.
        example: A collated batch to export with (any shape: the axes are dynamic).
        hparams: The module's hyper-parameters (part of the cache key).
        cache_dir: Folder of cached exports (default :func:`default_cache_dir`); the file is
            ``emissions-<hash>.onnx``, re-exported when the weights change.
        threads: Intra-op threads (default: ``torch.get_num_threads()``).
        quantize: ``"int8"``: ONNX Runtime dynamic int8 quantisation (per-channel weights) of the exported graph.

    Raises:
        ImportError: onnxruntime (or onnx/onnxscript for the export) is missing.
        ValueError: The backbone takes images (only text-only taggers are exported), or unknown ``quantize``.
    """

    def __init__(
        self,
        tagger: SequenceTagger,
        example: dict[str, Tensor],
        hparams: dict | None = None,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
        quantize: str | None = None,
    ) -> None:
        ort = require_onnxruntime()
        if hasattr(tagger.backbone, "image"):
            raise ValueError("runtime='onnx' supports text-only taggers (backbone 'hf'); this one takes images")
        if quantize not in (None, "int8"):
            raise ValueError(f"unknown ONNX quantisation {quantize!r}; supported: int8")
        self.with_states = tagger.groundability is not None
        key = weights_hash(tagger, hparams)[:24]
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.path = folder / f"emissions-{key}.onnx"
        if not self.path.is_file():
            logger.info("exporting the emission graph to %s", self.path)
            export_emission_graph(tagger, example, self.path)
        if quantize == "int8":
            self.path = self._quantized(self.path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _quantized(path: Path) -> Path:
        """Per-channel dynamic int8 copy of the encoder's MatMuls (cached next to ``path``).

        The emission layer stays float32 (as with the torch int8 path). ``reduce_range`` (7-bit weights) avoids the
        int16 saturation of AVX2's u8*s8 kernels (no VNNI), which otherwise flips many tags.
        """
        out = path.with_name(f"{path.stem}-int8v{QUANT_VERSION}.onnx")
        if not out.is_file():
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
            with export_logs_as_debug():
                quantize_dynamic(
                    str(path),
                    str(tmp),
                    per_channel=True,
                    reduce_range=True,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul"],
                    nodes_to_exclude=[_head_matmul(onnx.load(str(path)))],
                )
            os.replace(tmp, out)
        return out

    def __call__(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """``(B, W, K)`` emissions and, with a groundability head, ``(B, S, H)`` subword states (else None)."""
        feeds = {k: batch[k].cpu().numpy() for k in INPUTS}
        outs = self.session.run(None, feeds)
        emissions = torch.from_numpy(outs[0])
        return emissions, (torch.from_numpy(outs[1]) if self.with_states else None)


def _head_matmul(model) -> str:
    """Name of the MatMul/Gemm node of the emission layer (walking back from the ``emissions`` output)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer["emissions"]
    while node.op_type not in ("MatMul", "Gemm"):
        node = next(producer[i] for i in node.input if i in producer)
    return node.name
