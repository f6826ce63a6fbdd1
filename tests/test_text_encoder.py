"""CLIP tokenizer and frozen text encoder: ids, shapes, pooling, checkpoint key forms."""

import json
import sys

import pytest
import torch

from ldm.modules.encoders import clip_tokenizer
from ldm.modules.encoders.clip_tokenizer import clip_token_ids
from ldm.modules.encoders.modules import (
    FrozenCLIPEmbedder,
    load_clip_tokenizer,
    normalize_text_encoder_state_dict,
)

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)


@pytest.fixture(scope="module")
def tok(clip_tokenizer):
    """conftest's session tokenizer (skips without the BPE vocabulary), under a name that does not
    shadow the clip_tokenizer module imported here."""
    return clip_tokenizer


@pytest.fixture(scope="module")
def tiny(tok):
    torch.manual_seed(0)
    return FrozenCLIPEmbedder(tokenizer=tok, **TINY)


# ------------------------------------------------------------------ tokenizer


def test_open_clip_vocab_tokenizer_known_ids(tok):
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == CAT_IDS
    assert tok.pad_token_id == 49407 and tok.eos_token_id == 49407 and tok.bos_token_id == 49406
    assert "open_clip" not in sys.modules  # only its data file is used; importing it pulls torchvision


def test_padding_and_truncation(tok):
    ids = clip_token_ids(tok, ["a photo of a cat", "cat " * 200], max_length=77)
    assert ids.shape == (2, 77)
    assert ids[0, :7].tolist() == CAT_IDS
    assert (ids[0, 7:] == 49407).all()
    assert ids[1, 0] == 49406 and ids[1, -1] == 49407
    assert (ids[1, 1:-1] == 2368).all()  # truncated text, not the end token, fills the middle


def test_saved_tokenizer_folder_roundtrip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = load_clip_tokenizer(str(tmp_path))
    assert len(again) == 49408
    texts = ["a photo of a cat", "a person riding a horse, 4k!", "Ünïcode café"]
    assert clip_token_ids(again, texts).tolist() == clip_token_ids(tok, texts).tolist()


def test_vocab_json_merges_folder(tok, tmp_path):
    # The layout of SD v1.x's tokenizer/ folder: vocab.json + merges.txt only.
    vocab, merges = clip_tokenizer._read_open_clip_bpe(clip_tokenizer.open_clip_vocab_path())
    clip_tokenizer._write_vocab_files(str(tmp_path), vocab, merges)
    again = load_clip_tokenizer(str(tmp_path))
    assert again("a photo of a cat").input_ids == CAT_IDS
    assert again.model_max_length == 77


