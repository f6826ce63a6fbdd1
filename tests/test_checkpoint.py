"""interact/checkpoint/: every supported layout loads strictly and exactly, the full-size
names/shapes match the released manifest, wrong files are refused with a useful message,
the `inspect` CLI, and atomic saving."""

import contextlib
import copy
import io
import os
import random
import re
from collections import OrderedDict

import pytest
import torch
from omegaconf import OmegaConf

from interact import checkpoint
from interact.checkpoint import (
    DIFFUSION_BUFFERS, CheckpointError, check_file, classify, describe_kind, load_weights, read_file, save_checkpoint,
    to_sections)
from interact.controls.interactions import GLIGEN_FRESH_KEYS, gligen_to_interaction
from hoi.io import atomic_save, file_digest
from interact.model import SECTIONS, build_model, is_interaction_key
from helpers import REPO_ROOT, SD_CONFIG, TINY_CONFIG

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


# ----------------------------------------------------------------------------- helpers

class TrainingArgs:
    """An arbitrary Python object, as training scripts pickle their argparse namespace."""

    def __init__(self):
        self.lr = 5e-5


class StateDict(OrderedDict):
    """A dict subclass: weights_only unpickling refuses it."""


def scrambled_copy(model, seed: int):
    """A deep copy (sharing the tokenizer) whose every tensor holds new values."""
    tok = model.text_encoder.tokenizer
    out = copy.deepcopy(model, {id(tok): tok})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in SECTIONS:
            for tensor in out.section(name).state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype))
                else:
                    tensor.add_(1)
    return out


def weights(model) -> dict:
    return {name: model.section(name).state_dict() for name in SECTIONS}


def differing(a, b) -> list[str]:
    """Names (section/key) whose tensors are not bit-identical between two models."""
    wa, wb = weights(a), weights(b)
    out = []
    for name in SECTIONS:
        assert wa[name].keys() == wb[name].keys(), name
        out += [f"{name}/{k}" for k, v in wa[name].items()
                if v.dtype != wb[name][k].dtype or not torch.equal(v, wb[name][k])]
    return out


def assert_same_weights(a, b):
    diff = differing(a, b)
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:5]}"


def text_inner(key: str) -> str:
    """`transformer.[text_model.]X` -> `X`."""
    assert key.startswith("transformer."), key
    key = key[len("transformer."):]
    return key[len("text_model."):] if key.startswith("text_model.") else key


def position_ids_like(text_state: dict) -> torch.Tensor:
    pos = next(v for k, v in text_state.items() if k.endswith("embeddings.position_embedding.weight"))
    return torch.arange(pos.shape[0], device=pos.device).unsqueeze(0)


def old_text_names(text_state: dict) -> dict:
    """Old transformers naming (released InteractDiffusion/GLIGEN files) with the stale position_ids."""
    out = {"transformer.text_model." + text_inner(k): v for k, v in text_state.items()}
    out["transformer.text_model.embeddings.position_ids"] = position_ids_like(text_state)
    return out


def released_layout(sections: dict, config=None, old_text=False, **extra) -> dict:
    out = {name: dict(sections[name]) for name in SECTIONS if name in sections}
    if old_text and "text_encoder" in out:
        out["text_encoder"] = old_text_names(out["text_encoder"])
    out["config_dict"] = config if config is not None else {}
    out.update(extra)
    return out


def sd_original_state(sections: dict, with_extras: bool = True) -> dict:
    """A flat SD v1.x `state_dict`: backbone only, diffusion buffers unprefixed."""
    sd = {"model.diffusion_model." + k: v for k, v in sections["model"].items() if not is_interaction_key(k)}
    sd.update({"first_stage_model." + k: v for k, v in sections["autoencoder"].items()})
    sd.update({"cond_stage_model." + k: v for k, v in old_text_names(sections["text_encoder"]).items()})
    sd.update(sections["diffusion"])
    if with_extras:  # EMA bookkeeping of the original training code: not part of any section
        sd["model_ema.decay"] = torch.tensor(0.9999)
        sd["model_ema.num_updates"] = torch.tensor(470000, dtype=torch.int32)
    return sd


def cloned(sections: dict) -> dict:
    return {name: {k: v.clone() for k, v in state.items()} for name, state in sections.items()}


