"""Golden loading: a Flan-T5 (T5 v1.1) checkpoint laid out exactly as the hub stores one loads with ITS OWN output
layer and gives the logits of an independent T5 v1.1 forward pass; fine-tune -> save -> reload keeps both; the
CTranslate2 conversion generates the same greedy tokens.

There are no pretrained weights offline, so the checkpoint is built here: `tie_word_embeddings: false` in a
transformers-4-era config.json, an lm_head that differs from the embeddings, safetensors. transformers 5 forces
`tie_word_embeddings=True` on every T5 config and keeps a checkpoint's own lm_head only because both tensors are in
the file; a pin that ties them (or re-ties them later) would start every fine-tune from a broken model. Each failure
message names the installed transformers version, the first thing to check after an upgrade.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from flant5_lib.config import Params
from flant5_lib.modeling import load_model_and_tokenizer, save_model

VERSIONS = f"transformers {transformers.__version__}, torch {torch.__version__}"
# google/flan-t5-base's config.json, shrunk (same keys, transformers-4 era: the hub files predate transformers 5).
HUB_CONFIG = {
    "architectures": ["T5ForConditionalGeneration"], "d_ff": 96, "d_kv": 16, "d_model": 64, "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
    "model_type": "t5", "n_positions": 512, "num_decoder_layers": 2, "num_heads": 4, "num_layers": 2, "output_past": True,
    "pad_token_id": 0, "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.23.1", "use_cache": True,
    "vocab_size": 2048,  # the tokenizer's 2000 padded to a multiple of 128, as flan-t5 pads 32100 to 32128
}
HUB_GENERATION_CONFIG = {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0, "transformers_version": "4.27.0.dev0"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _hub_state_dict(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random T5 v1.1 weights at T5's init scales, with the output layer drawn separately from the embeddings."""
    g = torch.Generator().manual_seed(seed)
    d, dkv, h, dff, vocab = cfg["d_model"], cfg["d_kv"], cfg["num_heads"], cfg["d_ff"], cfg["vocab_size"]

    def w(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def norm() -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(d, generator=g)  # not all ones, so a dropped layer norm would show

    sd = {"shared.weight": w(vocab, d, std=1.0), "lm_head.weight": w(vocab, d, std=d**-0.5)}
    for stack in ("encoder", "decoder"):
        attentions = ["SelfAttention"] + (["EncDecAttention"] if stack == "decoder" else [])
        for i in range(cfg["num_layers"]):
            p = f"{stack}.block.{i}.layer."
            for j, name in enumerate(attentions):
                a = f"{p}{j}.{name}."
                sd.update({a + "q.weight": w(h * dkv, d, std=(d * dkv) ** -0.5), a + "k.weight": w(h * dkv, d, std=d**-0.5),
                           a + "v.weight": w(h * dkv, d, std=d**-0.5), a + "o.weight": w(d, h * dkv, std=(h * dkv) ** -0.5)})
                sd[f"{p}{j}.layer_norm.weight"] = norm()
            if i == 0:
                sd[f"{p}0.SelfAttention.relative_attention_bias.weight"] = w(cfg["relative_attention_num_buckets"], h, std=d**-0.5)
            f = f"{p}{len(attentions)}."
            sd.update({f + "DenseReluDense.wi_0.weight": w(dff, d, std=d**-0.5), f + "DenseReluDense.wi_1.weight": w(dff, d, std=d**-0.5),
                       f + "DenseReluDense.wo.weight": w(d, dff, std=dff**-0.5), f + "layer_norm.weight": norm()})
        sd[f"{stack}.final_layer_norm.weight"] = norm()
    return sd


def _write_hub_checkpoint(folder: Path, tokenizer_dir: Path, *, embed_copies: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True)
    sd = _hub_state_dict(HUB_CONFIG, seed)
    on_disk = dict(sd)
    if embed_copies:  # older exports also carry the (tied) encoder/decoder embedding copies
        on_disk["encoder.embed_tokens.weight"] = sd["shared.weight"].clone()
        on_disk["decoder.embed_tokens.weight"] = sd["shared.weight"].clone()
    save_file(on_disk, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(HUB_CONFIG))
    (folder / "generation_config.json").write_text(json.dumps(HUB_GENERATION_CONFIG))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, folder / name)
    return sd


# --- an independent T5 v1.1 forward pass: plain torch on the raw tensors, no transformers code -----------------------