def test_empty_folder_raises_helpful_error(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_clip_tokenizer(str(tmp_path))
    msg = str(err.value)
    assert "vocab.json" in msg and "--text_encoder" in msg and "open_clip_torch" in msg


def test_wrong_vocabulary_size_rejected(tmp_path):
    # What a hub id or a non-CLIP folder yields offline: a tiny vocabulary that must not pass.
    (tmp_path / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="49408"):
        load_clip_tokenizer(str(tmp_path))


def test_no_source_raises_helpful_error(monkeypatch):
    monkeypatch.setattr(clip_tokenizer, "open_clip_vocab_path", lambda: None)
    with pytest.raises(FileNotFoundError) as err:
        load_clip_tokenizer()
    msg = str(err.value)
    assert "--text_encoder DIR" in msg and "tokenizer_path=" in msg and "pip install --no-deps open_clip_torch" in msg


# ------------------------------------------------------------------ encoder


def test_encode_shape_and_frozen(tiny):
    out = tiny.encode(["a photo of a cat", "two people shaking hands"])
    assert out.shape == (2, 77, 32) and out.dtype == torch.float32
    assert not out.requires_grad
    assert all(not p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not tiny.training and not tiny.transformer.training


def test_pooled_is_eos_hidden_state(tiny, tok):
    phrases = ["person", "riding a bicycle down the street", "cat"]
    pooled = tiny.encode_pooled(phrases)
    assert pooled.shape == (3, 32)

    ids = tok(phrases, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = tiny.transformer(input_ids=ids).last_hidden_state  # after final_layer_norm
    for i, row in enumerate(ids.tolist()):
        eos = row.index(49407)
        torch.testing.assert_close(pooled[i], hidden[i, eos])
    # Same as CLIP's own pooler_output (no projection).
    with torch.no_grad():
        pooler = tiny.transformer(input_ids=ids).pooler_output
    torch.testing.assert_close(pooled, pooler)


def test_pooled_independent_of_batch(tiny):
    alone = tiny.encode_pooled(["person"])[0]
    long_phrase = "a very long description of a person " * 12
    batched = tiny.encode_pooled([long_phrase, "person", "dog"])[1]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)
    ctx_alone = tiny.encode(["person"])[0]
    ctx_batched = tiny.encode([long_phrase, "person"])[1]
    torch.testing.assert_close(ctx_alone, ctx_batched, atol=1e-5, rtol=1e-5)


def test_pooled_empty(tiny):
    assert tiny.encode_pooled([]).shape == (0, 32)


def test_full_size_matches_manifest(tok, manifest):
    expected = manifest["text_encoder"]
    assert len(expected) == 196
    with torch.device("meta"):
        model = FrozenCLIPEmbedder(tokenizer=tok)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected


# ------------------------------------------------------------------ state dict forms


def _old_form(sd, outer="transformer.text_model."):
    return {outer + k[len("transformer.") :]: v.clone() for k, v in sd.items()}


def test_old_key_form_loads_strictly(tiny, tok):
    sd = _old_form(tiny.state_dict())
    sd["transformer.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    torch.manual_seed(1)
    other = FrozenCLIPEmbedder(tokenizer=tok, **TINY)
    other.load_text_state_dict(sd)
    assert all(not p.requires_grad for p in other.parameters())
    torch.testing.assert_close(other.encode_pooled(["cat"]), tiny.encode_pooled(["cat"]))


def test_sd_original_and_manifest_forms_normalize(tiny):
    own = tiny.state_dict()
    sd_v1 = _old_form(own, outer="cond_stage_model.transformer.text_model.")
    assert set(normalize_text_encoder_state_dict(sd_v1, module=tiny)) == set(own)
    assert set(normalize_text_encoder_state_dict(dict(own), module=tiny)) == set(own)
    # Without a module the installed transformers' layout is used; the module's is the same.
    assert set(normalize_text_encoder_state_dict(sd_v1)) == set(own)


def test_missing_key_is_named(tiny, tok):
    sd = _old_form(tiny.state_dict())
    del sd["transformer.text_model.final_layer_norm.weight"]
    other = FrozenCLIPEmbedder(tokenizer=tok, **TINY)
    with pytest.raises(RuntimeError, match=r"1 missing: transformer\.final_layer_norm\.weight"):
        other.load_text_state_dict(sd)


def test_unexpected_and_shape_mismatch_reported(tiny, tok):
    sd = dict(tiny.state_dict())
    sd["transformer.extra.weight"] = torch.zeros(1)
    sd["transformer.final_layer_norm.bias"] = torch.zeros(5)
    with pytest.raises(RuntimeError) as err:
        tiny.load_text_state_dict(sd)
    msg = str(err.value)
    assert "unexpected: transformer.extra.weight" in msg
    assert "shape-mismatched: transformer.final_layer_norm.bias" in msg


def test_meta_model_loads_by_assignment(tiny, tok):
    with torch.device("meta"):
        lazy = FrozenCLIPEmbedder(tokenizer=tok, **TINY)
    lazy.load_text_state_dict(_old_form(tiny.state_dict()))
    assert lazy.device.type == "cpu"
    torch.testing.assert_close(lazy.encode(["a cat"]), tiny.encode(["a cat"]))


def test_from_pretrained_folder(tiny, tok, tmp_path):
    # diffusers layout: text_encoder/ (config.json + weights) beside tokenizer/
    tiny.transformer.save_pretrained(tmp_path / "text_encoder")
    tok.save_pretrained(tmp_path / "tokenizer")
    loaded = FrozenCLIPEmbedder.from_pretrained_folder(str(tmp_path / "text_encoder"))
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.training
    torch.testing.assert_close(loaded.encode_pooled(["cat", "person"]), tiny.encode_pooled(["cat", "person"]))
    # The repo root works too.
    root = FrozenCLIPEmbedder.from_pretrained_folder(str(tmp_path))
    assert root.encode(["cat"]).shape == (1, 77, 32)


def test_from_pretrained_folder_missing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weights"):
        FrozenCLIPEmbedder.from_pretrained_folder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrozenCLIPEmbedder.from_pretrained_folder(str(tmp_path / "nope"))


def test_seeded_encoder_is_a_function_of_its_seed(tok):
    """init_seed: the weights come from the seed alone (not from the global RNG), with our
    closed-form rule: unit LayerNorm scales, zero biases, N(0, 0.02) elsewhere."""
    torch.manual_seed(1)
    a = FrozenCLIPEmbedder(tokenizer=tok, init_seed=5, **TINY)
    torch.manual_seed(2)
    b = FrozenCLIPEmbedder(tokenizer=tok, init_seed=5, **TINY)
    c = FrozenCLIPEmbedder(tokenizer=tok, init_seed=6, **TINY)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    table = "transformer.embeddings.token_embedding.weight"
    assert not torch.equal(sa[table], sc[table])
    assert 0.018 < float(sa[table].std()) < 0.022 and abs(float(sa[table].mean())) < 1e-3
    for name, value in sa.items():
        if "norm" in name and name.endswith("weight"):
            assert torch.equal(value, torch.ones_like(value)), name
        elif name.endswith("bias"):
            assert torch.equal(value, torch.zeros_like(value)), name
    assert a.init_seed == 5 and FrozenCLIPEmbedder(tokenizer=tok, **TINY).init_seed is None
