from __future__ import annotations

from cellformers.nn import TransformerBlock, TransformerEncoder


def test_attention_dropout_defaults_to_dropout_rate_and_can_differ():
    enc = TransformerEncoder(8, 2, 2, 16, dropout_rate=0.3)
    assert all(layer.attn.dropout_rate == 0.3 for layer in enc.layers)
    enc = TransformerEncoder(8, 2, 2, 16, dropout_rate=0.3, attention_dropout_rate=0.0)
    assert all(layer.attn.dropout_rate == 0.0 for layer in enc.layers)
    assert enc.layers[0].drop1.p == 0.3
    assert TransformerBlock(8, 2, 16, 0.1, attention_dropout_rate=0.2).attn.dropout_rate == 0.2
