"""Frozen CLIP ViT-L/14 text encoder: SD v1.x prompt context and pooled phrase embeddings."""

from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.nn as nn

from .clip_tokenizer import (
    BOS_ID,
    CLIP_VOCAB_SIZE,
    EOS_ID,
    TOKENIZER_HELP,
    clip_token_ids,
    has_tokenizer_files,
    load_clip_tokenizer,
)

__all__ = [
    "FrozenCLIPEmbedder",
    "load_clip_tokenizer",
    "clip_text_config",
    "normalize_text_encoder_state_dict",
]

# Sub-modules of a CLIPTextModel; identify text-encoder keys that carry no prefix at all.
_TEXT_MODEL_CHILDREN = ("embeddings.", "encoder.", "final_layer_norm.")
_POSITION_IDS = "embeddings.position_ids"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_FP16_WEIGHT_FILES = ("model.fp16.safetensors", "pytorch_model.fp16.bin")


def clip_text_config(
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    intermediate_size: int = 3072,
    max_length: int = 77,
    vocab_size: int = CLIP_VOCAB_SIZE,
):
    """CLIPTextConfig with the ViT-L/14 text settings; sizes are parameters so tests can shrink it."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        projection_dim=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=max_length,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )


# --------------------------------------------------------------------------- state dicts


def _layout_of_keys(keys) -> tuple[str, bool]:
    """(inner prefix of CLIPTextModel parameters: "text_model." or "", position_ids persisted?)."""
    inner = None
    has_pos = False
    for k in keys:
        if k.endswith("embeddings.token_embedding.weight"):
            inner = "text_model." if k.endswith("text_model.embeddings.token_embedding.weight") else ""
        if k.endswith(_POSITION_IDS):
            has_pos = True
    if inner is None:
        raise ValueError("module has no embeddings.token_embedding.weight; it is not a CLIP text model")
    return inner, has_pos


@lru_cache(maxsize=1)
def _installed_layout() -> tuple[str, bool]:
    # transformers 4 nests parameters under text_model.; 5 does not. Ask the installed version
    # with a tiny model on the meta device (no memory, no init cost).
    from transformers import CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(clip_text_config(hidden_size=8, num_layers=1, num_heads=1, intermediate_size=8, vocab_size=8, max_length=4))
    return _layout_of_keys(model.state_dict().keys())


def _module_layout(module: nn.Module | None) -> tuple[str, bool]:
    if module is None:
        return _installed_layout()
    if isinstance(module, FrozenCLIPEmbedder):
        module = module.transformer
    return _layout_of_keys(module.state_dict().keys())


def _inner_key(key: str, prefix: str) -> str | None:
    """The CLIPTextModel key without any ``text_model.`` level, or None if ``key`` is not the text encoder's."""
    for outer in (prefix, "cond_stage_model." + prefix):
        if key.startswith(outer):
            rest = key[len(outer) :]
            break
    else:
        # Raw HF CLIPTextModel dicts (e.g. text_encoder/model.safetensors) carry no outer prefix.
        if key.startswith("text_model.") or key.startswith(_TEXT_MODEL_CHILDREN):
            rest = key
        else:
            return None
    if rest.startswith("text_model."):
        rest = rest[len("text_model.") :]
    return rest


def normalize_text_encoder_state_dict(sd: dict, prefix: str = "transformer.", module: nn.Module | None = None) -> dict:
    """Rename a CLIP text-encoder state dict to the key form the module's state_dict uses.

    Accepts ``{prefix}text_model.X`` (older transformers, released InteractDiffusion/GLIGEN files),
    ``{prefix}X`` (transformers 5, the manifest), ``cond_stage_model.{prefix}text_model.X``
    (SD v1.x originals) and unprefixed HF ``text_model.X`` / ``X``. Output keys are
    ``{prefix}`` + the layout of ``module`` (a FrozenCLIPEmbedder or CLIPTextModel; default: the
    installed transformers). ``embeddings.position_ids`` is dropped when the module does not
    persist it, and filled with 0..N-1 when it does and the dict lacks it. Keys that are not the
    text encoder's are kept unchanged so a strict load reports them.
    """
    inner_prefix, wants_pos = _module_layout(module)
    out: dict = {}
    for key, value in sd.items():
        inner = _inner_key(key, prefix)
        if inner is None:
            out[key] = value
            continue
        if inner == _POSITION_IDS and not wants_pos:
            continue
        new_key = prefix + inner_prefix + inner
        if new_key in out:
            raise ValueError(f"state dict holds the text-encoder tensor {new_key!r} under two names")
        out[new_key] = value
    pos_key = prefix + inner_prefix + _POSITION_IDS
    pos_emb_key = prefix + inner_prefix + "embeddings.position_embedding.weight"
    if wants_pos and pos_key not in out and pos_emb_key in out:
        n = out[pos_emb_key].shape[0]
        out[pos_key] = torch.arange(n).unsqueeze(0)
    return out


