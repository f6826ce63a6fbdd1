"""Plain helpers that several test files share: paths, the tiny sizes of the fuser and tokenizer
tests with their loop-written references, and a tiny training setup. Test files import from
here (never from one another); the pytest fixtures that build on these live in conftest.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from hoi.records import HOISample, Interaction, between
from interact.trainer import check_train_options

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "tiny_random.yaml"
SD_CONFIG = REPO_ROOT / "configs" / "sd_v1_interact.yaml"
# every tensor name and shape of the released SD v1.x InteractDiffusion file (docs/reference.md §3)
MANIFEST = REPO_ROOT / "tests" / "data" / "interactdiffusion_v1_checkpoint_keys.tsv"


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.5, add: bool = False) -> None:
    """Every parameter (nulls, LayerNorm affine, gates included) to random values of `std`, or
    with `add` moved by them (off its initial value)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype) * std
            p.add_(noise) if add else p.copy_(noise)


def open_gates(model, attn: float = 1.0, dense: float | None = None):
    """Every fuser's gates set to `attn` (and `dense`, default the same): a fresh fuser's are 0, so
    it adds nothing. `model`: an InteractDiffusion or a UNet. Returns it."""
    unet = getattr(model, "unet", model)
    with torch.no_grad():
        for _, block in unet.transformer_blocks():
            block.fuser.alpha_attn.fill_(attn)
            block.fuser.alpha_dense.fill_(attn if dense is None else dense)
    return model


# --------------------------------------------------------------------------- tokenizer (HOIPositionNet)

IN, OUT, HID, NMAX = 8, 16, 32, 5


def fourier_reference(box: list[float]) -> list[float]:
    out = []
    for k in range(8):
        f = 100.0 ** (k / 8)
        for c in box:
            out.append(math.sin(f * c))
        for c in box:
            out.append(math.cos(f * c))
    return out


def random_grounding_inputs(b, n, seed, garbage_padding=True):
    g = torch.Generator().manual_seed(seed)

    def boxes():
        lo = torch.rand(b, n, 2, generator=g, dtype=torch.float64) * 0.5
        return torch.cat([lo, lo + 0.1 + 0.4 * torch.rand(b, n, 2, generator=g, dtype=torch.float64)], -1)

    sb, ob = boxes(), boxes()
    ab = between(sb, ob)
    se, oe, ae = (torch.randn(b, n, IN, generator=g, dtype=torch.float64) for _ in range(3))
    masks = torch.zeros(b, n, dtype=torch.float64)
    masks[0, [0, 1, 3]] = 1  # non-contiguous on purpose
    masks[1, 0] = 1
    if garbage_padding:
        pad = masks == 0
        for t in (sb, ob, ab):
            t[pad] = 7.5 + torch.rand(int(pad.sum()), 4, generator=g, dtype=torch.float64)
        for t in (se, oe, ae):
            t[pad] = 100.0 * torch.randn(int(pad.sum()), IN, generator=g, dtype=torch.float64)
    return sb, ab, ob, masks, se, ae, oe


# --------------------------------------------------------------------------- fuser

C, CTX, HEADS, DHEAD, NV = 32, 12, 8, 4, 10


def layer_norm_reference(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def attention_reference(q, k, v, heads, mask=None):
    """Explicit per-head softmax(q k^T / sqrt(d)) v; with `mask` [B, Nq, Nk] over the allowed keys only."""
    d = q.shape[-1] // heads
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            sim = q[b, :, sl] @ k[b, :, sl].T * d ** -0.5
            if mask is not None:
                sim = sim.masked_fill(~mask[b], float("-inf"))
            e = torch.exp(sim - sim.max(dim=-1, keepdim=True).values)
            out[b, :, sl] = (e / e.sum(-1, keepdim=True)) @ v[b, :, sl]
    return out


def dense_reference(f, x, scale):
    """The fuser's gated GEGLU feed-forward branch, written out."""
    h = layer_norm_reference(x, f.norm2)
    proj = f.ff.net[0].proj
    hh = h @ proj.weight.T + proj.bias
    a, gate = hh[..., : hh.shape[-1] // 2], hh[..., hh.shape[-1] // 2:]
    gelu = 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2.0)))
    dense = (a * gelu) @ f.ff.net[2].weight.T + f.ff.net[2].bias
    return x + scale * math.tanh(f.alpha_dense.item()) * dense


