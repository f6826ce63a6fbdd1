"""CLIP pooled phrase embeddings, computed once and looked up during training.

HICO-DET has ~200 distinct phrases (80 objects, 117 verbs, "person"), so encoding
them on every step would waste a text-encoder forward per micro-batch. The cache
file is tied to the text encoder that made it by a fingerprint of its weights: a
cache from another encoder is refused instead of silently giving wrong features.
A phrase missing from the cache is computed and added, not an error.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from hoi.io import atomic_save
from hoi.pickles import RefusedPickle, UnreadablePickle, load_torch


def encoder_fingerprint(text_encoder: torch.nn.Module) -> str:
    """sha256 over the names and bytes of every tensor of the encoder (12 hex digits)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(text_encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


class PhraseEmbeddingCache:
    """phrase -> [D] pooled embedding. `encode` is the text encoder's `encode_pooled`."""

    def __init__(self, text_encoder, path=None, batch_size: int = 256, fingerprint: str | None = None):
        self.text_encoder = text_encoder
        self.fingerprint = fingerprint or encoder_fingerprint(text_encoder)
        self.path = Path(path) if path is not None else None
        self.batch_size = batch_size
        self.table: dict[str, torch.Tensor] = {}
        self.dirty = False
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            data = load_torch(self.path)
        except (RefusedPickle, UnreadablePickle) as err:
            raise ValueError(f"phrase cache {self.path}: {err}; delete it (it is rebuilt) or pass another "
                             f"path") from None
        if not isinstance(data, dict) or not {"fingerprint", "phrases", "embeddings"} <= set(data):
            raise ValueError(f"phrase cache {self.path}: not a phrase cache (it holds no fingerprint, phrases and "
                             f"embeddings); delete it (it is rebuilt) or pass another path")
        if data.get("fingerprint") != self.fingerprint:
            raise ValueError(f"phrase cache {self.path} was made by another text encoder (fingerprint "
                             f"{data.get('fingerprint')}, this one {self.fingerprint}): delete it or pass another path")
        self.table = dict(zip(data["phrases"], data["embeddings"]))

    def __len__(self) -> int:
        return len(self.table)

    def add(self, phrases, progress: bool = False) -> int:
        """Encode the phrases not cached yet; returns how many were added."""
        todo = sorted({p for p in phrases if p not in self.table})
        chunks = range(0, len(todo), self.batch_size)
        if progress and todo:
            from tqdm import tqdm
            chunks = tqdm(chunks, desc="phrase embeddings", unit="batch")
        for start in chunks:
            batch = todo[start:start + self.batch_size]
            with torch.no_grad():
                embeddings = self.text_encoder.encode_pooled(batch).float().cpu()
            self.table.update(zip(batch, embeddings))
        self.dirty |= bool(todo)
        return len(todo)

    def __call__(self, phrases: list[str]) -> torch.Tensor:
        """[n, D] for `phrases` (the `encode_phrases` argument of InteractDiffusion.condition)."""
        self.add(phrases)
        dim = self.text_encoder.hidden_size
        return torch.stack([self.table[p] for p in phrases]) if phrases else torch.zeros(0, dim)

    def save(self, path=None) -> Path:
        path = Path(path or self.path)
        phrases = sorted(self.table)
        embeddings = torch.stack([self.table[p] for p in phrases]) if phrases else torch.zeros(0)
        atomic_save({"fingerprint": self.fingerprint, "phrases": phrases, "embeddings": embeddings}, path)
        self.dirty = False
        return path


class CaptionContextCache:
    """caption -> the text encoder's [L, D] context, kept in memory for the run (up to
    `max_entries` distinct captions, the oldest dropped first). For small worlds whose captions
    repeat (the toy world: a few thousand distinct captions), encoding each once removes the
    text encoder from the training step; off (max_entries 0) for HICO-DET's free captions."""

    def __init__(self, text_encoder, max_entries: int):
        self.text_encoder, self.max_entries = text_encoder, max_entries
        self.table: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.table)

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor:
        """[B, L, D] for `captions`: text_encoder.encode's output (cached ones on the CPU, in fp32)."""
        if self.max_entries <= 0:
            return self.text_encoder.encode(captions)
        todo = sorted({c for c in captions if c not in self.table})
        if todo:
            self.table.update(zip(todo, self.text_encoder.encode(todo).float().cpu()))
        out = torch.stack([self.table[c] for c in captions])
        for stale in list(self.table)[: max(0, len(self.table) - self.max_entries)]:
            del self.table[stale]   # dicts keep insertion order: the oldest go first
        return out
