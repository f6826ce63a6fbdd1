"""The toy world's feature extractor: a small CNN trained on the toy HOI data (see
scripts/train_toy_features.py) whose 256-d global-average-pooled activations replace Inception
features for FID/KID on the small toy images (32x32, resized to 64 by the net) (Inception features mean little at that size).

    extractor = load_toy_extractor()            # assets/toy_features.pt
    feats = extractor(images)                   # float [B, 3, H, W] in [0, 1] -> [B, 256]

The network: four stages of 3x3 conv + batch norm + ReLU with 32, 64, 128, 256 channels (the first
conv with stride 2, a 2x2 max pool after each of the first three stages: 64 -> 32 -> 16 -> 8 -> 4
pixels), global average pooling to the 256-d feature, and two
linear heads for the multi-label presence of the object categories and the HOI categories. Input: resized to 64x64 (bilinear, antialiased when shrinking) and scaled to [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dataset.toy.categories import HOI_CATEGORIES, OBJECTS
from evaluation.weights import WeightsError, load_strictly, read_torch_file

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = REPO_ROOT / "assets" / "toy_features.pt"
INPUT_SIZE = 64
CHANNELS = (32, 64, 128, 256)
NUM_OBJECTS = len(OBJECTS)
NUM_HOIS = len(HOI_CATEGORIES)


class ToyFeatureNet(nn.Module):
    """The CNN. `forward(images in [0, 1]) -> [B, 256]` features (the Extractor protocol);
    `heads(features) -> (object logits [B, NUM_OBJECTS], HOI logits [B, NUM_HOIS])`."""

    def __init__(self, channels=CHANNELS, num_objects: int = NUM_OBJECTS, num_hois: int = NUM_HOIS,
                 input_size: int = INPUT_SIZE):
        super().__init__()
        self.input_size = input_size
        self.feature_dim = channels[-1]
        layers, cin = [], 3
        for i, c in enumerate(channels):
            stride = 2 if i == 0 else 1
            layers += [nn.Conv2d(cin, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = c
        self.body = nn.Sequential(*layers)
        self.object_head = nn.Linear(cin, num_objects)
        self.hoi_head = nn.Linear(cin, num_hois)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            shrink = images.shape[-1] > self.input_size or images.shape[-2] > self.input_size
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=shrink)
        return images * 2 - 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.preprocess(images)).mean(dim=(2, 3))

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.object_head(features), self.hoi_head(features)


def load_toy_extractor(weights: str | Path | None = None, device: str | torch.device = "cpu") -> ToyFeatureNet:
    """The trained toy feature network (default: assets/toy_features.pt), float32, eval mode."""
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"toy feature weights not found: {path}; train them with "
                                "`python scripts/train_toy_features.py` (writes assets/toy_features.pt) "
                                "or pass --weights")
    what = "a toy feature checkpoint"
    ckpt = read_torch_file(path, what)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise WeightsError(f"{path} is not {what}: no 'state_dict' in it")
    cfg = ckpt.get("config", {})
    model = ToyFeatureNet(tuple(cfg.get("channels", CHANNELS)), cfg.get("num_objects", NUM_OBJECTS),
                          cfg.get("num_hois", NUM_HOIS), cfg.get("input_size", INPUT_SIZE))
    state = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    load_strictly(model, state, path, what)
    model.meta = ckpt.get("meta", {})
    return model.eval().requires_grad_(False).to(device)
