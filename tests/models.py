"""A tiny random BERT for tests and benchmarks that measure everything but the model."""

from __future__ import annotations

from pathlib import Path


def tiny_bert(out: Path, query_max_length: int = 32, passage_max_length: int = 64) -> Path:
    """A 2-layer, 32-d random BERT with all-MiniLM-L6-v2's tokenizer, saved in ``out``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hybrid.encoder import EncoderSettings, default_model_dir, save_settings

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(default_model_dir()), local_files_only=True).save_pretrained(out)
    settings = EncoderSettings(
        pooling="mean", normalize=True, query_max_length=query_max_length, passage_max_length=passage_max_length
    )
    save_settings(out, settings)
    return out