def copy_raw(raw: dict) -> dict:
    """One level deeper than dict(): sections can be edited without touching the original."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def source(tiny_model):
    """The tiny model with every tensor random (no zero-initialised nulls or gates)."""
    return scrambled_copy(tiny_model, seed=1)


@pytest.fixture(scope="module")
def _blank(tiny_model):
    model = scrambled_copy(tiny_model, seed=2)
    return model, cloned(weights(model))


@pytest.fixture
def fresh(_blank, source):
    """A model to load into, every tensor different from `source` (reset for each test)."""
    model, snapshot = _blank
    with torch.no_grad():
        for name, state in weights(model).items():
            for key, tensor in state.items():
                tensor.copy_(snapshot[name][key])
    assert len(differing(model, source)) == sum(len(s) for s in weights(source).values())
    return model


@pytest.fixture(scope="module")
def config_dict(source):
    return OmegaConf.to_container(source.config, resolve=True)


@pytest.fixture(scope="module")
def full_file(tmp_path_factory, source):
    """The project's own full export of `source`."""
    path = tmp_path_factory.mktemp("ckpt") / "full.pth"
    save_checkpoint(path, source)
    return path


@pytest.fixture(scope="module")
def interaction_file(tmp_path_factory, source):
    path = tmp_path_factory.mktemp("ckpt") / "interaction.pth"
    save_checkpoint(path, source, interaction_only=True)
    return path


@pytest.fixture(scope="module")
def sd_ckpt_file(tmp_path_factory, source):
    path = tmp_path_factory.mktemp("ckpt") / "sd-v1-tiny.ckpt"
    torch.save({"state_dict": sd_original_state(cloned(weights(source))), "global_step": 470000, "epoch": 6}, path)
    return path


@pytest.fixture(scope="module")
def meta_sd(clip_tokenizer):
    """The full SD v1.x InteractDiffusion on the meta device: names and shapes, no memory."""
    return build_model(SD_CONFIG, tokenizer=clip_tokenizer, device="meta")


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    return path


# ----------------------------------------------------------------------------- 1. formats load exactly

@pytest.mark.parametrize("old_text, training", [(False, False), (True, False), (True, True)],
                         ids=["released", "old-text-names", "training-file"])
def test_released_layout_loads_exactly(tmp_path, source, fresh, config_dict, old_text, training):
    extra = {}
    if training:
        extra = {"opt": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}},
                         "param_groups": [{"lr": 5e-5, "params": [0]}]},
                 "scheduler": {"last_epoch": 1234, "base_lrs": [5e-5]},
                 "iters": 1234,
                 "ema": {k: v.clone() for k, v in list(source.model.state_dict().items())[:3]}}
    raw = released_layout(cloned(weights(source)), config_dict, old_text=old_text, **extra)
    path = tmp_path / "interact-diffusion-tiny.pth"
    torch.save(raw, path)

    loaded = read_file(path)
    assert classify(loaded) == "interactdiffusion"
    if old_text:
        assert "transformer.text_model.embeddings.position_ids" in loaded["text_encoder"]
    if training:
        assert "iteration 1234" in describe_kind(loaded)
    else:
        assert "iteration" not in describe_kind(loaded)
    load_weights(fresh, ckpt=path, purpose="generate")
    assert_same_weights(fresh, source)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_sd_original_plus_interaction_weights_loads_exactly(tmp_path, source, fresh, interaction_file,
                                                            sd_ckpt_file, suffix):
    inter = read_file(interaction_file)
    assert classify(inter) == "interaction_weights"
    assert set(inter) == {"model", "config_dict"}
    assert inter["model"] and all(is_interaction_key(k) for k in inter["model"])
    assert len(inter["model"]) == sum(is_interaction_key(k) for k in source.model.state_dict())

    if suffix == ".ckpt":
        sd_file = sd_ckpt_file
    else:
        from safetensors.torch import save_file
        sd_file = tmp_path / "sd-v1-tiny.safetensors"
        flat = sd_original_state(weights(source))
        save_file({k: v.detach().clone().contiguous() for k, v in flat.items()}, str(sd_file))
    raw = read_file(sd_file)
    assert classify(raw) == "sd_original"
    sections = to_sections(raw)
    assert set(sections) == set(SECTIONS)
    assert set(sections["diffusion"]) == set(DIFFUSION_BUFFERS)

    load_weights(fresh, ckpt=interaction_file, sd_ckpt=sd_file, purpose="generate")
    assert_same_weights(fresh, source)


def test_own_export_round_trip(tmp_path, source, fresh, full_file):
    raw = read_file(full_file)
    assert classify(raw) == "interactdiffusion"
    assert set(raw) == set(SECTIONS) | {"config_dict"}
    assert raw["config_dict"] == OmegaConf.to_container(source.config, resolve=True)
    assert {k: len(v) for k, v in to_sections(raw).items()} == {k: len(v) for k, v in weights(source).items()}
    load_weights(fresh, ckpt=full_file, purpose="generate")
    assert_same_weights(fresh, source)

    # extra keys (training state) travel along; the config in the file rebuilds the same model
    path = tmp_path / "train.pth"
    save_checkpoint(path, source, iters=7, opt={"param_groups": []})
    raw = read_file(path)
    assert raw["iters"] == 7 and "iteration 7" in describe_kind(raw)
    rebuilt = build_model(raw["config_dict"], tokenizer=source.text_encoder.tokenizer)
    load_weights(rebuilt, ckpt=path, purpose="generate")
    assert_same_weights(rebuilt, source)


