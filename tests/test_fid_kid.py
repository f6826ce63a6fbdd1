"""FID/KID (evaluation.fid_kid), the FID Inception-v3 (evaluation.inception) and the toy feature
extractor (evaluation.toy_features), each checked against independent computations: closed-form
Frechet distances, a pair-by-pair KID written with python loops, a hand-written bilinear resize,
parameter counts derived from torchvision's published Inception-v3 figure.
No real Inception weights are available offline: the loader is tested on random weights."""
from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import fid_kid
from evaluation.fid_kid import (ImageFolderError, build_extractor, compute_fid_kid, fid_from_features,
                                frechet_distance, kid_from_features, load_image_folder)
from evaluation.inception import (WEIGHTS_NAME, WEIGHTS_URL, FIDInceptionV3, load_fid_inception, pool3x3,
                                  preprocess)

REPO_ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


# --- FID -------------------------------------------------------------------------------------------


def closed_form_fid(mu1, s1, mu2, s2):
    """||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) with symmetric square roots by
    eigendecomposition (independent of scipy.linalg.sqrtm of the non-symmetric S1 S2)."""
    def psd_sqrt(s):
        w, v = np.linalg.eigh(s)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    r1 = psd_sqrt(s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(psd_sqrt(r1 @ s2 @ r1)))


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_full_covariances_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    s1, s2 = a @ a.T + 0.1 * np.eye(8), b @ b.T + 0.1 * np.eye(8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed_form_fid(mu1, s1, mu2, s2), rel=1e-7)


def test_fid_of_gaussian_samples_matches_population_closed_form():
    rng = np.random.default_rng(2)
    d, n = 4, 40000
    mu1, mu2 = np.array([0.0, 1.0, -1.0, 0.5]), np.array([0.5, 1.0, 0.0, 0.0])
    v1, v2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([2.0, 1.0, 0.5, 3.0])
    x = mu1 + rng.normal(size=(n, d)) * np.sqrt(v1)
    y = mu2 + rng.normal(size=(n, d)) * np.sqrt(v2)
    population = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert fid_from_features(x, y) == pytest.approx(population, abs=0.05)
    # and exactly the closed form of the sample statistics (mean, covariance with N-1, by hand)
    def stats(f):
        m = f.sum(0) / len(f)
        c = (f - m).T @ (f - m) / (len(f) - 1)
        return m, c
    assert fid_from_features(x, y) == pytest.approx(closed_form_fid(*stats(x), *stats(y)), rel=1e-8)


def test_fid_of_identical_features_is_zero():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    assert abs(fid_from_features(f, f)) < 1e-6
    # fewer samples than dimensions: singular covariances still give a finite, ~0 result
    g = rng.normal(size=(10, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert abs(fid_from_features(g, g)) < 1e-3


def test_fid_singular_product_retries_with_eps_offset(monkeypatch):
    calls = []
    real_sqrtm = fid_kid.linalg.sqrtm

    def fake_sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid_kid.linalg, "sqrtm", fake_sqrtm)
    s1, s2 = np.diag([1.0, 0.0]), np.diag([0.0, 4.0])
    with pytest.warns(UserWarning, match="singular"):
        value = frechet_distance(np.zeros(2), s1, np.zeros(2), s2, eps=1e-6)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s1 + 1e-6 * np.eye(2)) @ (s2 + 1e-6 * np.eye(2)))
    e = 1e-6
    assert value == pytest.approx(5.0 - 2 * (math.sqrt(e * (1 + e)) + math.sqrt(e * (4 + e))), abs=1e-9)


def test_fid_small_imaginary_part_dropped_large_one_raises(monkeypatch):
    s = np.eye(3)
    monkeypatch.setattr(fid_kid.linalg, "sqrtm", lambda a: np.eye(3) + 1e-8j)
    assert frechet_distance(np.zeros(3), s, np.zeros(3), s) == pytest.approx(0.0, abs=1e-12)
    monkeypatch.setattr(fid_kid.linalg, "sqrtm", lambda a: np.eye(3) + 0.1j * np.eye(3))
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(3), s, np.zeros(3), s)