def random_fuser(cls, seed: int, **options):
    """A fuser of class `cls` at the tiny sizes, every parameter random (gates included), float64."""
    torch.manual_seed(seed)
    f = cls(C, CTX, HEADS, DHEAD, **options)
    randomize_(f, seed + 100, std=0.4)
    return f.double().eval()


def fuser_inputs(dtype=torch.float64, n_tokens=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, NV, C, generator=g, dtype=dtype),
            torch.randn(2, n_tokens, CTX, generator=g, dtype=dtype))


# --------------------------------------------------------------------------- training

SHAPES = [("person", "hold", "ball"), ("robot", "kick", "box"), ("dog", "look at", "cup"), ("person", "ride", "box")]


class Squares:
    """n images of coloured rectangles at their interaction boxes; the flip depends on (index, epoch)
    like the real dataset's, so the data stream is exercised."""

    def __init__(self, n: int = 8, size: int = 16):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def get(self, index: int, epoch: int) -> HOISample:
        g = torch.Generator().manual_seed(index)
        s = self.size
        image = torch.full((3, s, s), -1.0)
        subject, action, obj = SHAPES[index % len(SHAPES)]
        x0 = int(torch.randint(0, s // 2, (), generator=g))
        sub_box = (x0 / s, 0.25, (x0 + s // 4) / s, 1.0)
        obj_box = ((x0 + s // 4) / s, 0.5, (x0 + s // 2) / s, 0.75)
        for box, colour in ((sub_box, (1.0, -0.5, -0.5)), (obj_box, (-0.5, -0.5, 1.0))):
            xa, ya, xb, yb = (round(v * s) for v in box)
            image[:, ya:yb, xa:xb] = torch.tensor(colour)[:, None, None]
        if (index + epoch) % 2:
            image = image.flip(-1)
            sub_box = (1 - sub_box[2], sub_box[1], 1 - sub_box[0], sub_box[3])
            obj_box = (1 - obj_box[2], obj_box[1], 1 - obj_box[0], obj_box[3])
        return HOISample(f"img{index}", image, f"a {subject} {action} a {obj}",
                         [Interaction(subject, action, obj, sub_box, obj_box)])


def tiny_train_config(tmp_path, **train) -> DictConfig:
    """configs/tiny_random.yaml with the toy world's parameter-free first stage (16x16 images ->
    8x8x12), so a step takes milliseconds."""
    config = OmegaConf.load(TINY_CONFIG)
    config.autoencoder = {"target": "ldm.models.autoencoder.SpaceToDepthFirstStage", "params": {"factor": 2}}
    config.model.params.in_channels = config.model.params.out_channels = 12
    config.model.params.image_size = 8
    config.scale_factor = 1.0
    options = dict(seed=3, batch_size=4, total_iters=6, lr=1e-3, warmup_steps=2, checkpoint_every=2,
                   save_every_iters=100, disable_inference_in_training=True, workers=0, log_every=1,
                   phrase_cache=str(tmp_path / "phrases.pt"))
    options.update(train)
    config.train = check_train_options(options)
    return config


def sd_original_file(model, path):
    """`model`'s backbone written as an SD v1.x original checkpoint (`state_dict` with the
    `model.diffusion_model.`, `first_stage_model.` and `cond_stage_model.` prefixes)."""
    from interact.checkpoint import export_sections
    from interact.model import is_interaction_key
    sections = export_sections(model)
    state = {"model.diffusion_model." + k: v for k, v in sections["model"].items() if not is_interaction_key(k)}
    state.update({"first_stage_model." + k: v for k, v in sections.get("autoencoder", {}).items()})
    state.update({"cond_stage_model." + k: v for k, v in sections.get("text_encoder", {}).items()})
    state.update(sections.get("diffusion", {}))
    torch.save({"state_dict": state}, path)
    return path


def layout_record(prompt="a person holding a cup", n=1, **overrides) -> dict:
    """A batch-file record with `n` copies of one interaction (a person holding a cup)."""
    rec = {"prompt": prompt, "subject_phrases": ["person"] * n, "action_phrases": ["holding"] * n,
           "object_phrases": ["cup"] * n, "subject_boxes": [[0.1, 0.1, 0.5, 0.9]] * n,
           "object_boxes": [[0.4, 0.4, 0.6, 0.6]] * n}
    rec.update(overrides)
    return rec


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


def with_tokens(tokens, scale: float = 1.0, regions=None, key: str = "interaction") -> dict:
    """The UNet's controls mapping with fuser tokens for the interaction control (what
    InteractDiffusion.denoise gives it)."""
    from interact.controls import FuserInput
    return {key: FuserInput(tokens, scale, regions)}