GLIGEN_DROPPED = ("position_net.linear_action.", "position_net.null_action_feature",
                  "position_net.interaction_embedding.", "position_net.position_embedding.")


def test_gligen_layout_converts(tmp_path, source, config_dict):
    sections = cloned(weights(source))
    gligen_model = {k: v for k, v in sections["model"].items() if not k.startswith(GLIGEN_DROPPED)}
    pn = sorted(k for k in gligen_model if k.startswith("position_net."))
    assert pn and all(k.startswith("position_net.linears.") for k in pn
                      if k not in ("position_net.null_positive_feature", "position_net.null_position_feature"))
    assert any(".fuser." in k for k in gligen_model)
    raw = released_layout({**sections, "model": gligen_model}, config_dict)
    path = tmp_path / "gligen.pth"
    torch.save(raw, path)
    raw = read_file(path)
    assert classify(raw) == "gligen"
    assert "GLIGEN" in describe_kind(raw)

    src = raw["model"]
    out = gligen_to_interaction(src)
    linears = [k for k in src if k.startswith("position_net.linears.")]
    assert linears
    for key in linears:
        action = key.replace("position_net.linears.", "position_net.linear_action.")
        assert torch.equal(out[key], src[key]) and torch.equal(out[action], src[key])
        assert out[action].data_ptr() != out[key].data_ptr(), "linear_action must be a copy, not an alias"
    assert torch.equal(out["position_net.null_positive_feature"], src["position_net.null_positive_feature"])
    assert torch.equal(out["position_net.null_action_feature"], src["position_net.null_positive_feature"])
    assert torch.equal(out["position_net.null_position_feature"], src["position_net.null_position_feature"])
    for key, value in src.items():  # UNet and fusers copy as they are
        if not key.startswith("position_net."):
            assert torch.equal(out[key], value), key
    expected = {k for k in source.model.state_dict() if not k.startswith(GLIGEN_FRESH_KEYS)}
    assert set(out) == expected

    # `inspect`'s check: everything but the fresh interaction/role embeddings loads strictly
    reports = check_file(raw, source)
    assert set(reports) == set(SECTIONS)
    assert all(r.ok for r in reports.values()), {n: r.lines(n) for n, r in reports.items()}


# ----------------------------------------------------------------------------- 2. full-size names and shapes

def shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def shape_diff(got: dict, want: dict) -> str:
    return (f"missing {sorted(set(want) - set(got))[:5]}, unexpected {sorted(set(got) - set(want))[:5]}, "
            f"wrong shape {[k for k in set(got) & set(want) if got[k] != want[k]][:5]}")


def test_full_size_model_matches_manifest(meta_sd, manifest):
    assert {name: len(manifest[name]) for name in SECTIONS} == \
        {"model": 975, "autoencoder": 248, "text_encoder": 196, "diffusion": 12}
    for name in SECTIONS:
        state = meta_sd.section(name).state_dict()
        assert all(v.is_meta for v in state.values()), name
        got = shapes(state)
        assert got == manifest[name], f"{name}: {shape_diff(got, manifest[name])}"


def meta_sections(manifest) -> dict:
    return {name: {k: torch.empty(shape, device="meta") for k, shape in manifest[name].items()}
            for name in SECTIONS}


@pytest.mark.parametrize("old_text", [False, True], ids=["manifest-names", "old-text-names"])
def test_manifest_file_passes_check(meta_sd, manifest, old_text):
    raw = released_layout(meta_sections(manifest), old_text=old_text)
    assert classify(raw) == "interactdiffusion"
    reports = check_file(raw, meta_sd)
    assert set(reports) == set(SECTIONS)
    assert all(r.ok for r in reports.values()), {n: r.lines(n) for n, r in reports.items()}

    # the check is not vacuous: one wrong shape is reported
    raw["model"]["time_embed.0.bias"] = torch.empty(1281, device="meta")
    report = check_file(raw, meta_sd)["model"]
    assert report.wrong_shape == [("time_embed.0.bias", (1281,), (1280,))]