# --- KID -------------------------------------------------------------------------------------------


def slow_mmd2(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, pair by pair."""
    d, m = len(x[0]), len(x)
    k = lambda a, b: (sum(p * q for p, q in zip(a, b)) / d + 1) ** 3   # noqa: E731
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_kid_matches_pairwise_reference():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1.2, size=(12, 5))
    # one subset of the whole set: a permutation, to which MMD^2 is invariant
    mean, std = kid_from_features(x, y, subsets=1, subset_size=12)
    assert mean == pytest.approx(slow_mmd2(x.tolist(), y.tolist()), rel=1e-10)
    assert std == 0.0
    # random subsets, drawn as documented: per subset, x indices then y indices, without replacement
    x, y = rng.normal(size=(30, 5)), rng.normal(0.2, 1.0, size=(25, 5))
    mean, std = kid_from_features(x, y, subsets=4, subset_size=8, seed=7)
    r = np.random.RandomState(7)
    vals = []
    for _ in range(4):
        xi, yi = r.choice(30, 8, replace=False), r.choice(25, 8, replace=False)
        vals.append(slow_mmd2(x[xi].tolist(), y[yi].tolist()))
    assert mean == pytest.approx(np.mean(vals), rel=1e-10)
    assert std == pytest.approx(np.std(vals), rel=1e-8)


def test_kid_of_same_distribution_is_zero_in_expectation():
    rng = np.random.default_rng(5)
    same = [kid_from_features(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)), subsets=1, subset_size=40)[0]
            for _ in range(200)]
    stderr = np.std(same) / math.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * stderr
    shifted = kid_from_features(rng.normal(size=(40, 8)), rng.normal(0.5, 1, size=(40, 8)),
                                subsets=1, subset_size=40)[0]
    assert shifted > np.mean(same) + 10 * stderr


def test_kid_clamps_subset_size_with_warning_and_is_seeded():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(20, 4)), rng.normal(size=(15, 4))
    with pytest.warns(UserWarning, match="larger than the smaller set"):
        a = kid_from_features(x, y, subsets=5, subset_size=1000, seed=1)
    b = kid_from_features(x, y, subsets=5, subset_size=15, seed=1)
    assert a == b
    assert kid_from_features(x, y, subsets=5, subset_size=10, seed=1) != \
        kid_from_features(x, y, subsets=5, subset_size=10, seed=2)


# --- images and the API ----------------------------------------------------------------------------


def write_images(folder: Path, arrays) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i:03d}.png")
    return folder


def test_load_image_folder(tmp_path):
    rng = np.random.default_rng(7)
    arrays = [rng.integers(0, 256, (9, 7, 3), dtype=np.uint8) for _ in range(3)]
    folder = write_images(tmp_path / "imgs", arrays)
    (folder / "notes.txt").write_text("not an image")
    x = load_image_folder(folder)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 9, 7)
    np.testing.assert_array_equal(x[1].permute(1, 2, 0).numpy(), arrays[1])


def test_image_folder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(ImageFolderError, match="not found.*missing"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ImageFolderError, match="no images.*empty"):
        load_image_folder(tmp_path / "empty")
    bad = write_images(tmp_path / "bad", [np.zeros((4, 4, 3), np.uint8)])
    (bad / "001.png").write_bytes(b"not a png")
    with pytest.raises(ImageFolderError, match="cannot read image .*001.png"):
        load_image_folder(bad)
    mixed = write_images(tmp_path / "mixed", [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)])
    with pytest.raises(ImageFolderError, match="001.png is 4x5 .*same size"):
        load_image_folder(mixed)


class ColourStats(torch.nn.Module):
    """A user extractor for the `module:Class` path: per-channel mean and std (6-d)."""
    feature_dim = 6

    def __init__(self, weights=None):
        super().__init__()
        self.weights = weights

    def forward(self, images):
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1)


def test_extractor_registry_and_user_class(tmp_path):
    ex = build_extractor(f"{__name__}:ColourStats", weights=str(tmp_path / "w.pt"))
    assert isinstance(ex, ColourStats) and ex.weights == str(tmp_path / "w.pt")
    assert isinstance(ex, fid_kid.Extractor)
    with pytest.raises(ValueError, match="unknown --extractor"):
        build_extractor("nope")
    with pytest.raises(ValueError, match="no 'Missing'"):
        build_extractor(f"{__name__}:Missing")
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        build_extractor("inception")


def test_compute_fid_kid_api_and_cli(tmp_path, capsys):
    rng = np.random.default_rng(8)
    real = torch.from_numpy(rng.integers(0, 256, (30, 3, 8, 8), dtype=np.uint8))
    fake = (real.float() * 0.5).to(torch.uint8)
    ex = ColourStats()
    r = compute_fid_kid(real, fake, ex, batch_size=7, kid_subsets=3, kid_subset_size=10, progress=False)
    feats_r = torch.cat([(real.float() / 255).mean((2, 3)), (real.float() / 255).std((2, 3))], 1).double().numpy()
    feats_f = torch.cat([(fake.float() / 255).mean((2, 3)), (fake.float() / 255).std((2, 3))], 1).double().numpy()
    assert r["fid"] == pytest.approx(fid_from_features(feats_r, feats_f), rel=1e-5)
    assert (r["kid_mean"], r["kid_std"]) == pytest.approx(kid_from_features(feats_r, feats_f, 3, 10), rel=1e-4)
    assert r["fid"] > 0.01
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        compute_fid_kid(real.float(), fake, ex, progress=False)

    rd = write_images(tmp_path / "real", real.permute(0, 2, 3, 1).numpy())
    fd = write_images(tmp_path / "fake", fake.permute(0, 2, 3, 1).numpy())
    assert compute_fid_kid(rd, fd, ex, batch_size=8, kid_subsets=3, kid_subset_size=10,
                           progress=False)["fid"] == pytest.approx(r["fid"], rel=1e-5)
    code = fid_kid.main(["--real", str(rd), "--fake", str(fd), "--extractor", f"{__name__}:ColourStats",
                         "--kid-subsets", "3", "--kid-subset-size", "10", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0
    assert f"FID: {r['fid']:.4f}" in out.out and "KID: " in out.out and " ± " in out.out
    assert "real features" in out.err   # tqdm progress bar

    code = fid_kid.main(["--real", str(tmp_path / "nowhere"), "--fake", str(fd), "--extractor", "toy"])
    assert code == 1 and "image folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_module_entry_point_reports_missing_inception_weights(tmp_path):
    rd = write_images(tmp_path / "r", [np.zeros((8, 8, 3), np.uint8)] * 2)
    p = subprocess.run([sys.executable, "-m", "evaluation.fid_kid", "--real", str(rd), "--fake", str(rd),
                        "--extractor", "inception", "--weights", str(tmp_path / "none.pth")],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert WEIGHTS_NAME in p.stderr and WEIGHTS_URL in p.stderr and "none.pth" in p.stderr


# --- bad inputs: folders that do not compare, weights that are not weights, extractors that are not --


def run_cli(capsys, *args) -> tuple[int, str]:
    code = fid_kid.main(list(map(str, args)) + ["--kid-subsets", "2", "--kid-subset-size", "4", "--device", "cpu"])
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("real features", "fake features"))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_folders_of_other_sizes_or_modes_are_refused_unless_resize(tmp_path, capsys):
    rng = np.random.default_rng(3)
    real = write_images(tmp_path / "real", [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)])
    small = write_images(tmp_path / "small", [rng.integers(0, 256, (48, 32, 3), dtype=np.uint8) for _ in range(6)])
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(grey / f"{i}.png")
    user = f"{__name__}:ColourStats"
    code, err = run_cli(capsys, "--real", real, "--fake", small, "--extractor", user)
    line = one_error_line(err)
    assert code == 1 and f"--real {real} holds 64x64 RGB" in line and f"--fake {small} holds 32x48 RGB" in line
    assert "--resize" in line
    code, err = run_cli(capsys, "--real", real, "--fake", grey, "--extractor", user)
    line = one_error_line(err)
    assert code == 1 and "64x64 RGB" in line and f"{grey} holds 64x64 L" in line
    # asked for: the extractor resizes and converts
    for fake in (small, grey):
        code = fid_kid.main(["--real", str(real), "--fake", str(fake), "--extractor", user, "--resize",
                             "--kid-subsets", "2", "--kid-subset-size", "4", "--device", "cpu"])
        assert code == 0 and "FID: " in capsys.readouterr().out


def test_resize_takes_a_folder_of_several_sizes_image_by_image(tmp_path, capsys):
    rng = np.random.default_rng(4)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((8, 8), (8, 8), (6, 10), (8, 8), (5, 5))]
    mixed = write_images(tmp_path / "mixed", arrays)
    same = write_images(tmp_path / "same", [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(5)])
    code, err = run_cli(capsys, "--real", mixed, "--fake", same, "--extractor", f"{__name__}:ColourStats")
    assert code == 1 and f"--real {mixed} holds images of several sizes (8x8, 10x6, 5x5 RGB)" in one_error_line(err)
    feats = fid_kid.extract_features(mixed, ColourStats(), batch_size=4, progress=False, mixed_sizes=True)
    one_by_one = np.concatenate([ColourStats()(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255).double().numpy()
                                 for a in arrays])
    np.testing.assert_allclose(feats, one_by_one, rtol=1e-6)


@pytest.mark.parametrize("content, reason", [
    (bytes(range(256)) * 8, "not a torch file (a zip archive or a pickle): it starts with b'\\x00\\x01"),
    (b"these are not weights\n", "not a torch file (a zip archive or a pickle): it starts with b'these a"),
    ({"conv.weight": torch.zeros(1)}, "tensors missing (e.g. 'Conv2d_1a_3x3.conv.weight'); 1 unexpected"),
    (torch.zeros(3), "it holds a Tensor, not a state dict"),
], ids=["random-bytes", "text", "wrong-keys", "tensor"])
def test_inception_weights_that_are_not_weights_get_one_line(tmp_path, capsys, content, reason):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    images = write_images(tmp_path / "r", [np.zeros((8, 8, 3), np.uint8)] * 2)
    code, err = run_cli(capsys, "--real", images, "--fake", images, "--extractor", "inception", "--weights", path)
    line = one_error_line(err)
    assert code == 1 and line.startswith(f"error: {path} is not a FID Inception-v3 state dict") and reason in line


def test_toy_weights_that_are_not_toy_weights_get_one_line(tmp_path, capsys):
    images = write_images(tmp_path / "r", [np.zeros((32, 32, 3), np.uint8)] * 2)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)))
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, wrong)
    for path, reason in ((junk, "not a torch file"), (wrong, "tensors missing")):
        code, err = run_cli(capsys, "--real", images, "--fake", images, "--extractor", "toy", "--weights", path)
        line = one_error_line(err)
        assert code == 1 and f"{path} is not a toy feature checkpoint" in line and reason in line


def not_a_class():
    return ColourStats()


class NeedsArguments(ColourStats):
    def __init__(self, size):
        super().__init__()


@pytest.mark.parametrize("spec, fragment", [
    (f"{__name__}:not_a_class", f"{__name__}.not_a_class is a function, not a feature-extractor class"),
    (f"{__name__}:Missing", f"module {__name__!r} has no 'Missing'"),
    ("no_such_package.module:Thing", "cannot import module 'no_such_package.module': ModuleNotFoundError"),
    (f"{__name__}.ColourStats:Thing", "cannot import module"),
    (f"{__name__}:NeedsArguments", "NeedsArguments() failed: TypeError"),
    ("collections:OrderedDict", "built a OrderedDict, which is not a feature extractor"),
], ids=["function", "missing", "no-module", "class-as-module", "constructor", "not-an-extractor"])
def test_extractors_that_are_not_feature_extractor_classes_get_one_line(tmp_path, capsys, spec, fragment):
    images = write_images(tmp_path / "r", [np.zeros((8, 8, 3), np.uint8)] * 2)
    code, err = run_cli(capsys, "--real", images, "--fake", images, "--extractor", spec)
    line = one_error_line(err)
    assert code == 1 and f"--extractor {spec}" in line and fragment in line


# --- the FID Inception-v3 --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    with torch.no_grad():   # non-trivial batch-norm statistics, so a load that drops them shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_inception_layout_matches_the_fid_network(random_inception):
    sd = random_inception.state_dict()
    # torchvision's Inception-v3 has 27,161,264 parameters with its aux classifier (3,326,696)
    # and 1000 classes; the FID net has no aux classifier and 1008 classes (+8 x 2049).
    assert sum(p.numel() for p in random_inception.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    expected = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
                "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
                "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
                "Mixed_6a.branch3x3dbl_3.conv.weight": (96, 96, 3, 3),
                "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
                "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
                "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
                "fc.weight": (1008, 2048), "fc.bias": (1008,)}
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith("AuxLogits") for k in sd)
    assert not any(n.bias is not None for n in random_inception.modules() if isinstance(n, torch.nn.Conv2d))
    assert all(m.eps == 1e-3 for m in random_inception.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # the FID blocks: TF-style average pools, and a max pool in the last block only
    assert random_inception.Mixed_7b.pool == "avg" and random_inception.Mixed_7c.pool == "max"
    ones = torch.ones(1, 1, 5, 5)
    assert torch.equal(pool3x3(ones, "avg"), ones)   # padded zeros not counted at the borders
    x = torch.arange(25.0).view(1, 1, 5, 5)
    assert pool3x3(x, "avg")[0, 0, 0, 0] == pytest.approx((0 + 1 + 5 + 6) / 4)
    assert pool3x3(x, "max")[0, 0, 0, 0] == 6


def test_inception_weights_round_trip_strictly(random_inception, tmp_path):
    path = tmp_path / WEIGHTS_NAME
    torch.save(random_inception.state_dict(), path)
    loaded = load_fid_inception(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for k, v in random_inception.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        feats = loaded(torch.rand(2, 3, 40, 52))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    # a plain dict without num_batches_tracked (older torch saves) loads strictly as well
    plain = {k: v for k, v in random_inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(plain, tmp_path / "old.pth")
    load_fid_inception(tmp_path / "old.pth")
    # a state dict of another network is refused, naming the file and the expected weights
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match=f"other.pth is not a FID Inception-v3.*{WEIGHTS_NAME}"):
        load_fid_inception(tmp_path / "other.pth")


def test_missing_inception_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_fid_inception(tmp_path / "nope.pth")
    msg = str(e.value)
    assert "nope.pth" in msg and WEIGHTS_NAME in msg and WEIGHTS_URL in msg and "--weights" in msg
    with pytest.raises(FileNotFoundError, match="no --weights path"):
        load_fid_inception(None)


def hand_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Row i: weights of the input samples for output i (half-pixel centres, edge clamped)."""
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        w[i, i0] += 1 - frac
        w[i, i1] += frac
    return w


@pytest.mark.parametrize("h, w", [(5, 7), (320, 301)])
def test_inception_resize_matches_hand_computation(h, w):
    torch.manual_seed(1)
    img = torch.rand(1, 3, h, w, dtype=torch.float64)
    out = preprocess(img)
    assert out.shape == (1, 3, 299, 299)
    wh, ww = hand_bilinear_matrix(h, 299), hand_bilinear_matrix(w, 299)
    expected = 2 * np.stack([wh @ c @ ww.T for c in img[0].numpy()]) - 1
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-10)


