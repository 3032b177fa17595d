"""Int8 dynamic quantisation of OmniLM for CPU decoding (opt-in).

Every nn.Linear (attention, MLP, adapter, lm_head, post-adapter) gets int8 weights with per-tensor scales;
activations are quantised on the fly (torch's fbgemm kernels, AVX2 is enough). Decoding at batch 1 is
bound by reading the weights, so a 4x smaller read is most of the gain: on the 2-core AVX2 development CPU a
Mini-Omni-shaped model decodes ~3x faster (`python benchmarks/bench_int8.py`). Logits change slightly,
so tokens are no longer guaranteed to equal upstream's fp32 ones. The embedding table stays fp32."""

from __future__ import annotations

import warnings

import torch

from omnivox.core.errors import InputError
from omnivox.core.kernel.model import OmniLM


def quantize_int8(lm: OmniLM) -> OmniLM:
    """Swap `lm`'s Linear layers for int8 dynamic-quantised ones, in place (no second copy of the weights);
    returns it. Inference only."""
    if lm.device.type != "cpu":
        raise InputError(f"int8 dynamic quantisation runs on the CPU, the model is on {lm.device}",
                         "move the model to the CPU first (or use bf16 on a GPU)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        quantized = torch.ao.quantization.quantize_dynamic(
            lm.eval(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return quantized
