"""Dynamic int8 quantisation of a tagger's encoder for CPU inference (torch's eager ``quantize_dynamic`` path).

torchao's replacement (``Int8DynamicActivationInt8WeightConfig``, eager on the CPU) was measured and keeps F1 but runs
0.6-0.8x as fast as the ``"int8"`` scheme here (docs/benchmarks.md, "torchao int8"), so it is not used.
"""

from __future__ import annotations

import torch

from refineg.modules.tagger_module import TaggerModule

QUANTIZE_SCHEMES = ("int8", "int8-per-tensor")


def quantize_encoder(module: TaggerModule, scheme: str) -> TaggerModule:
    """Quantises ``module``'s encoder in place for CPU inference (the head and CRF stay in float32).

    Both schemes replace every ``nn.Linear`` of the backbone by a dynamic int8 one: weights are stored int8, and
    each call quantises its input to uint8 with one scale per call (per batch), multiplies in int32 and returns
    float32.

    Args:
        module: A module on the CPU, in eval mode.
        scheme: ``"int8"``: per-output-channel weight scales with 7-bit weights ([-64, 63]) and full 8-bit
            activations (dev MNER F1 within 0.1 of float32 in docs/benchmarks.md). ``"int8-per-tensor"``: torch's
            default ``quantize_dynamic`` (one weight scale per matrix, 8-bit weights, 7-bit activations), the same
            speed and about 2 F1 points lower; kept for comparison.

    Raises:
        ValueError: Unknown scheme, or the module is not on the CPU.
    """
    import warnings

    from torch import nn

    if scheme not in QUANTIZE_SCHEMES:
        raise ValueError(f"unknown quantisation {scheme!r}; supported: {', '.join(QUANTIZE_SCHEMES)}")
    if module.device.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on the CPU; the module is on {module.device}")
    with warnings.catch_warnings():  # torch.ao's eager quantisation warns that it is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        backbone = module.tagger.backbone
        if scheme == "int8-per-tensor":
            module.tagger.backbone = torch.ao.quantization.quantize_dynamic(backbone, {nn.Linear}, dtype=torch.qint8)
        else:
            module.tagger.backbone = torch.ao.quantization.quantize_dynamic(
                backbone,
                {nn.Linear: _per_channel_qconfig()},
                dtype=torch.qint8,
                mapping={nn.Linear: FullRangeDynamicLinear},
            )
    return module


def _per_channel_qconfig() -> torch.ao.quantization.QConfig:
    """Per-output-channel symmetric int8 weights in [-64, 63] (7 bits); dynamic activation placeholder."""
    from torch.ao.quantization import PerChannelMinMaxObserver, QConfig, per_channel_dynamic_qconfig

    weight = PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-64, quant_max=63
    )
    return QConfig(activation=per_channel_dynamic_qconfig.activation, weight=weight)


class FullRangeDynamicLinear(torch.ao.nn.quantized.dynamic.Linear):
    """Dynamic int8 ``Linear`` that quantises its input to the full uint8 range [0, 255].

    torch's dynamic ``Linear`` always asks for ``reduce_range`` (7-bit inputs), because FBGEMM's AVX2 kernels add
    pairs of uint8 x int8 products in int16, which 255 x 127 x 2 overflows. This class keeps the 8-bit inputs and
    relies on 7-bit weights instead (255 x 64 x 2 = 32,640 fits int16), built by :func:`quantize_encoder`.
    Input ``(..., in_features)`` float32, output ``(..., out_features)`` float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features)`` -> ``(..., out_features)``."""
        if self._packed_params.dtype != torch.qint8:
            raise RuntimeError(f"FullRangeDynamicLinear holds qint8 weights, got {self._packed_params.dtype}")
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        return y.to(x.dtype)

    def _get_name(self) -> str:
        return "FullRangeDynamicLinear"