# --- the toy feature extractor ---------------------------------------------------------------------


TOY_WEIGHTS = REPO_ROOT / "assets" / "toy_features.pt"


@pytest.fixture(scope="module")
def toy_extractor():
    if not TOY_WEIGHTS.is_file():
        pytest.skip(f"{TOY_WEIGHTS} not found (scripts/train_toy_features.py writes it)")
    return build_extractor("toy")


def toy_images(n: int) -> torch.Tensor:
    """The first n toy test images (seed 0, the default size), rendered in memory: identical to data/toy's."""
    from dataset.toy import render_image
    from dataset.toy.world import DEFAULT_SIZE
    return torch.stack([torch.from_numpy(np.asarray(render_image(0, "test", i, DEFAULT_SIZE)[0].convert("RGB")).copy())
                        for i in range(n)]).permute(0, 3, 1, 2)


def test_toy_weights_file_is_small_fp16_with_metadata():
    if not TOY_WEIGHTS.is_file():
        pytest.skip(f"{TOY_WEIGHTS} not found")
    assert TOY_WEIGHTS.stat().st_size < 1_000_000
    ckpt = torch.load(TOY_WEIGHTS, weights_only=True)
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    for key in ("seed", "data", "steps", "test_metrics", "train_seconds"):
        assert key in ckpt["meta"]


