"""What a training run starts from: the model (seeded random initialisation, then the given
files) and the phrase-embedding cache of its data set's phrases."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from interact.checkpoint import load_weights
from interact.model import InteractDiffusion, build_model
from interact.phrase_cache import PhraseEmbeddingCache, encoder_fingerprint


def build_training_model(config: DictConfig, ckpt=None, sd_ckpt=None,
                         allow_pickle: bool = False) -> tuple[InteractDiffusion, list[str], bool]:
    """The model a training run starts from: random initialisation seeded by train.seed (so it is
    the same on every rank and every restart), then whatever the files provide. Returns the
    model, one line per part saying where it came from, and whether the backbone came from a file."""
    from ldm.modules.encoders.clip_tokenizer import load_clip_tokenizer
    torch.manual_seed(config.train["seed"])
    model = build_model(config, tokenizer=load_clip_tokenizer())
    lines, backbone_from_file = load_weights(model, ckpt, sd_ckpt, purpose="train", allow_pickle=allow_pickle)
    return model, lines, backbone_from_file


def open_phrase_cache(config: DictConfig, text_encoder, fallback_root) -> PhraseEmbeddingCache:
    """train.phrase_cache, else <data.root>/phrase_embeddings_<encoder fingerprint>.pt."""
    fingerprint = encoder_fingerprint(text_encoder)
    path = config.train["phrase_cache"]
    if not path:
        root = Path(config.data.root) if "data" in config else Path(fallback_root)
        if not os.access(root, os.W_OK):  # a read-only or shared data set
            root = Path(fallback_root)
        path = root / f"phrase_embeddings_{fingerprint}.pt"
    return PhraseEmbeddingCache(text_encoder, path, fingerprint=fingerprint)


def dataset_phrases(dataset) -> set[str] | None:
    """Every subject/action/object phrase of a dataset's records, when it exposes them."""
    records = getattr(dataset, "records", None)
    if records is None:
        return None
    return {p for r in records for h in r.hois for p in (h.subject, h.action, h.object)}