def _format_names(kind: str, names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    more = f", ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"{len(names)} {kind}: {shown}{more}"


# --------------------------------------------------------------------------- the module


class FrozenCLIPEmbedder(nn.Module):
    """CLIP ViT-L/14 text transformer (transformers CLIPTextModel), frozen.

    ``encode`` gives the SD v1.x cross-attention context [B, 77, H] (last_hidden_state);
    ``encode_pooled`` gives the EOS token's final-layer-normed state [N, H] (CLIP's
    ``pooler_output`` before the projection), used for interaction phrases.
    State-dict keys are ``transformer.<CLIPTextModel keys>``.
    """

    def __init__(
        self,
        tokenizer=None,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        max_length: int = 77,
        vocab_size: int = CLIP_VOCAB_SIZE,
        device: str | torch.device | None = None,
        init_seed: int | None = None,
    ):
        super().__init__()
        from transformers import CLIPTextModel

        config = clip_text_config(hidden_size, num_layers, num_heads, intermediate_size, max_length, vocab_size)
        # Built directly on the target device; "meta" gives a shape-only model for free.
        # device=None follows torch's default device, so `with torch.device("meta"):` works too.
        with torch.device(device if device is not None else torch.get_default_device()):
            transformer = CLIPTextModel(config)
        self._attach(transformer, tokenizer, max_length)
        # A frozen random encoder (the toy world's) is defined by its seed alone, so checkpoints
        # need not carry its weights (the 49408-row token table dominates a toy model's size).
        self.init_seed = init_seed
        if init_seed is not None and transformer.device.type != "meta":
            self._init_from_seed(init_seed)

    @torch.no_grad()
    def _init_from_seed(self, seed: int) -> None:
        """Our own initialisation (not transformers', which may change between versions):
        N(0, 0.02) weights and embeddings, zero biases, unit LayerNorm scales, drawn from a
        generator seeded by `seed` in parameter-name order."""
        generator = torch.Generator().manual_seed(seed)
        for name, p in sorted(self.transformer.named_parameters()):
            if "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)

    def _attach(self, transformer: nn.Module, tokenizer, max_length: int) -> None:
        if isinstance(tokenizer, (str, os.PathLike)) or tokenizer is None:
            tokenizer = load_clip_tokenizer(None if tokenizer is None else os.fspath(tokenizer), max_length=max_length)
        cfg = transformer.config
        if cfg.max_position_embeddings < max_length:
            raise ValueError(f"max_length {max_length} exceeds the model's {cfg.max_position_embeddings} positions")
        if cfg.vocab_size < len(tokenizer):
            raise ValueError(f"model vocab_size {cfg.vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.init_seed = None
        self.freeze()

    @classmethod
    def from_pretrained_folder(
        cls,
        path: str,
        tokenizer_path: str | None = None,
        max_length: int = 77,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "FrozenCLIPEmbedder":
        """Load a Hugging Face CLIPTextModel folder (config.json + weights), local files only.

        ``path`` is the text-encoder folder (SD v1.x diffusers ``text_encoder/``, or
        openai/clip-vit-large-patch14), or a diffusers repo root holding ``text_encoder/``.
        The tokenizer comes from ``tokenizer_path``, else ``path`` itself, else its sibling
        ``tokenizer/``, else open_clip's BPE vocabulary.
        """
        from transformers import CLIPTextModel

        folder = os.path.abspath(os.path.expanduser(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"text encoder folder {path!r} does not exist")
        if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(
            os.path.join(folder, "text_encoder", "config.json")
        ):
            folder = os.path.join(folder, "text_encoder")
        names = set(os.listdir(folder))
        if "config.json" not in names:
            raise FileNotFoundError(f"{folder} has no config.json; expected a Hugging Face CLIPTextModel folder")
        if names.intersection(_WEIGHT_FILES):
            variant = None
        elif names.intersection(_FP16_WEIGHT_FILES):
            variant = "fp16"
        else:
            raise FileNotFoundError(
                f"{folder} has config.json but no weights (looked for {', '.join(_WEIGHT_FILES + _FP16_WEIGHT_FILES)})"
            )
        kwargs = {"local_files_only": True}
        if variant is not None:
            kwargs["variant"] = variant
        transformer = CLIPTextModel.from_pretrained(folder, **kwargs).to(device=device, dtype=dtype)

        if tokenizer_path is not None:
            tokenizer = load_clip_tokenizer(tokenizer_path, max_length=max_length)
        else:
            sibling = os.path.join(os.path.dirname(folder), "tokenizer")
            candidates = [d for d in (folder, sibling) if has_tokenizer_files(d)]
            if candidates:
                tokenizer = load_clip_tokenizer(candidates[0], max_length=max_length)
            else:
                try:
                    tokenizer = load_clip_tokenizer(None, max_length=max_length)
                except FileNotFoundError as err:
                    raise FileNotFoundError(
                        f"no CLIP tokenizer for {folder}: neither it nor {sibling} holds vocab.json + merges.txt "
                        f"(or tokenizer.json), and open_clip's vocabulary is not installed; {TOKENIZER_HELP}"
                    ) from err

        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        obj._attach(transformer, tokenizer, max_length)
        return obj

    # -- frozen behaviour

    def freeze(self) -> "FrozenCLIPEmbedder":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "FrozenCLIPEmbedder":
        # Frozen backbone: a parent's .train() must not switch the encoder out of eval mode.
        return super().train(False)

    # -- encoding

    def _embeddings(self) -> nn.Module:
        # transformers 4 nests the text model one level deeper (CLIPTextModel.text_model).
        return getattr(self.transformer, "text_model", self.transformer).embeddings

    @property
    def device(self) -> torch.device:
        return self._embeddings().token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._embeddings().token_embedding.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.transformer.config.hidden_size

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids [B, max_length] on the module's device (BOS, text, EOS padding)."""
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not a single string")
        return clip_token_ids(self.tokenizer, texts, self.max_length).to(self.device)

    def _hidden(self, ids: torch.Tensor) -> torch.Tensor:
        # SD v1.x convention: no attention mask; causal attention keeps padding from reaching
        # the text and EOS positions.
        return self.transformer(input_ids=ids).last_hidden_state

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompt context [B, max_length, H] (last_hidden_state)."""
        ids = self.tokenize(prompts)
        return self._hidden(ids)

    @torch.no_grad()
    def encode_pooled(self, phrases: list[str]) -> torch.Tensor:
        """Pooled phrase embeddings [N, H]: the hidden state at each phrase's first EOS token."""
        if len(phrases) == 0:
            return torch.zeros(0, self.hidden_size, device=self.device, dtype=self.dtype)
        ids = self.tokenize(phrases)
        hidden = self._hidden(ids)
        # Located from the ids rather than config.eos_token_id, which old configs set to 2.
        eos_pos = (ids == self.tokenizer.eos_token_id).int().argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), eos_pos]

    def forward(self, prompts: list[str]) -> torch.Tensor:
        return self.encode(prompts)

    # -- weights

    def load_text_state_dict(self, sd: dict, strict: bool = True) -> None:
        """Load a text-encoder state dict in any known key form (see normalize_text_encoder_state_dict).

        Raises RuntimeError listing shape mismatches always, and missing/unexpected names when strict.
        """
        sd = normalize_text_encoder_state_dict(sd, prefix="transformer.", module=self.transformer)
        own = self.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        mismatched = [
            f"{k} (file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})"
            for k in sd
            if k in own and tuple(sd[k].shape) != tuple(own[k].shape)
        ]
        problems = []
        if mismatched:
            problems.append(_format_names("shape-mismatched", mismatched))
        if strict and missing:
            problems.append(_format_names("missing", missing))
        if strict and unexpected:
            problems.append(_format_names("unexpected", unexpected))
        if problems:
            raise RuntimeError("text encoder state dict does not fit FrozenCLIPEmbedder: " + "; ".join(problems))
        on_meta = any(t.is_meta for t in own.values())
        loadable = {k: v for k, v in sd.items() if k in own}
        # A meta-built model has no storage to copy into: take the tensors themselves.
        self.load_state_dict(loadable, strict=False, assign=on_meta)
        if on_meta:
            self.rebuild_position_ids()
        self.freeze()

    def rebuild_position_ids(self) -> None:
        # The non-persistent position_ids buffer is not in state dicts, so a meta model keeps a
        # meta one after an assign-load; recreate it beside the loaded weights.
        emb = self._embeddings()
        if emb.position_ids.is_meta:
            weight = emb.position_embedding.weight
            emb.position_ids = torch.arange(weight.shape[0], device=weight.device).unsqueeze(0)