@pytest.mark.slow
def test_toy_extractor_features_and_fid_separates_corruption(toy_extractor):
    x = toy_images(600)
    with torch.no_grad():
        f = toy_extractor(x[:4].float() / 255)
    assert f.shape == (4, 256) and torch.isfinite(f).all()
    # resizing is the extractor's own business: 128x128 input works too
    with torch.no_grad():
        assert toy_extractor(torch.rand(2, 3, 128, 128)).shape == (2, 256)

    # 300 a side: with fewer samples than feature dims, FID's small-sample bias swamps the signal
    a, b = x[:300], x[300:]
    gen = torch.Generator().manual_seed(0)
    bf = b.float() / 255
    blurred = torch.nn.functional.avg_pool2d(bf, 3, stride=1, padding=1, count_include_pad=False)
    corrupted = (blurred + 0.1 * torch.randn(bf.shape, generator=gen)).clamp(0, 1)
    kw = dict(batch_size=100, kid_subsets=10, kid_subset_size=100, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = compute_fid_kid(a, b, toy_extractor, **kw)
        bad = compute_fid_kid(a, corrupted, toy_extractor, **kw)
    print(f"toy FID real/real {real['fid']:.3f}, real/corrupted {bad['fid']:.3f}; "
          f"KID {real['kid_mean']:.5f} vs {bad['kid_mean']:.5f}")
    assert bad["fid"] > 5 * real["fid"]
    assert bad["kid_mean"] > 10 * max(real["kid_mean"], real["kid_std"])


# --------------------------------------------------------------------------- parity with torch-fidelity


def test_protocol_interactdiffusion_matches_torch_fidelity(tmp_path):
    """The paper's tool, torch-fidelity, run in its own process (tests/tools/torch_fidelity_reference.py)
    on the same Inception weights file (random weights in its layout, which is pytorch-fid's) and the
    same folders: features within 1e-4 relative, FID and KID within 1e-3."""
    from evaluation.fid_kid import PROTOCOLS, build_extractor, extract_features, fid_from_features, kid_from_features
    from evaluation.inception import FIDInceptionV3
    torch.manual_seed(0)
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    model = FIDInceptionV3()
    # Random convolutions with batch-norm statistics measured on noise images, so that features
    # keep depending on the input through the 94 layers (default statistics saturate them).
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum = None   # a plain average over the batches seen
    with torch.no_grad():
        model.train().pool3(torch.rand(6, 3, 299, 299) * 2 - 1)
    torch.save(model.state_dict(), weights)
    rng = np.random.default_rng(0)
    for folder, count, shift in (("real", 7, 0), ("fake", 6, 40)):
        (tmp_path / folder).mkdir()
        for i in range(count):   # odd sizes: the resize to 299 matters
            pixels = np.clip(rng.normal(120 + shift, 60, (37, 53, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / folder / f"{i:02d}.png")
    out = tmp_path / "reference.npz"
    script = Path(__file__).parent / "tools" / "torch_fidelity_reference.py"
    done = subprocess.run([sys.executable, str(script), str(weights), str(tmp_path / "real"), str(tmp_path / "fake"),
                           str(out), "10", "5"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = np.load(out)
    protocol = PROTOCOLS["interactdiffusion"]
    extractor = build_extractor(protocol.extractor, weights)
    ours = [extract_features(tmp_path / f, extractor, progress=False, mixed_sizes=True) for f in ("real", "fake")]
    for mine, theirs in zip(ours, (reference["real"], reference["fake"])):
        assert np.abs(mine - theirs).max() <= 1e-4 * np.abs(theirs).max()
        assert np.abs(theirs).max() > 0 and theirs.std(axis=0).max() > 0
    fid = fid_from_features(*ours, method=protocol.fid_method)
    kid_mean, kid_std = kid_from_features(*ours, subsets=10, subset_size=5, seed=protocol.seed, float32=True,
                                          clamp=False)
    assert fid == pytest.approx(float(reference["fid"]), rel=1e-3)
    assert kid_mean == pytest.approx(float(reference["kid_mean"]), rel=1e-3)
    assert kid_std == pytest.approx(float(reference["kid_std"]), rel=1e-3)


def test_protocol_resize_is_torch_fidelitys_resize_and_crop():
    """torchvision's Resize(20) + CenterCrop(20) on PIL images, written out: 30x61 -> 40x20
    (int(20 * 61 / 30) = 40), bilinear, crop at round(20 / 2) = 10; a shorter side of 20 is not
    resized, only cropped, with a rounded half offset."""
    from evaluation.fid_kid import square_resize
    image = Image.fromarray(np.arange(30 * 61 * 3, dtype=np.uint8).reshape(30, 61, 3) % 251)
    out = square_resize(image, 20)
    expected = image.resize((40, 20), Image.BILINEAR).crop((10, 0, 30, 20))
    assert out.size == (20, 20) and np.array_equal(np.asarray(out), np.asarray(expected))
    tall = Image.fromarray(np.arange(25 * 20 * 3, dtype=np.uint8).reshape(25, 20, 3))
    assert np.array_equal(np.asarray(square_resize(tall, 20)), np.asarray(tall)[2:22])  # round(2.5) = 2
    same = Image.new("RGB", (20, 20))
    assert square_resize(same, 20) is same


def test_protocol_reads_torch_fidelitys_files_in_its_order(tmp_path):
    """png/jpg/jpeg only, sorted by the resolved path: links are ordered by their targets."""
    from evaluation.fid_kid import PROTOCOLS
    (tmp_path / "targets").mkdir()
    (tmp_path / "folder").mkdir()
    for name in ("b.png", "a.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / "targets" / name)
    (tmp_path / "folder" / "1.png").symlink_to(tmp_path / "targets" / "b.png")
    (tmp_path / "folder" / "2.png").symlink_to(tmp_path / "targets" / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "folder" / "3.webp")
    files = PROTOCOLS["interactdiffusion"].list_files(tmp_path / "folder")
    assert [f.name for f in files] == ["2.png", "1.png"]


def test_protocol_flags_conflicts_are_one_line(tmp_path, capsys):
    from evaluation.fid_kid import main
    with pytest.raises(SystemExit) as exit_:
        main(["--real", str(tmp_path), "--fake", str(tmp_path), "--protocol", "interactdiffusion",
              "--kid-subset-size", "50"])
    assert exit_.value.code == 2
    assert "--kid-subset-size 50: --protocol interactdiffusion fixes it to 1000" in capsys.readouterr().err
