"""Offline CLIP BPE tokenizer for the SD v1.x text encoder.

Two sources, no network in either:
  * a Hugging Face CLIP tokenizer folder (vocab.json + merges.txt, or tokenizer.json),
    e.g. the ``tokenizer/`` folder of an SD v1.x diffusers repo;
  * the BPE file ``bpe_simple_vocab_16e6.txt.gz`` that ships inside ``open_clip_torch``.
    We only locate the package's folder; importing open_clip would pull torchvision.
"""

from __future__ import annotations

import gzip
import importlib.util
import inspect
import json
import os
import tempfile
from functools import lru_cache

import torch

CLIP_VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407
OPEN_CLIP_VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
# The released CLIP vocabulary uses the first 49152 - 256 - 2 merges of the file
# (256 byte symbols and 2 special tokens fill the rest of the 49408 ids).
NUM_MERGES = 49152 - 256 - 2

TOKENIZER_HELP = (
    "pass --text_encoder DIR (or tokenizer_path=DIR) pointing at a CLIP tokenizer folder "
    "holding vocab.json + merges.txt (e.g. the tokenizer/ folder of a Stable Diffusion v1.x "
    "diffusers repo, or openai/clip-vit-large-patch14), or install the bundled BPE vocabulary "
    "with `pip install --no-deps open_clip_torch`"
)


def open_clip_vocab_path() -> str | None:
    """Path of open_clip's BPE vocabulary file, or None when open_clip_torch is not installed."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, OPEN_CLIP_VOCAB_NAME)
        if os.path.isfile(candidate):
            return candidate
    return None


def bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for bytes 0..255, in id order.

    Printable Latin-1 bytes map to themselves; the remaining bytes are shifted to 256+ so
    that no symbol is whitespace or a control character.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    shift = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + shift)
            shift += 1
    return [chr(c) for c in code_points]


@lru_cache(maxsize=4)
def _read_open_clip_bpe(path: str) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Vocabulary and merges as CLIP builds them from the gzipped BPE file (cached per path)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merge_lines = lines[1 : NUM_MERGES + 1]  # line 0 is a version header
    if len(merge_lines) != NUM_MERGES:
        raise ValueError(f"{path} holds {len(merge_lines)} merges, expected {NUM_MERGES}")
    merges = tuple(tuple(line.split()) for line in merge_lines)
    symbols = bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{path} gives {len(vocab)} distinct tokens, expected {CLIP_VOCAB_SIZE}")
    return vocab, merges


def _tokenizer_class():
    from transformers import CLIPTokenizer

    return CLIPTokenizer


def _build_from_open_clip(path: str):
    CLIPTokenizer = _tokenizer_class()
    vocab, merges = _read_open_clip_bpe(path)
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:
        # transformers >= 5: the tokenizers-backed class takes the tables directly.
        return CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m) for m in merges])
    # transformers 4: the class reads files only; write them to a throwaway folder.
    with tempfile.TemporaryDirectory() as tmp:
        _write_vocab_files(tmp, vocab, merges)
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


def _write_vocab_files(folder: str, vocab: dict[str, int], merges) -> None:
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(" ".join(m) + "\n" for m in merges)


def has_tokenizer_files(folder: str) -> bool:
    """True when ``folder`` holds a loadable HF CLIP tokenizer."""
    if not os.path.isdir(folder):
        return False
    names = set(os.listdir(folder))
    return "tokenizer.json" in names or {"vocab.json", "merges.txt"} <= names


def _load_from_folder(path: str):
    folder = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"CLIP tokenizer folder {path!r} does not exist; {TOKENIZER_HELP}")
    if not has_tokenizer_files(folder):
        # from_pretrained on such a folder silently builds a 3-token vocabulary instead of failing.
        raise FileNotFoundError(
            f"{folder} holds no CLIP tokenizer (expected vocab.json + merges.txt, or tokenizer.json); "
            f"{TOKENIZER_HELP}"
        )
    return _tokenizer_class().from_pretrained(folder, local_files_only=True)


def load_clip_tokenizer(path: str | None = None, max_length: int = 77):
    """The CLIP ViT-L/14 tokenizer (49408 ids), padded with EOS to ``max_length``.

    ``path``: a Hugging Face CLIP tokenizer folder; None builds it from open_clip's BPE file.
    Raises FileNotFoundError (saying what to pass) when neither source exists, and
    ValueError when the result is not the 49408-entry CLIP vocabulary.
    """
    if path is not None:
        tokenizer = _load_from_folder(path)
        source = os.path.abspath(path)
    else:
        vocab_file = open_clip_vocab_path()
        if vocab_file is None:
            raise FileNotFoundError(
                f"No CLIP tokenizer available (open_clip's {OPEN_CLIP_VOCAB_NAME} not found): {TOKENIZER_HELP}"
            )
        tokenizer = _build_from_open_clip(vocab_file)
        source = vocab_file
    if len(tokenizer) != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"CLIP tokenizer from {source} has {len(tokenizer)} entries, expected {CLIP_VOCAB_SIZE}; "
            f"this is not the SD v1.x / ViT-L/14 vocabulary. {TOKENIZER_HELP[0].upper()}{TOKENIZER_HELP[1:]}"
        )
    if tokenizer.convert_tokens_to_ids(EOS_TOKEN) != EOS_ID or tokenizer.convert_tokens_to_ids(BOS_TOKEN) != BOS_ID:
        raise ValueError(f"CLIP tokenizer from {source} does not map {BOS_TOKEN}/{EOS_TOKEN} to {BOS_ID}/{EOS_ID}")
    # SD v1.x was trained with prompts padded by EOS (pad == eos), whatever a folder says.
    if tokenizer.pad_token != EOS_TOKEN:
        tokenizer.pad_token = EOS_TOKEN
    tokenizer.model_max_length = max_length
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"
    return tokenizer


@lru_cache(maxsize=1)
def _fix_text():
    # The slow transformers CLIPTokenizer SD v1 was trained with ran ftfy.fix_text when available.
    try:
        import ftfy
    except ImportError:
        return None
    return ftfy.fix_text


def clip_token_ids(tokenizer, texts: list[str], max_length: int = 77) -> torch.Tensor:
    """Token ids [len(texts), max_length]: BOS, text, EOS, EOS padding; truncated so EOS stays last."""
    fix = _fix_text()
    if fix is not None:
        texts = [fix(t) for t in texts]
    batch = tokenizer(
        list(texts),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_tensors="pt",
    )
    return batch["input_ids"]
