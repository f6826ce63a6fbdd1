"""FID and KID between two image sets, with pluggable feature extractors.

    python -m evaluation.fid_kid --real DIR --fake DIR [--extractor toy|inception|module.path:Class]
        [--weights PATH] [--batch-size 50] [--kid-subsets 100] [--kid-subset-size 1000] [--seed 2020]
        [--device auto] [--resize]

The two folders must hold images of one size and colour mode, the same in both, unless --resize
lets the extractor resize (and convert to RGB) every image: the paper's protocol compares real
HICO-DET test images (of many sizes) with 512x512 samples through the Inception's 299x299 resize.

FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to the two feature
sets (mean, covariance with N-1),
    ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)),
with the matrix square root by scipy.linalg.sqrtm; as in pytorch-fid, a product whose square
root is not finite (near-singular covariances, e.g. fewer samples than dimensions) is retried
with eps*I added to both covariances, and a negligible imaginary part from round-off is dropped.

KID (Binkowski et al. 2018): the unbiased estimate of MMD^2 with the polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over `subsets` random subsets of `subset_size` features of
each set (drawn without replacement, seeded); the result is mean and std over subsets
(defaults 100 x 1000 as torch-fidelity). A subset size larger than a set is clamped, with a
warning.

Extractors follow the `Extractor` protocol: a torch module whose `forward` takes float images
in [0, 1], [B, 3, H, W], does its own resizing and normalisation and returns [B, D] features,
and which has `feature_dim`. `--extractor` picks one of EXTRACTORS ("inception": the FID
Inception-v3, needs --weights; "toy": the toy world's CNN, defaults to assets/toy_features.pt)
or `module.path:ClassName`, a class built as `ClassName()` or `ClassName(weights=PATH)`.

Python API: `compute_fid_kid(real, fake, extractor)` (image tensors or folders),
`fid_from_features`, `kid_from_features`, `frechet_distance`, `extract_features`,
`load_image_folder`, `build_extractor`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from scipy import linalg
from tqdm import tqdm


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020
FID_EPS = 1e-6


@runtime_checkable
class Extractor(Protocol):
    """A feature extractor: images in [0, 1], float [B, 3, H, W] -> features [B, D]."""
    feature_dim: int

    def forward(self, images: torch.Tensor) -> torch.Tensor: ...


# --- extractors ----------------------------------------------------------------------------------


def _inception(weights, device):
    from evaluation.inception import load_fid_inception
    return load_fid_inception(weights, device)


def _inception_fidelity(weights, device):
    from evaluation.inception import FidelityInceptionV3, load_fid_inception
    return load_fid_inception(weights, device, FidelityInceptionV3)


def _toy(weights, device):
    from evaluation.toy_features import load_toy_extractor
    return load_toy_extractor(weights, device)


EXTRACTORS: dict[str, Callable] = {"inception": _inception, "inception-fidelity": _inception_fidelity, "toy": _toy}


@dataclass(frozen=True)
class Protocol:
    """A published way of computing FID/KID, fixed as a whole (`--protocol NAME`)."""
    name: str
    extractor: str        # an EXTRACTORS name
    image_size: int       # both folders: square_resize to this before the extractor
    fid_method: str       # "sqrtm" (pytorch-fid) or "eigvals" (torch-fidelity)
    kid_float32: bool     # torch-fidelity computes the KID kernels in float32
    kid_subsets: int = KID_SUBSETS
    kid_subset_size: int = KID_SUBSET_SIZE
    seed: int = KID_SEED
    extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg")   # torch-fidelity's samples_find_ext

    def list_files(self, folder: str | Path) -> list[Path]:
        """The images torch-fidelity reads from a folder, in its order: these extensions only,
        sorted by resolved path (a folder of links is ordered by their targets), which decides
        the KID subsets."""
        files = [f for f in list_image_files(folder) if f.suffix.lower() in self.extensions]
        if not files:
            raise ImageFolderError(f"no images ({', '.join(self.extensions)}) in folder {folder}")
        return sorted(files, key=lambda f: os.path.realpath(f))


PROTOCOLS = {
    # The InteractDiffusion paper: torch-fidelity (its Inception input protocol and its FID and
    # KID code, default KID subsets) on both folders resized to 512.
    "interactdiffusion": Protocol("interactdiffusion", "inception-fidelity", 512, "eigvals", True),
}


def _user_extractor(name: str, weights: str | Path | None):
    """`module.path:ClassName` built as ClassName() or ClassName(weights=...); ValueError (one
    line) when the module does not import or the name is not a class that builds."""
    module_name, _, class_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:   # ImportError, or whatever the module raises while importing
        raise ValueError(f"--extractor {name}: cannot import module {module_name!r}: "
                         f"{type(e).__name__}: {e}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"--extractor {name}: module {module_name!r} has no {class_name!r}")
    if not isinstance(cls, type):
        raise ValueError(f"--extractor {name}: {module_name}.{class_name} is a {type(cls).__name__}, "
                         "not a feature-extractor class")
    try:
        return cls(weights=weights) if weights is not None else cls()
    except Exception as e:   # wrong constructor signature, or the class's own refusal
        call = f"{class_name}(weights=...)" if weights is not None else f"{class_name}()"
        raise ValueError(f"--extractor {name}: {call} failed: {type(e).__name__}: {e}") from None


def build_extractor(name: str, weights: str | Path | None = None, device: str | torch.device = "cpu"):
    """An extractor by registry name or `module.path:ClassName`, in eval mode on `device`."""
    if name in EXTRACTORS:
        model = EXTRACTORS[name](weights, device)
    elif ":" in name:
        model = _user_extractor(name, weights)
    else:
        raise ValueError(f"unknown --extractor {name!r}: use one of {sorted(EXTRACTORS)} "
                         "or module.path:ClassName")
    if not callable(model) or not isinstance(model, Extractor):
        raise ValueError(f"--extractor {name}: built a {type(model).__name__}, which is not a feature extractor "
                         "(needs forward(images [B, 3, H, W] in [0, 1]) -> [B, D] and feature_dim)")
    if isinstance(model, torch.nn.Module):
        model = model.eval().requires_grad_(False).to(device)
    return model


# --- images --------------------------------------------------------------------------------------


class ImageFolderError(ValueError):
    """A folder of images that cannot be used; the message names the folder or file."""


def list_image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name."""
    folder = Path(folder)
    if folder.is_file():
        raise ImageFolderError(f"{folder}: is a file; expected a folder of images")
    if not folder.is_dir():
        raise ImageFolderError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ImageFolderError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    return files