def _buckets(relative: torch.Tensor, bidirectional: bool, n: int, max_distance: int) -> torch.Tensor:
    """T5's relative-position buckets (Raffel et al. 2020, mesh-tensorflow's `_relative_position_bucket`)."""
    out = torch.zeros_like(relative)
    if bidirectional:
        n //= 2
        out += (relative > 0).long() * n
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    exact = n // 2
    large = exact + (torch.log(relative.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (n - exact)).long()
    return out + torch.where(relative < exact, relative, torch.clamp(large, max=n - 1))


def reference_logits(sd: dict[str, torch.Tensor], cfg: dict, input_ids: list[int], decoder_ids: list[int]) -> torch.Tensor:
    """Logits of T5 v1.1 for one unpadded example: RMS norms, unscaled attention with relative position bias in the
    first layer's table, gated-GELU (tanh) feed-forward, and the untied output layer with NO d_model**-0.5 scaling."""
    h, dkv, eps = cfg["num_heads"], cfg["d_kv"], cfg["layer_norm_epsilon"]
    n_buckets, max_distance = cfg["relative_attention_num_buckets"], cfg["relative_attention_max_distance"]

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def position_bias(table: torch.Tensor, length: int, bidirectional: bool) -> torch.Tensor:
        pos = torch.arange(length)
        return table[_buckets(pos[None, :] - pos[:, None], bidirectional, n_buckets, max_distance)].permute(2, 0, 1)

    def attention(x: torch.Tensor, memory: torch.Tensor, p: str, bias: torch.Tensor | float) -> torch.Tensor:
        q = (x @ sd[p + "q.weight"].T).view(-1, h, dkv).transpose(0, 1)
        k = (memory @ sd[p + "k.weight"].T).view(-1, h, dkv).transpose(0, 1)
        v = (memory @ sd[p + "v.weight"].T).view(-1, h, dkv).transpose(0, 1)
        weights = torch.softmax(q @ k.transpose(1, 2) + bias, dim=-1)  # T5 does not divide by sqrt(d_kv)
        return (weights @ v).transpose(0, 1).reshape(x.shape[0], h * dkv) @ sd[p + "o.weight"].T

    def feed_forward(x: torch.Tensor, p: str) -> torch.Tensor:
        gate = x @ sd[p + "wi_0.weight"].T
        gelu = 0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
        return (gelu * (x @ sd[p + "wi_1.weight"].T)) @ sd[p + "wo.weight"].T

    embed = sd["shared.weight"]
    x = embed[torch.tensor(input_ids)]
    bias = position_bias(sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], len(input_ids), True)
    for i in range(cfg["num_layers"]):
        p = f"encoder.block.{i}.layer."
        x = x + attention(rms(x, sd[p + "0.layer_norm.weight"]), rms(x, sd[p + "0.layer_norm.weight"]), p + "0.SelfAttention.", bias)
        x = x + feed_forward(rms(x, sd[p + "1.layer_norm.weight"]), p + "1.DenseReluDense.")
    memory = rms(x, sd["encoder.final_layer_norm.weight"])

    y = embed[torch.tensor(decoder_ids)]
    n = len(decoder_ids)
    causal = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
    bias = position_bias(sd["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], n, False) + causal
    for i in range(cfg["num_decoder_layers"]):
        p = f"decoder.block.{i}.layer."
        y = y + attention(rms(y, sd[p + "0.layer_norm.weight"]), rms(y, sd[p + "0.layer_norm.weight"]), p + "0.SelfAttention.", bias)
        y = y + attention(rms(y, sd[p + "1.layer_norm.weight"]), memory, p + "1.EncDecAttention.", 0.0)
        y = y + feed_forward(rms(y, sd[p + "2.layer_norm.weight"]), p + "2.DenseReluDense.")
    return rms(y, sd["decoder.final_layer_norm.weight"]) @ sd["lm_head.weight"].T


# --- the tests ---------------------------------------------------------------------------------------------------------

INPUT = [37, 5, 190, 88, 1021, 7, 412, 1]  # any ids below the vocabulary size, ending with </s>
DECODER = [0, 14, 907, 3, 55]  # <pad> (the decoder start) then a few tokens


def _model_logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([INPUT]), decoder_input_ids=torch.tensor([DECODER])).logits[0]


@pytest.fixture(scope="module")
def hub_checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("golden") / "flan-t5-hub-layout"
    return folder, _write_hub_checkpoint(folder, tiny_model_dir, embed_copies=False)


@pytest.mark.parametrize("embed_copies", [False, True], ids=["shared-only", "with-embedding-copies"])
def test_hub_layout_loads_its_own_output_layer_and_reference_logits(
    tiny_model_dir: Path, tmp_path: Path, embed_copies: bool
) -> None:
    sd = _write_hub_checkpoint(tmp_path / "ckpt", tiny_model_dir, embed_copies=embed_copies)
    model, _ = load_model_and_tokenizer(str(tmp_path / "ckpt"), device="cpu")
    assert torch.equal(model.lm_head.weight.detach(), sd["lm_head.weight"]), \
        f"the output layer is not the checkpoint's lm_head (tied to the embeddings?) with {VERSIONS}"
    assert torch.equal(model.shared.weight.detach(), sd["shared.weight"]), f"embeddings differ from the checkpoint with {VERSIONS}"
    assert model.encoder.embed_tokens.weight is model.shared.weight, f"encoder embeddings not tied to shared with {VERSIONS}"
    assert getattr(model.config, "scale_decoder_outputs", not model.config.tie_word_embeddings) is False, \
        f"T5 v1.1 decoder outputs are being rescaled with {VERSIONS}"
    expected = reference_logits(sd, HUB_CONFIG, INPUT, DECODER)
    got = _model_logits(model)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), \
        f"logits differ from the reference T5 v1.1 forward (max diff {(got - expected).abs().max():.3g}) with {VERSIONS}"


