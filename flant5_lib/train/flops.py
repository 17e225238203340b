"""Model FLOPs of T5 training and the GPU peaks they are compared with (model FLOP utilisation, MFU).

An encoder-decoder is not a decoder-only model: a source token goes through the encoder (and the decoder's
cross-attention key/value projections), a target token through the decoder and the output layer. The usual
`6 x parameters x tokens` would count every token through both halves, about twice the real work. Only matmul
weights are counted (x2 for multiply-add, x3 for forward + backward); attention scores (QK^T, AV) are left out,
about 2% at SAMSum lengths, so the MFU here slightly under-states the GPU's real use.
"""

from __future__ import annotations

from typing import Any

# Dense bf16 peak FLOP/s from NVIDIA's data sheets (SXM parts; the PCIe H100 is 756e12).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU named as torch.cuda.get_device_name names it; None when unknown."""
    for key, peak in PEAK_BF16.items():
        if key in device_name:
            return 756e12 if key == "H100" and "PCIe" in device_name else peak
    return None


def t5_train_flops(config: Any, source_tokens: int, target_tokens: int) -> float:
    """Forward + backward matmul FLOPs of one pass over `source_tokens` real encoder tokens and `target_tokens`
    real decoder tokens (padding excluded: MFU counts useful work only)."""
    d, inner, d_ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    gated = str(getattr(config, "feed_forward_proj", "")).startswith("gated")
    ffn = (3 if gated else 2) * d * d_ff
    enc_layers = config.num_layers
    dec_layers = getattr(config, "num_decoder_layers", None) or enc_layers
    per_source = enc_layers * (4 * d * inner + ffn) + dec_layers * 2 * d * inner  # + cross-attention k, v
    per_target = dec_layers * (4 * d * inner + 2 * d * inner + ffn) + d * config.vocab_size  # + cross q, o; lm_head
    return 6.0 * (source_tokens * per_source + target_tokens * per_target)