def read_image(path: Path, size: int | None = None) -> torch.Tensor:
    """One image file as uint8 [3, H, W] RGB; with `size`, square_resize to `size` (a protocol's
    common size)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                im = square_resize(im, size)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:   # PIL raises several types for bad files
        raise ImageFolderError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """torch-fidelity's `samples_resize_and_crop=size` (torchvision's Resize(size) then
    CenterCrop(size) on a PIL image): the shorter side to `size` and the longer to
    int(size * long / short), PIL bilinear, skipped when the shorter side already is `size`; then
    the centre `size` x `size`, its corner at round((H - size) / 2), round((W - size) / 2)."""
    w, h = image.size
    if min(w, h) != size:
        short, long = min(w, h), max(w, h)
        new_long = int(size * long / short)
        image = image.resize((size, new_long) if w <= h else (new_long, size), Image.BILINEAR)
        w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image if (w, h) == (size, size) else image.crop((left, top, left + size, top + size))


def _read_files(files: Sequence[Path], size: tuple[int, int] | None,
                square: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    images = []
    for f in files:
        img = read_image(f, square)
        if size is None:
            size = tuple(img.shape[1:])
        elif tuple(img.shape[1:]) != size:
            raise ImageFolderError(f"image {f} is {img.shape[2]}x{img.shape[1]} but the first image of "
                                   f"{f.parent} is {size[1]}x{size[0]}: all images of a folder must have "
                                   "the same size")
        images.append(img)
    return torch.stack(images), size


def _equal_size_runs(images: Sequence[torch.Tensor]):
    """Stacked runs of consecutive images of one size: a batch the extractor can take at once."""
    start = 0
    for i in range(1, len(images) + 1):
        if i == len(images) or images[i].shape != images[start].shape:
            yield torch.stack(images[start:i])
            start = i


@dataclass(frozen=True)
class FolderFormat:
    """The distinct image sizes (W, H) and colour modes (PIL's: RGB, L, RGBA, ...) of a folder,
    in the order first seen, read from the file headers."""
    folder: Path
    sizes: tuple[tuple[int, int], ...]
    modes: tuple[str, ...]

    def describe(self) -> str:
        return f"{', '.join(f'{w}x{h}' for w, h in self.sizes)} {', '.join(self.modes)}"


def folder_format(folder: str | Path) -> FolderFormat:
    sizes, modes = {}, {}
    for f in list_image_files(folder):
        try:
            with Image.open(f) as im:
                sizes.setdefault(im.size, f)
                modes.setdefault(im.mode, f)
        except Exception as e:   # PIL raises several types for bad files
            raise ImageFolderError(f"cannot read image {f}: {e}") from None
    return FolderFormat(Path(folder), tuple(sizes), tuple(modes))


def check_comparable(real: FolderFormat, fake: FolderFormat) -> None:
    """Refuse two folders whose images differ in size or colour mode (or a folder of several
    sizes): the extractor would resize or convert them silently, so the distance would also
    measure that. The CLI's --resize skips this check."""
    for flag, fmt in (("--real", real), ("--fake", fake)):
        if len(fmt.sizes) > 1:
            raise ImageFolderError(f"{flag} {fmt.folder} holds images of several sizes ({fmt.describe()}); "
                                   "pass --resize to let the extractor resize each image")
    if real.sizes != fake.sizes or real.modes != fake.modes:
        raise ImageFolderError(f"--real {real.folder} holds {real.describe()} images but --fake {fake.folder} "
                               f"holds {fake.describe()} images; pass --resize to let the extractor resize "
                               "them (and convert them to RGB)")


def load_image_folder(folder: str | Path) -> torch.Tensor:
    """All images of `folder` (sorted by name) as uint8 [N, 3, H, W]. Raises ImageFolderError for
    a missing or empty folder, an unreadable file or images of different sizes."""
    return _read_files(list_image_files(folder), None)[0]


# --- features ------------------------------------------------------------------------------------


def _as_float(batch: torch.Tensor) -> torch.Tensor:
    if batch.dtype == torch.uint8:
        return batch.float() / 255.0
    if not batch.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or float in [0, 1], got {batch.dtype}")
    lo, hi = batch.min().item(), batch.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                         "(pass uint8 for 0..255; map [-1, 1] with (x + 1) / 2)")
    return batch.float()