def test_a_later_tie_weights_keeps_the_output_layer(hub_checkpoint: tuple[Path, dict]) -> None:
    """accelerate's FSDP2 preparation and resize_token_embeddings call `model.tie_weights()`, which in transformers 5
    copies the embeddings over a T5 lm_head; `load_model_and_tokenizer` guards against it."""
    folder, sd = hub_checkpoint
    model, _ = load_model_and_tokenizer(str(folder), device="cpu")
    model.tie_weights()
    assert torch.equal(model.lm_head.weight.detach(), sd["lm_head.weight"]), f"tie_weights() replaced lm_head with {VERSIONS}"
    assert model.decoder.embed_tokens.weight is model.shared.weight


def test_fine_tune_save_reload_keeps_the_output_layer_and_logits(hub_checkpoint: tuple[Path, dict], tmp_path: Path) -> None:
    from flant5_lib.preprocess import make_collator, make_train_features
    from flant5_lib.synthetic import generate_records

    folder, sd = hub_checkpoint
    model, tokenizer = load_model_and_tokenizer(str(folder), device="cpu")
    params = Params(max_source_length=64, max_target_length=24)
    rows = generate_records(8, seed=2)
    feats = make_train_features(tokenizer, params)({"dialogue": [r["dialogue"] for r in rows], "summary": [r["summary"] for r in rows]})
    batch = make_collator(tokenizer, model, params)([{k: feats[k][i] for k in feats} for i in range(len(rows))])
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    tuned_head = model.lm_head.weight.detach().clone()
    tuned_logits = _model_logits(model)
    assert not torch.equal(tuned_head, sd["lm_head.weight"])  # training moved the output layer itself

    out = save_model(model, tokenizer, tmp_path / "tuned", params)
    saved = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" in saved and not torch.equal(saved["lm_head.weight"], saved["shared.weight"]), \
        f"the saved folder lost its own output layer with {VERSIONS}"
    reloaded, _ = load_model_and_tokenizer(str(out), device="cpu")
    assert torch.equal(reloaded.lm_head.weight.detach(), tuned_head), f"reloaded lm_head differs from the tuned one with {VERSIONS}"
    got = _model_logits(reloaded)
    assert torch.allclose(got, tuned_logits, atol=1e-5), f"reloaded logits differ from the tuned model's with {VERSIONS}"
    expected = reference_logits(saved, HUB_CONFIG, INPUT, DECODER)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), f"reloaded logits differ from the reference forward with {VERSIONS}"


def test_ctranslate2_conversion_generates_the_same_greedy_tokens(hub_checkpoint: tuple[Path, dict], tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    from flant5_lib.inference import generate_from_ids
    from flant5_lib.preprocess import encode_sources
    from flant5_lib.serve.ct2 import CT2Backend
    from flant5_lib.synthetic import generate_records

    folder, _ = hub_checkpoint
    model_dir = tmp_path / "model"
    shutil.copytree(folder, model_dir)  # the conversion is cached next to the model: keep the shared fixture clean
    model, tokenizer = load_model_and_tokenizer(str(model_dir), device="cpu")
    ids, _ = encode_sources(tokenizer, [r["dialogue"] for r in generate_records(6, seed=4)], Params(max_source_length=64))
    gen = {"max_new_tokens": 12, "num_beams": 1, "do_sample": False}
    hf = [generate_from_ids(model, tokenizer, [s], gen)[0] for s in ids]
    ct2 = CT2Backend(model_dir, compute_type="float32", device="cpu", threads=1).generate(ids, gen)
    assert len(set(hf)) > 1, "the reference generations are all the same: the comparison would prove nothing"
    assert ct2 == hf, f"CTranslate2 greedy output differs from transformers' with {VERSIONS}"
