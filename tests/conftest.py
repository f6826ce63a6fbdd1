"""Shared test fixtures: the reference checkpoint-key manifest and one tiny model per session.
Plain helpers (paths, tiny sizes, references, a tiny training setup) are in helpers.py: test
files import from there, never from one another."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
# Tests use tiny tensors: one thread is as fast as two, and does not collapse when the
# machine is busy (torch's worker threads spin-wait on an oversubscribed CPU).
# Set before torch is imported so subprocesses (the CLI test) inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from helpers import MANIFEST, TINY_CONFIG


@pytest.fixture(scope="session")
def manifest() -> dict:
    """{section: {tensor name: shape tuple}} of the released SD v1.x InteractDiffusion checkpoint."""
    out: dict = {}
    for line in MANIFEST.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        section, name, shape = line.split("\t")
        out.setdefault(section, {})[name] = tuple(json.loads(shape))
    return out


@pytest.fixture(scope="session")
def clip_tokenizer():
    from ldm.modules.encoders import clip_tokenizer as ct

    if ct.open_clip_vocab_path() is None:
        pytest.skip("open_clip_torch (BPE vocabulary) not installed")
    return ct.load_clip_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(clip_tokenizer):
    """configs/tiny_random.yaml with seed-0 weights, built once. Treat as read-only:
    copy it (copy.deepcopy) before changing anything."""
    from interact.model import build_model

    torch.manual_seed(0)
    return build_model(TINY_CONFIG, tokenizer=clip_tokenizer).eval()