@torch.no_grad()
def extract_features(images, extractor, batch_size: int = 50, device: str | torch.device = "cpu",
                     progress: bool = True, desc: str = "features", mixed_sizes: bool = False,
                     square: int | None = None,
                     list_files: Callable[[str | Path], list[Path]] | None = None) -> np.ndarray:
    """Features [N, D] (float64) of `images`: a uint8 tensor [N, 3, H, W] (0..255), a float tensor
    in [0, 1], or a folder of images (read batch by batch; with `mixed_sizes` its images may differ
    in size, each batch then split into runs of one size; with `square` each is resized to that
    square size first, square_resize; `list_files` picks and orders a folder's files,
    list_image_files by default)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if isinstance(images, (str, Path)):
        files = (list_files or list_image_files)(images)
        n = len(files)
        size = None

        def batches():
            nonlocal size
            for a in range(0, n, batch_size):
                if mixed_sizes and square is None:
                    yield from _equal_size_runs([read_image(f) for f in files[a:a + batch_size]])
                    continue
                batch, size = _read_files(files[a:a + batch_size], size, square)
                yield batch
    else:
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError("images must be a [N, 3, H, W] tensor or a folder path")
        n = images.shape[0]
        if n == 0:
            raise ValueError("no images given")

        def batches():
            for a in range(0, n, batch_size):
                yield images[a:a + batch_size]

    out = []
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        for batch in batches():
            f = extractor(_as_float(batch).to(device))
            if f.ndim != 2 or f.shape[0] != batch.shape[0]:
                raise ValueError(f"extractor returned features of shape {tuple(f.shape)} for a batch of "
                                 f"{batch.shape[0]}; expected [B, D]")
            out.append(f.detach().double().cpu().numpy())
            bar.update(batch.shape[0])
    return np.concatenate(out)


# --- FID -----------------------------------------------------------------------------------------


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = FID_EPS) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) between two Gaussians."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape} {mu2.shape}, covariances {s1.shape} {s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: the product of the covariances is singular; adding {eps} to their diagonals")
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance_eigvals(mu1, sigma1, mu2, sigma2) -> float:
    """The same distance as torch-fidelity computes it: tr((S1 S2)^(1/2)) as the sum of the square
    roots of the eigenvalues of S1 S2 (complex square roots, real parts), which needs no
    regularisation when the covariances are singular (fewer samples than dimensions)."""
    diff = np.atleast_1d(mu1) - np.atleast_1d(mu2)
    s1, s2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).astype(np.complex128)).real)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N-1 normalisation) of [N, D] features."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors [N, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_features(features1, features2, eps: float = FID_EPS, method: str = "sqrtm") -> float:
    """FID between two feature sets [N1, D] and [N2, D]; `method` "sqrtm" (pytorch-fid's, with
    its eps retry) or "eigvals" (torch-fidelity's, frechet_distance_eigvals)."""
    mu1, s1 = feature_statistics(features1)
    mu2, s2 = feature_statistics(features2)
    if method == "eigvals":
        return frechet_distance_eigvals(mu1, s1, mu2, s2)
    if method != "sqrtm":
        raise ValueError(f"FID method = {method!r}: must be 'sqrtm' or 'eigvals'")
    return frechet_distance(mu1, s1, mu2, s2, eps)


# --- KID -----------------------------------------------------------------------------------------


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """(gamma x.y + coef0)^degree for all pairs; gamma defaults to 1/D."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(kxx: np.ndarray, kxy: np.ndarray, kyy: np.ndarray) -> float:
    """Unbiased MMD^2 from the kernel matrices of two samples of the same size m: the within-set
    means leave out the diagonal (i == j) terms. (Summed row by row, as torch-fidelity does, so a
    float32 run rounds as it does.)"""
    m = kxx.shape[0]
    txx = (kxx.sum(axis=1) - np.diagonal(kxx)).sum() / (m * (m - 1))
    tyy = (kyy.sum(axis=1) - np.diagonal(kyy)).sum() / (m * (m - 1))
    txy = kxy.sum(axis=0).sum() / (m * m)
    return float(txx + tyy - 2 * txy)


def kid_from_features(features1, features2, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                      seed: int = KID_SEED, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0, float32: bool = False, clamp: bool = True) -> tuple[float, float]:
    """KID (mean, std over subsets) between two feature sets [N1, D] and [N2, D]. `float32`: the
    kernels in float32, as torch-fidelity; `clamp`: a subset size above a set's size is clamped
    with a warning (else an error, as torch-fidelity)."""
    dtype = np.float32 if float32 else np.float64
    f1, f2 = np.asarray(features1, dtype=dtype), np.asarray(features2, dtype=dtype)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"KID needs two [N, D] feature sets of one D, got {f1.shape} and {f2.shape}")
    if subsets < 1:
        raise ValueError(f"KID subsets must be >= 1, got {subsets}")
    n = min(len(f1), len(f2))
    if subset_size > n and not clamp:
        raise ValueError(f"KID subset size {subset_size} is larger than the smaller set ({n} images); pass "
                         f"--kid-subset-size {n} or fewer")
    if subset_size > n:
        warnings.warn(f"KID subset size {subset_size} is larger than the smaller set ({n} samples); "
                      f"using {n}")
        subset_size = n
    if subset_size < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples, got {subset_size}")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = f1[rng.choice(len(f1), subset_size, replace=False)]
        y = f2[rng.choice(len(f2), subset_size, replace=False)]
        values[i] = mmd2_unbiased(polynomial_kernel(x, x, degree, gamma, coef0),
                                  polynomial_kernel(x, y, degree, gamma, coef0),
                                  polynomial_kernel(y, y, degree, gamma, coef0))
    return float(values.mean()), float(values.std())


# --- both ----------------------------------------------------------------------------------------


def compute_fid_kid(real_images, fake_images, extractor, batch_size: int = 50,
                    kid_subsets: int = KID_SUBSETS, kid_subset_size: int = KID_SUBSET_SIZE,
                    seed: int = KID_SEED, device: str | torch.device = "cpu", progress: bool = True,
                    mixed_sizes: bool = False, protocol: Protocol | None = None) -> dict:
    """FID and KID between two image sets (uint8 or [0, 1] float tensors [N, 3, H, W], or folders)
    with `extractor` (an Extractor, or a name/spec for `build_extractor`); `mixed_sizes`: folders
    may hold images of several sizes (see `extract_features`). `protocol`: its image size, FID
    method and KID arithmetic (the extractor and KID settings are the caller's, e.g. the CLI takes
    them from the protocol). Returns dict(fid=, kid_mean=, kid_std=, n_real=, n_fake=)."""
    if isinstance(extractor, str):
        extractor = build_extractor(extractor, device=device)
    square = protocol.image_size if protocol else None
    lister = protocol.list_files if protocol else None
    real = extract_features(real_images, extractor, batch_size, device, progress, "real features", mixed_sizes,
                            square, lister)
    fake = extract_features(fake_images, extractor, batch_size, device, progress, "fake features", mixed_sizes,
                            square, lister)
    kid_mean, kid_std = kid_from_features(real, fake, kid_subsets, kid_subset_size, seed,
                                          float32=bool(protocol and protocol.kid_float32), clamp=protocol is None)
    fid = fid_from_features(real, fake, method=protocol.fid_method if protocol else "sqrtm")
    return {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "n_real": len(real), "n_fake": len(fake)}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation.fid_kid", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--real", required=True, help="folder of real images")
    p.add_argument("--fake", required=True, help="folder of generated images")
    p.add_argument("--extractor", default="inception",
                   help=f"feature extractor: {' | '.join(EXTRACTORS)} | module.path:ClassName")
    p.add_argument("--weights", default=None,
                   help="extractor weights (inception: pt_inception-2015-12-05-6726825d.pth; "
                        "toy: defaults to assets/toy_features.pt)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--kid-subsets", type=int, default=KID_SUBSETS)
    p.add_argument("--kid-subset-size", type=int, default=KID_SUBSET_SIZE)
    p.add_argument("--seed", type=int, default=KID_SEED, help="seed of the KID subsets")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                   help="a published protocol as a whole: interactdiffusion = the paper's torch-fidelity (its "
                        "Inception input and FID/KID arithmetic, KID 100 subsets of 1000) on both folders resized "
                        "to 512 (torch-fidelity's samples_resize_and_crop); needs --weights, fixes --extractor, "
                        "--kid-subsets, --kid-subset-size, --seed and --resize")
    p.add_argument("--resize", action="store_true",
                   help="allow folders whose images differ in size or colour mode (e.g. real HICO-DET images "
                        "against 512x512 samples): each image is converted to RGB and the extractor resizes it "
                        "to its input size; without it such folders are refused")
    return p


def apply_protocol(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Protocol | None:
    """The protocol's settings into `args`; a flag given with another value than the protocol's is
    an error naming it (one line, exit 2)."""
    if args.protocol is None:
        return None
    protocol = PROTOCOLS[args.protocol]
    fixed = {"extractor": protocol.extractor, "kid_subsets": protocol.kid_subsets,
             "kid_subset_size": protocol.kid_subset_size, "seed": protocol.seed}
    for name, value in fixed.items():
        given = getattr(args, name)
        if given != parser.get_default(name) and given != value:
            parser.error(f"--{name.replace('_', '-')} {given}: --protocol {protocol.name} fixes it to {value}")
        setattr(args, name, value)
    args.resize = True
    return protocol


def check_protocol_counts(protocol: Protocol, folders: dict[str, str]) -> None:
    """A protocol's KID subsets need that many images in each folder: said before any feature is
    computed (its subset size is fixed, so no flag can lower it)."""
    for flag, folder in folders.items():
        count = len(protocol.list_files(folder))
        if count < protocol.kid_subset_size:
            raise ValueError(f"{flag} {folder}: {count} images; --protocol {protocol.name} computes KID on subsets of "
                             f"{protocol.kid_subset_size} images, so each folder needs at least that many (leave "
                             f"--protocol out to compute FID and KID on fewer, with smaller subsets)")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    protocol = apply_protocol(args, parser)
    try:
        device = resolve_device(args.device)
        # fail on a bad folder, or two folders that do not compare, before loading a model
        formats = [folder_format(folder) for folder in (args.real, args.fake)]
        if not args.resize:
            check_comparable(*formats)
        if protocol is not None:
            check_protocol_counts(protocol, {"--real": args.real, "--fake": args.fake})
        extractor = build_extractor(args.extractor, args.weights, device)
        r = compute_fid_kid(args.real, args.fake, extractor, args.batch_size, args.kid_subsets,
                            args.kid_subset_size, args.seed, device, mixed_sizes=args.resize, protocol=protocol)
    except (ImageFolderError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"real: {r['n_real']} images ({args.real}), fake: {r['n_fake']} images ({args.fake}), "
          f"extractor: {args.extractor}" + (f", protocol: {protocol.name}" if protocol else ""))
    print(f"FID: {r['fid']:.4f}")
    print(f"KID: {r['kid_mean']:.6f} ± {r['kid_std']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
