"""data.tiny_models' builders take dimensions; their defaults are the tiny test models."""

from __future__ import annotations

import torch

from data.tiny_models import build_llama, build_t5


def test_t5_defaults_are_the_tiny_model_and_dimensions_apply():
    tiny = build_t5(64)
    assert (tiny.config.d_model, tiny.config.num_layers, tiny.config.d_ff) == (128, 2, 256)
    assert tiny.config.feed_forward_proj == "gated-silu"
    bigger = build_t5(64, d_model=64, d_kv=16, d_ff=96, layers=3, heads=4, dtype=torch.bfloat16)
    config = bigger.config
    assert (config.d_model, config.d_kv, config.d_ff, config.num_heads) == (64, 16, 96, 4)
    assert config.num_layers == config.num_decoder_layers == 3
    assert bigger.lm_head.weight.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32  # restored after the build
    # The head is its own tensor (UL2's layout), scaled like tied T5's output.
    assert bigger.lm_head.weight.data_ptr() != bigger.shared.weight.data_ptr()


def test_llama_dimensions_apply():
    config = build_llama(64, hidden=96, intermediate=160, layers=3, heads=2, head_dim=48).config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (96, 160, 3)
    assert (config.num_attention_heads, config.head_dim) == (2, 48)
    assert build_llama(64).config.hidden_size == 128