def test_manifest_in_sd_original_layout_passes_check(meta_sd, manifest):
    sections = meta_sections(manifest)
    raw = {"state_dict": sd_original_state(sections), "global_step": 470000}
    assert classify(raw) == "sd_original"
    assert not any(k.startswith("model.diffusion_model.position_net.") or ".fuser." in k for k in raw["state_dict"])
    reports = check_file(raw, meta_sd)
    assert set(reports) == set(SECTIONS)
    assert all(r.ok for r in reports.values()), {n: r.lines(n) for n, r in reports.items()}

    # interaction keys are ignored, backbone keys are not
    del raw["state_dict"]["model.diffusion_model.out.2.weight"]
    assert check_file(raw, meta_sd)["model"].missing == ["out.2.weight"]


# ----------------------------------------------------------------------------- 3. wrong files

@pytest.mark.parametrize("legacy, keep", [
    (False, 0.5),
    (True, 0.5),
    (False, 0),  # empty file: torch raises a message-less EOFError
    (True, 10),  # legacy file cut inside its header: torch's weights_only unpickler raises IndexError
    (False, 1),  # one byte: UnpicklingError, which must not be mistaken for "needs --allow-pickle"
], ids=["zip-half", "legacy-half", "empty", "legacy-10-bytes", "zip-1-byte"])
def test_truncated_pth_rejected(tmp_path, fresh, legacy, keep):
    path = tmp_path / "cut.pth"
    torch.save({"model": {"w": torch.randn(512)}, "autoencoder": {"w": torch.randn(512)}}, path,
               _use_new_zipfile_serialization=not legacy)
    truncate(path, keep)
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_weights(fresh, ckpt=path, purpose="generate")
    assert str(path) in str(err.value)
    assert "allow-pickle" not in str(err.value)
    assert "weights_only" not in str(err.value)  # torch's advice to unpickle anything is not passed on


def test_truncated_safetensors_rejected(tmp_path, fresh, interaction_file):
    from safetensors.torch import save_file
    path = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.time_embed.0.bias": torch.randn(1000)}, str(path))
    truncate(path)
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_weights(fresh, ckpt=interaction_file, sd_ckpt=path, purpose="generate")
    assert str(path) in str(err.value)


