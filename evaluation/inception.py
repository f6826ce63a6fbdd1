"""The FID Inception-v3 in plain torch (no torchvision): the TensorFlow-ported network that
pytorch-fid and the original TTUR FID code use, returning the 2048-d pool3 features.

Its state-dict names and shapes are those of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
(top-level `Conv2d_1a_3x3 ... Mixed_7c`, `fc` with 1008 outputs, each conv unit holding
`conv` (no bias) and `bn` (eps 1e-3)), so that file loads with strict checking:

    model = load_fid_inception("pt_inception-2015-12-05-6726825d.pth")
    feats = model(images)       # images: float [B, 3, H, W] in [0, 1] -> [B, 2048]

It differs from the ImageNet Inception-v3 the way the FID network does: every average pool
inside the mixed blocks ignores the zero padding (TensorFlow's behaviour,
`count_include_pad=False`), and the pool branch of the last block (Mixed_7c) is a max pool.
Input protocol as pytorch-fid: bilinear resize to 299x299 (`F.interpolate`,
`align_corners=False`, no antialiasing), then scaling from [0, 1] to [-1, 1].
Nothing is downloaded: the weights are a path the user gives.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.weights import load_state_dict_file, load_strictly

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008   # the TF graph's classifier (1000 ImageNet classes + 8 unused)


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: the unit every block is made of."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def pool3x3(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The 3x3, stride 1, padding 1 pool of a block's pool branch. "avg" excludes the padded
    zeros from the mean, as TensorFlow does (the FID network's behaviour)."""
    if kind == "avg":
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    if kind == "max":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    raise ValueError(f"unknown pool kind {kind!r}")


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(pool3x3(x, "avg"))
        return torch.cat([a, b, c, d], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | max pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c = channels_7x7
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))   # (kernel, padding)
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c, 1)
        self.branch7x7_2 = ConvBN(c, c, row[0], padding=row[1])
        self.branch7x7_3 = ConvBN(c, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = ConvBN(cin, c, 1)
        self.branch7x7dbl_2 = ConvBN(c, c, col[0], padding=col[1])
        self.branch7x7dbl_3 = ConvBN(c, c, row[0], padding=row[1])
        self.branch7x7dbl_4 = ConvBN(c, c, col[0], padding=col[1])
        self.branch7x7dbl_5 = ConvBN(c, 192, row[0], padding=row[1])
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for i in range(1, 6):
            c = getattr(self, f"branch7x7dbl_{i}")(c)
        d = self.branch_pool(pool3x3(x, "avg"))
        return torch.cat([a, b, c, d], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction (Mixed_7a)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs (Mixed_7b with an avg pool, Mixed_7c with the FID
    network's max pool)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        d = self.branch_pool(pool3x3(x, self.pool))
        return torch.cat([a, b, c, d], 1)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's input protocol: [0, 1] images -> bilinear 299x299 -> [-1, 1]."""
    x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


def tf1_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1.x's bilinear resize (align_corners=False, no half-pixel centres), which
    torch-fidelity reproduces: output pixel i samples the input at i * in/out (no 0.5 offset),
    between floor and floor + 1 (clamped to the last pixel), linearly in x then in y. Differs from
    F.interpolate's bilinear, which samples at (i + 0.5) * in/out - 0.5."""
    def axis(n_in: int):
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), pos - lo.to(x.dtype)
    y_lo, y_hi, dy = axis(x.shape[2])
    x_lo, x_hi, dx = axis(x.shape[3])
    top, bottom = x[:, :, y_lo], x[:, :, y_hi]
    top = top[..., x_lo] + (top[..., x_hi] - top[..., x_lo]) * dx
    bottom = bottom[..., x_lo] + (bottom[..., x_hi] - bottom[..., x_lo]) * dx
    return top + (bottom - top) * dy[:, None]


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3. `forward(images in [0, 1], [B, 3, H, W]) -> [B, 2048]` pool3
    features (the `Extractor` protocol of evaluation.fid_kid); `logits` gives the 1008-way
    classifier output. Build it with `load_fid_inception(path)` to get the real weights."""

    feature_dim = FEATURE_DIM

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        """Network input (already resized and scaled to [-1, 1]) -> [B, 2048] pool3 features."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool3(preprocess(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward(images))


class FidelityInceptionV3(FIDInceptionV3):
    """The same network with torch-fidelity's input protocol (the paper's FID/KID tool): images as
    8-bit values, TensorFlow 1.x's bilinear resize to 299 (tf1_bilinear_resize), then (x - 128) / 128.
    torch-fidelity's weights file (weights-inception-2015-12-05-6726825d.pth) has pytorch-fid's
    names and loads as it is. forward takes [0, 1] images (exact multiples of 1/255, as read)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        levels = (images.float() * 255).round()
        return self.pool3((tf1_bilinear_resize(levels, INPUT_SIZE) - 128) / 128)


def missing_weights_message(path) -> str:
    where = "no --weights path was given" if path is None else f"weights file not found: {path}"
    return (f"FID Inception: {where}. The inception extractor needs pytorch-fid's TF-ported weights "
            f"{WEIGHTS_NAME}; download it from {WEIGHTS_URL} (nothing is downloaded at run time) "
            "and pass its path with --weights (or weights= in Python).")


def load_fid_inception(weights: str | Path | None, device: str | torch.device = "cpu",
                       protocol: type[FIDInceptionV3] = FIDInceptionV3) -> FIDInceptionV3:
    """The FID Inception-v3 with the weights of `weights` (pytorch-fid's
    pt_inception-2015-12-05-6726825d.pth, or any state dict with its names), loaded strictly,
    in eval mode, without gradients. FileNotFoundError without the file (saying where to get
    it); evaluation.weights.WeightsError (one line) when it is not that state dict. `protocol`:
    FIDInceptionV3 (pytorch-fid's input protocol) or FidelityInceptionV3 (torch-fidelity's)."""
    if weights is None or not Path(weights).is_file():
        raise FileNotFoundError(missing_weights_message(weights))
    what = f"a FID Inception-v3 state dict ({WEIGHTS_NAME} from {WEIGHTS_URL})"
    model = protocol()
    load_strictly(model, load_state_dict_file(weights, what), weights, what)
    return model.eval().requires_grad_(False).to(device)
