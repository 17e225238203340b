"""The model-FLOP count behind tokens/s -> MFU: exact against torch's own FLOP counter on a small T5."""

from __future__ import annotations

import pytest

from flant5_lib.train.flops import peak_bf16_flops, t5_train_flops


@pytest.mark.parametrize("gated, dec_layers", [("gated-gelu", 3), ("relu", None)])
def test_flop_count_matches_torch_flop_counter(gated: str, dec_layers: int | None) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=500, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=dec_layers,
                   feed_forward_proj=gated, tie_word_embeddings=False, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(cfg)
    batch, src, tgt = 2, 40, 12
    ids, labels = torch.randint(1, 500, (batch, src)), torch.randint(1, 500, (batch, tgt))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=labels).loss.backward()
    # t5_train_flops leaves out the attention scores (QK^T and AV: 2 matmuls x 2 FLOPs x lengths x inner, x3 fwd+bwd).
    inner, enc, dec = cfg.num_heads * cfg.d_kv, cfg.num_layers, cfg.num_decoder_layers
    scores = 3 * 2 * 2 * inner * batch * (enc * src * src + dec * tgt * tgt + dec * tgt * src)
    assert t5_train_flops(cfg, batch * src, batch * tgt) + scores == counter.get_total_flops()


def test_peak_table_names_the_part() -> None:
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_bf16_flops("Tesla T4") is None