class OpensAFile:
    """Pickles as a call into a module torch's weights-only unpickler blocks (`os`)."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("content", [bytes(random.Random(0).getrandbits(8) for _ in range(3000)),
                                     b"model: not a checkpoint\nbut a text file\n"], ids=["random-bytes", "text"])
def test_file_that_is_no_checkpoint_format_is_named_so(tmp_path, fresh, capsys, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_weights(fresh, ckpt=path, purpose="generate")
    msg = str(err.value)
    assert msg.startswith(f"{path}: not a torch (zip/pickle) or safetensors file")
    assert "\n" not in msg and "truncated" not in msg and "weights_only" not in msg
    rc, out, err_text = run_inspect(capsys, path)
    assert rc == 2 and err_text.count("\n") == 1 and "not a torch (zip/pickle) or safetensors file" in err_text


def test_module_cli_reports_a_text_file_in_one_line(tmp_path):
    """`python -m interact.checkpoint` (the package's __main__) end to end."""
    import subprocess
    import sys
    path = tmp_path / "notes.ckpt"
    path.write_text("not weights\n")
    proc = subprocess.run([sys.executable, "-m", "interact.checkpoint", "inspect", str(path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: {path}: not a torch (zip/pickle) or safetensors file (it starts with b'not weig')\n"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_blocked_global_is_named_and_needs_allow_pickle(tmp_path, fresh, legacy):
    """torch words this refusal "Trying to load unsupported GLOBAL posix.getcwd whose module ... is
    blocked" (another case and wording than an unknown class): still a well-formed file that
    needs --allow-pickle, not a truncated one."""
    path = tmp_path / "blocked.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "hook": OpensAFile()}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as err:
        load_weights(fresh, ckpt=path, purpose="generate")
    msg = str(err.value)
    assert str(path) in msg and "--allow-pickle" in msg and f"{os.getcwd.__module__}.getcwd" in msg
    assert "truncated" not in msg and "weights_only" not in msg and "\n" not in msg


@pytest.mark.parametrize("message, named", [
    ("Unsupported global: GLOBAL foo.Bar was not an allowed global by default.", "foo.Bar"),
    ("Trying to load unsupported GLOBAL posix.system whose module posix is blocked.", "posix.system"),
    ("unsupported global foo.Baz", "foo.Baz"),
    ("Unsupported operand 101", None),        # a damaged pickle
])
def test_refused_global_is_read_whatever_the_wording(tmp_path, message, named):
    import pickle
    from hoi.pickles import refused_names
    legacy = tmp_path / "x.pth"
    legacy.write_bytes(b"\x80\x02")
    assert refused_names(legacy, pickle.UnpicklingError(message), []) == ([named] if named else [])
    assert refused_names(legacy, RuntimeError(message), []) == []


def test_file_for_another_config_names_the_config_it_fits(meta_sd, capsys):
    """The shipped toy checkpoint with the default (SD v1.x) config: not "pass --sd_ckpt" (the
    toy file has no autoencoder section because the toy first stage has no weights), but the
    config it was built with."""
    toy = REPO_ROOT / "assets" / "toy_interactdiffusion.pth"
    with pytest.raises(CheckpointError) as err:
        load_weights(meta_sd, ckpt=toy, purpose="generate")
    first_line = str(err.value).splitlines()[0]
    assert first_line.startswith(f"{toy}: does not match the model config")
    assert "configs/toy_hoi.yaml" in first_line and "--config" in first_line
    assert "--sd_ckpt" not in str(err.value)
    rc, out, _ = run_inspect(capsys, toy, SD_CONFIG)
    assert rc == 1 and any("NOT" in line and "configs/toy_hoi.yaml" in line for line in out.splitlines())


def test_matching_configs_by_shapes(full_file, manifest):
    from interact.checkpoint import matching_configs
    assert matching_configs(read_file(full_file)) == [TINY_CONFIG]
    released = released_layout(meta_sections(manifest))
    assert SD_CONFIG in matching_configs(released)
    assert matching_configs({"weights": {"w": torch.zeros(1)}}) == []


def test_unknown_purpose_is_refused(fresh, full_file):
    with pytest.raises(ValueError, match="purpose = 'eval': must be one of generate, train"):
        load_weights(fresh, ckpt=full_file, purpose="eval")


@pytest.mark.parametrize("payload", [[torch.zeros(2)], torch.zeros(2)], ids=["list", "tensor"])
def test_non_dict_rejected(tmp_path, payload):
    path = tmp_path / "weird.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_file(path)


def test_unknown_layout_names_its_keys(tmp_path, fresh):
    path = tmp_path / "unknown.pth"
    torch.save({"weights": {"conv.weight": torch.zeros(2)}, "step_count": 5}, path)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout") as err:
        load_weights(fresh, ckpt=path, purpose="generate")
    assert "weights" in str(err.value) and "step_count" in str(err.value)


@pytest.mark.parametrize("where", ["extra-object", "dict-subclass"])
def test_arbitrary_pickle_needs_allow_pickle(tmp_path, source, fresh, full_file, where):
    raw = copy_raw(read_file(full_file))
    if where == "extra-object":
        raw["args"] = TrainingArgs()
    else:
        raw["model"] = StateDict(raw["model"])
    path = tmp_path / "trusted.pth"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="--allow-pickle") as err:
        load_weights(fresh, ckpt=path, purpose="generate")
    assert str(path) in str(err.value)
    assert len(differing(fresh, source)) == sum(len(s) for s in weights(source).values()), \
        "nothing may be loaded from a refused file"

    load_weights(fresh, ckpt=path, allow_pickle=True, purpose="generate")
    assert_same_weights(fresh, source)
    if where == "extra-object":
        assert isinstance(read_file(path, allow_pickle=True)["args"], TrainingArgs)


def test_tiny_file_into_full_size_model_lists_differences(meta_sd, full_file):
    with pytest.raises(CheckpointError, match="does not match the model config") as err:
        load_weights(meta_sd, ckpt=full_file, purpose="generate")
    msg = str(err.value)
    assert str(full_file) in msg and "inspect" in msg
    assert re.search(r"model: \d+ wrongly shaped: [\w.]+ file \[\d+(, \d+)*\] vs model \[", msg), msg
    assert re.search(r"model: \d+ missing: ", msg), msg
    assert "autoencoder" not in msg  # the first section that differs is reported


def test_full_size_file_into_tiny_model_lists_differences(tmp_path, meta_sd, fresh):
    """A full-size file (meta tensors never touch the disk: only its layout is checked) into the tiny model."""
    raw = released_layout({name: meta_sd.section(name).state_dict() for name in SECTIONS})
    reports = check_file(raw, fresh)
    assert not reports["model"].ok and reports["model"].wrong_shape and reports["model"].unexpected
    assert reports["diffusion"].ok  # same 1000-step schedule


@pytest.mark.parametrize("section, key, change", [
    ("model", "time_embed.0.bias", "reshape"),
    ("model", "position_net.linears.0.weight", "reshape"),
    ("autoencoder", "quant_conv.weight", "reshape"),
    ("text_encoder", None, "reshape"),
    ("diffusion", "betas", "reshape"),
    ("model", "out.2.weight", "remove"),
    ("model", "position_net.null_action_feature", "remove"),
    ("autoencoder", "post_quant_conv.bias", "remove"),
])
def test_wrong_tensor_rejected_by_name(tmp_path, source, fresh, full_file, section, key, change):
    raw = copy_raw(read_file(full_file))
    if key is None:
        key = sorted(raw[section])[-1]
    assert key in raw[section]
    if change == "reshape":
        raw[section][key] = torch.zeros(*raw[section][key].shape[:-1], raw[section][key].shape[-1] + 1)
    else:
        del raw[section][key]
    path = tmp_path / "edited.pth"
    torch.save(raw, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(fresh, ckpt=path, purpose="generate")
    msg = str(err.value)
    assert ("wrongly shaped" if change == "reshape" else "missing") in msg
    assert f"{section}: 1 " in msg
    shown = text_inner(key) if section == "text_encoder" else key
    assert shown in msg


def test_sd_ckpt_without_ckpt_is_plain_sd(fresh, source, sd_ckpt_file):
    """An SD file alone generates as Stable Diffusion (the paper's SD row): the backbone is the
    file's, every interaction tensor is zero, so each fuser's gate tanh(0) adds nothing."""
    sources = load_weights(fresh, sd_ckpt=sd_ckpt_file, purpose="generate")
    assert "plain Stable Diffusion" in sources.lines[0]
    for key, value in fresh.model.state_dict().items():
        if is_interaction_key(key):
            assert not value.any(), key
        else:
            assert torch.equal(value, source.model.state_dict()[key]), key
    with pytest.raises(CheckpointError, match="--ckpt"):
        load_weights(fresh, purpose="generate")


def test_interaction_weights_alone_need_sd_ckpt(fresh, interaction_file):
    with pytest.raises(CheckpointError, match="--sd_ckpt"):
        load_weights(fresh, ckpt=interaction_file, purpose="generate")


def test_missing_text_encoder_needs_text_encoder_flag(tmp_path, source, fresh, full_file):
    raw = copy_raw(read_file(full_file))
    del raw["text_encoder"]
    path = tmp_path / "no-text.pth"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="--text_encoder"):
        load_weights(fresh, ckpt=path, purpose="generate")

    before = {k: v.clone() for k, v in fresh.text_encoder.state_dict().items()}
    load_weights(fresh, ckpt=path, text_encoder_given=True, purpose="generate")
    assert [d for d in differing(fresh, source) if not d.startswith("text_encoder/")] == []
    assert all(torch.equal(v, before[k]) for k, v in fresh.text_encoder.state_dict().items())


def test_missing_path(tmp_path, fresh, full_file):
    with pytest.raises(FileNotFoundError):
        load_weights(fresh, ckpt=tmp_path / "nope.pth", purpose="generate")
    with pytest.raises(FileNotFoundError):
        load_weights(fresh, ckpt=full_file, sd_ckpt=tmp_path / "nope.safetensors", purpose="generate")
    with pytest.raises(FileNotFoundError):
        read_file(tmp_path)  # a folder is not a checkpoint file


# ----------------------------------------------------------------------------- 4. inspect CLI

def run_inspect(capsys, path, config=TINY_CONFIG):
    """`python -m interact.checkpoint inspect PATH --config CONFIG`, in-process."""
    rc = checkpoint.main(["inspect", str(path), "--config", str(config)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_inspect_good_file(capsys, source, full_file):
    rc, out, err = run_inspect(capsys, full_file)
    assert rc == 0, out + err
    assert "InteractDiffusion checkpoint" in out
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(\w+)\s+(\d+) tensors", out, re.M)}
    assert counts == {name: len(state) for name, state in weights(source).items()}
    assert "loads strictly" in out and "NOT" not in out


def test_inspect_bad_file(tmp_path, capsys, full_file):
    raw = copy_raw(read_file(full_file))
    del raw["autoencoder"]["post_quant_conv.bias"]
    raw["model"]["time_embed.0.bias_renamed"] = raw["model"].pop("time_embed.0.bias")
    raw["diffusion"]["betas"] = torch.zeros(999)
    path = tmp_path / "bad.pth"
    torch.save(raw, path)
    rc, out, err = run_inspect(capsys, path)
    assert rc == 1, out + err
    lines = out.splitlines()
    assert any("NOT" in line and "load strictly" in line for line in lines)

    def line_with(*words):
        return [line for line in lines if all(w in line for w in words)]

    assert line_with("autoencoder:", "1 missing", "post_quant_conv.bias")
    assert line_with("model:", "1 missing", "time_embed.0.bias")
    assert line_with("model:", "1 unexpected", "time_embed.0.bias_renamed")
    assert line_with("diffusion:", "1 wrongly shaped", "betas", "[999]", "[1000]")
    assert not line_with("text_encoder:")


def test_inspect_truncated_file(tmp_path, capsys, full_file):
    path = tmp_path / "cut.pth"
    path.write_bytes(full_file.read_bytes())
    truncate(path)
    rc, out, err = run_inspect(capsys, path)
    assert rc == 2
    assert err.startswith("error:") and "truncated" in err


def test_inspect_output_follows_sys_stdout(full_file):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = checkpoint.main(["inspect", str(full_file), "--config", str(TINY_CONFIG)])
    assert rc == 0
    assert "InteractDiffusion checkpoint" in buf.getvalue()


# ----------------------------------------------------------------------------- 5. atomic save

def test_atomic_save_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out" / "model.pth"
    old = {"model": {"w": torch.arange(5.0)}}
    atomic_save(old, path)  # creates the folder
    assert os.listdir(path.parent) == ["model.pth"]
    digest = file_digest(path)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"model": {"w": torch.zeros(5)}}, path)
    monkeypatch.undo()

    assert os.listdir(path.parent) == ["model.pth"], "no temporary file may be left behind"
    assert file_digest(path) == digest
    assert torch.equal(read_file(path)["model"]["w"], old["model"]["w"])

    atomic_save({"model": {"w": torch.zeros(5)}}, path)  # a successful save replaces it
    assert os.listdir(path.parent) == ["model.pth"]
    assert torch.equal(read_file(path)["model"]["w"], torch.zeros(5))


def test_file_digest(tmp_path):
    import hashlib
    path = tmp_path / "x.bin"
    path.write_bytes(b"interact" * 1000)
    assert file_digest(path) == hashlib.sha256(b"interact" * 1000).hexdigest()[:12]
    assert len(file_digest(path, 20)) == 20


@pytest.mark.parametrize("with_buffers", [True, False])
def test_meta_built_model_takes_every_tensor_from_the_files(tmp_path, source, clip_tokenizer, interaction_file,
                                                            with_buffers):
    """The pipeline builds on the meta device (no random init). Every tensor must then come
    from the files; a file without the diffusion buffers gets them recomputed from the config."""
    from ldm.models.diffusion.schedule import NoiseSchedule
    state = sd_original_state(cloned(weights(source)), with_extras=False)
    if not with_buffers:
        state = {k: v for k, v in state.items() if k not in DIFFUSION_BUFFERS}
    sd_file = tmp_path / "sd.ckpt"
    torch.save({"state_dict": state}, sd_file)
    model = build_model(TINY_CONFIG, tokenizer=clip_tokenizer, device="meta")
    load_weights(model, ckpt=interaction_file, sd_ckpt=sd_file, purpose="generate")
    assert not [n for n, t in model.state_dict().items() if t.is_meta]
    assert not model.text_encoder._embeddings().position_ids.is_meta
    for name in ("model", "autoencoder", "text_encoder"):
        assert not differing_section(model, source, name), name
    expected = source.diffusion if with_buffers else NoiseSchedule()
    for key, value in expected.state_dict().items():
        assert torch.equal(model.diffusion.state_dict()[key], value), key
    # and it runs: the text encoder's rebuilt buffers are usable
    assert model.text_encoder.encode(["a cat"]).isfinite().all()


def differing_section(a, b, name) -> list[str]:
    sa, sb = a.section(name).state_dict(), b.section(name).state_dict()
    return [k for k in sb if not torch.equal(sa[k], sb[k])]


def test_wrong_kind_of_file_as_ckpt_says_where_it_belongs(tmp_path, source, fresh, sd_ckpt_file):
    with pytest.raises(CheckpointError, match="pass it as --sd_ckpt"):
        load_weights(fresh, ckpt=sd_ckpt_file, purpose="generate")
    gligen = released_layout(cloned(weights(source)))
    gligen["model"] = {k: v for k, v in gligen["model"].items() if not k.startswith(GLIGEN_DROPPED)}
    path = tmp_path / "gligen.pth"
    torch.save(gligen, path)
    with pytest.raises(CheckpointError, match="GLIGEN checkpoint"):
        load_weights(fresh, ckpt=path, purpose="generate")


def test_released_file_with_omegaconf_config_loads_without_allow_pickle(tmp_path, source, fresh):
    """Released GLIGEN/InteractDiffusion files keep their training config as an OmegaConf object;
    reading them must not need --allow-pickle, while arbitrary objects still do."""
    config = OmegaConf.create({"model": {"target": "ldm.x", "params": {"context_dim": 768, "ch": [1, 2, 4.5]}},
                               "name": "run", "flag": True, "none": None})
    path = tmp_path / "released.pth"
    torch.save(released_layout(cloned(weights(source)), config=config), path)
    raw = read_file(path)
    assert OmegaConf.to_container(raw["config_dict"]) == OmegaConf.to_container(config)
    load_weights(fresh, ckpt=path, purpose="generate")
    assert_same_weights(fresh, source)


# ----------------------------------------------------------------------------- training initialisation

def test_training_init_from_gligen_and_sd_files(tmp_path, source, fresh, sd_ckpt_file, config_dict):
    sections = cloned(weights(source))
    gligen_model = {k: v for k, v in sections["model"].items() if not k.startswith(GLIGEN_DROPPED)}
    torch.save(released_layout({**sections, "model": gligen_model}, config_dict), tmp_path / "gligen.pth")
    fresh_embeddings = {k: v.clone() for k, v in fresh.model.state_dict().items()
                        if k.startswith(("position_net.interaction_embedding.", "position_net.position_embedding."))}
    lines, from_file = load_weights(fresh, tmp_path / "gligen.pth", sd_ckpt_file, purpose="train")
    assert from_file and any("GLIGEN" in line for line in lines)
    state, src = fresh.model.state_dict(), sections["model"]
    for key, value in src.items():
        if key in fresh_embeddings:  # GLIGEN has none: they keep the fresh initialisation
            assert torch.equal(state[key], fresh_embeddings[key])
        elif key.startswith("position_net.linear_action."):
            assert torch.equal(state[key], src[key.replace("linear_action", "linears")])
        elif key == "position_net.null_action_feature":
            assert torch.equal(state[key], src["position_net.null_positive_feature"])
        else:
            assert torch.equal(state[key], value), key
    assert not differing_sections(fresh, source, ("autoencoder", "text_encoder", "diffusion"))


def test_training_init_from_interaction_weights_keeps_a_random_backbone(fresh, source, interaction_file):
    backbone_before = {k: v.clone() for k, v in fresh.model.state_dict().items() if not is_interaction_key(k)}
    lines, from_file = load_weights(fresh, interaction_file, purpose="train")
    assert not from_file and any("random" in line for line in lines)
    state = fresh.model.state_dict()
    for key, value in source.model.state_dict().items():
        expected = value if is_interaction_key(key) else backbone_before[key]
        assert torch.equal(state[key], expected), key


def test_training_init_refuses_an_sd_file_as_ckpt(fresh, sd_ckpt_file):
    with pytest.raises(CheckpointError, match="--official_ckpt_name"):
        load_weights(fresh, sd_ckpt_file, purpose="train")


def differing_sections(a, b, names) -> list[str]:
    return [f"{n}.{k}" for n in names for k, v in a.section(n).state_dict().items()
            if not torch.equal(v, b.section(n).state_dict()[k])]


def test_box_only_ablation_is_not_mistaken_for_gligen():
    """The toy table's box-only tokenizer has no action MLP but keeps the instance and role
    embeddings that GLIGEN's lacks."""
    t = torch.zeros(1)
    box_only = {"model": {"input_blocks.0.0.weight": t, "position_net.linears.0.weight": t,
                          "position_net.interaction_embedding.emb.weight": t}}
    assert classify(box_only) == "interactdiffusion"
    gligen = {"model": {"input_blocks.0.0.weight": t, "position_net.linears.0.weight": t}}
    assert classify(gligen) == "gligen"


def test_webui_extension_file_gives_the_interaction_weights(tmp_path, source, fresh, sd_ckpt_file, capsys):
    """The WebUI extension's ext_interactdiff_v1.2.pth: the fusers and position_net as one flat dict
    (no `model` section), here in fp16; loaded beside an SD file, named by inspect."""
    flat = {k: v.half() if v.is_floating_point() else v for k, v in weights(source)["model"].items()
            if is_interaction_key(k)}
    assert any(k.startswith("input_blocks.") and ".fuser." in k for k in flat)
    path = tmp_path / "ext_interactdiff_v1.2.pth"
    torch.save(flat, path)
    raw = read_file(path)
    assert classify(raw) == "webui_extension" and set(to_sections(raw)) == {"model"}
    load_weights(fresh, ckpt=path, sd_ckpt=sd_ckpt_file, purpose="generate")
    for key, value in fresh.model.state_dict().items():
        expected = source.model.state_dict()[key]
        if is_interaction_key(key):
            torch.testing.assert_close(value, expected.half().float())
        else:
            assert torch.equal(value, expected)
    with pytest.raises(CheckpointError, match="holds the interaction weights only: pass --sd_ckpt"):
        load_weights(build_model(source.config, device="meta"), ckpt=path, purpose="generate")
    from interact.checkpoint import inspect
    assert inspect(path, source.config) == 0
    out = capsys.readouterr().out
    assert "InteractDiffusion WebUI extension file" in out and "loads strictly" in out
