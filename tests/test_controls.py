"""Every registered control through one path: a record parsed, checked against a model, conditioned,
denoised (its input acts, its null input does not), drawn, written to a sidecar and, for a trained
control, saved and loaded back; and a new control added as docs/adding_a_control.md says (its
module, here this file; its config; one registry line), run through the same path."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import interact.model
from helpers import TINY_CONFIG, open_gates
from hoi.records import ConditionError, check_box, check_phrase
from interact.checkpoint import classify, load_weights, read_file, save_checkpoint
from interact.controls import CONTROLS, Control, ControlInput, Format, FuserInput, parse_record, register
from interact.controls.base import CONTROL_LABELS, CONTROL_TITLES
from interact.controls.tokens import fourier_embed, mlp
from interact.model import build_model, load_config
from interact.pipeline import draw_layout
from interact.sampling import fuser_scale

SIZE = (32, 32)


def tiny_config(cls):
    """configs/tiny_random.yaml with `cls`'s tokenizer when it is a trained control (a tokenizer
    takes in_dim, out_dim, hidden_dim and max_interactions, as the shipped ones do)."""
    config = load_config(TINY_CONFIG)
    if cls.trained:
        tokenizer = cls.tokenizer_class
        config.interaction.position_net.target = f"{tokenizer.__module__}.{tokenizer.__qualname__}"
    return config


def run_control_path(cls, tmp_path, clip_tokenizer) -> None:
    config = tiny_config(cls)
    torch.manual_seed(0)
    model = open_gates(build_model(config, tokenizer=clip_tokenizer).eval())   # a trained control visibly acts
    record = dict(cls.example)
    prompt = record["prompt"]
    layout = parse_record(record, "record 0", str(tmp_path))
    assert set(layout) == {cls.name}
    cls.precheck(layout[cls.name], "record 0", SIZE)
    checked = model.check_controls(layout, "record 0", prompt, SIZE)
    cond = model.condition([prompt], controls={k: [v] for k, v in checked.items()}, image_size=SIZE)
    assert cls.name in cond.controls
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, model.unet.in_channels, 16, 16, generator=g), torch.tensor([700])
    with torch.no_grad():
        out = model.denoise(x, t, cond)
        assert (out - model.denoise(x, t, cond.null())).abs().max() > 0    # the control acts; its null does not
        assert torch.equal(model.denoise(x, t, cond, {cls.name: 0.0}), model.denoise(x, t, cond.null(), 0.0)) or \
            not cls.trained                                                 # scale 0: the fusers are skipped
    image = Image.new("RGB", SIZE, (128, 128, 128))
    drawn = draw_layout(image, checked)
    assert np.abs(np.asarray(drawn, dtype=int) - np.asarray(image.resize(drawn.size), dtype=int)).max() > 0
    fields = cls.sidecar(record, layout[cls.name])
    assert fields and json.loads(json.dumps(fields)) == fields
    if cls.trained:
        path = tmp_path / "model.pth"
        save_checkpoint(path, model)
        assert classify(read_file(path)) in {f.name for f in cls.formats}
        loaded = build_model(config, tokenizer=clip_tokenizer, device="meta")
        load_weights(loaded, path, purpose="generate")
        with torch.no_grad():
            again = loaded.condition([prompt], controls={k: [v] for k, v in checked.items()}, image_size=SIZE)
            assert torch.equal(loaded.eval().denoise(x, t, again), out)


@pytest.mark.parametrize("name", list(CONTROLS))
def test_every_registered_control_runs_the_same_path(name, tmp_path, clip_tokenizer):
    run_control_path(CONTROLS[name], tmp_path, clip_tokenizer)


# ----------------------------------------------------------------------------- a new control

@dataclass(frozen=True)
class Point:
    phrase: str
    xy: tuple[float, float]


class PointPositionNet(nn.Module):
    """A point per phrase: token = MLP(phrase embedding, Fourier(the point as a box of no size))."""

    def __init__(self, in_dim=768, out_dim=768, max_interactions=30, hidden_dim=512, **_):
        super().__init__()
        self.in_dim, self.out_dim, self.max_interactions = in_dim, out_dim, max_interactions
        self.point_mlp = mlp(in_dim + 64, hidden_dim, out_dim)
        self.null_feature = nn.Parameter(torch.zeros(in_dim + 64))

    def forward(self, points, masks, embeddings):
        mask = masks[..., None]
        features = torch.cat([embeddings, fourier_embed(torch.cat([points, points], dim=-1))], dim=-1)
        return self.point_mlp(features * mask + (1 - mask) * self.null_feature)


@dataclass
class PointInput(ControlInput):
    points: torch.Tensor       # [B, N, 2]
    masks: torch.Tensor        # [B, N]
    embeddings: torch.Tensor   # [B, N, D]


class PointControl(Control):
    name = "points"
    title = "Points"
    record_keys = ("points",)
    record_label = "points"
    slot = "tokens"
    item_type = Point
    instances = True
    tokenizer_class = PointPositionNet
    formats = (Format("points", "point-control checkpoint",
                      lambda raw: isinstance(raw.get("model"), dict) and any(
                          k.startswith("position_net.point_mlp.") for k in raw["model"]), "points", True),)
    example: ClassVar[dict] = {"prompt": "a cup", "points": [{"phrase": "cup", "xy": [0.6, 0.5]}]}

    @classmethod
    def parse(cls, record, where, base_dir=None):
        if "points" not in record:
            return None
        out = []
        for j, item in enumerate(record["points"]):
            phrase = check_phrase(item.get("phrase"), f"{where}, point {j}.phrase")
            x, y, _, _ = check_box([*item["xy"], 1.0, 1.0], f"{where}, point {j}.xy")
            out.append(Point(phrase, (x, y)))
        return out

    @classmethod
    def sidecar(cls, record, items):
        return {"points": [{"phrase": p.phrase, "xy": list(p.xy)} for p in items]}

    @classmethod
    def draw(cls, draw, items, size, image_size):
        for p in items:
            x, y = p.xy[0] * size[0], p.xy[1] * size[1]
            draw.line([x - 4, y, x + 4, y], fill=(255, 0, 255), width=2)

    def check(self, items, where, prompt="", text=None, image_size=None):
        if len(items) > self.module.max_interactions:
            raise ConditionError(f"{where}: {len(items)} points, at most {self.module.max_interactions}")
        return items

    def build(self, captions, batch, text, context, image_size, options):
        n, phrases = self.module.max_interactions, sorted({p.phrase for items in batch for p in items})
        table = dict(zip(phrases, text.encode_pooled(phrases).float())) if phrases else {}
        points, masks = torch.zeros(len(batch), n, 2), torch.zeros(len(batch), n)
        embeddings = torch.zeros(len(batch), n, text.dim)
        for b, items in enumerate(batch):
            for j, p in enumerate(items):
                points[b, j], masks[b, j], embeddings[b, j] = torch.tensor(p.xy), 1, table[p.phrase]
        return context, PointInput(points, masks, embeddings)

    def entries(self, input, timesteps, scale):
        return {self.name: FuserInput(self.module(**input.as_kwargs()), scale)} if scale else {}

    def step_scale(self, step_index, steps, options):
        return fuser_scale(step_index, steps, options.scheduled_sampling, options.scheduled_decay)

    def branches(self, items):
        return [(p.phrase, [p]) for p in items]


@pytest.fixture
def point_control(monkeypatch):
    """PointControl registered for one test (the registry line a new control adds), and this test
    module allowed as a config target (a real control lives in interact/controls/)."""
    monkeypatch.setattr(interact.model, "TARGET_PACKAGES", (*interact.model.TARGET_PACKAGES, __name__ + "."))
    register(PointControl)
    yield PointControl
    for table in (CONTROLS, CONTROL_LABELS, CONTROL_TITLES):
        table.pop(PointControl.name)


def test_a_new_control_is_its_module_and_one_registry_line(point_control, tmp_path, clip_tokenizer):
    run_control_path(point_control, tmp_path, clip_tokenizer)
    # its items reach it from Python as from a batch file, and another model refuses them in one line
    with pytest.raises(ConditionError, match=r"record 0: points are Points's input; this InteractDiffusion model "
                                             r"takes interactions"):
        build_model(load_config(TINY_CONFIG), device="meta").check_controls(
            {"points": [Point("cup", (0.5, 0.5))]}, "record 0")
