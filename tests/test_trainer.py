"""interact/trainer/: configuration errors, what is trained, the LR schedule, gradient
accumulation, exact resume after a kill, two-process gloo DDP against one process, atomic
checkpoints, and that a tiny model overfits 8 images."""
from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dataset.hoi_dataset import build_dataset
from interact.model import INTERACTION_DEFAULTS, build_model, interaction_options, is_interaction_key
from interact.trainer import SampleStream, StepBatches, Trainer, check_train_options, load_training_config, lr_lambda
from helpers import REPO_ROOT, TINY_CONFIG, Squares, tiny_train_config

pytestmark = pytest.mark.filterwarnings("ignore:training the interaction control on a randomly initialised")


def make_trainer(tmp_path, run="run", dataset=None, device="auto", **train) -> Trainer:
    config = tiny_train_config(tmp_path, **train)
    return Trainer(config, tmp_path / run, dataset=dataset or Squares(), device=device, progress=False,
                   log=lambda *a: None)


def trained_state(trainer: Trainer) -> dict:
    return {n: p.detach().clone() for n, p in trainer.trained.items()}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ----------------------------------------------------------------------------- configuration

def test_unknown_and_mistyped_train_options_name_the_key():
    with pytest.raises(ValueError, match=r"train\.batchsize: unknown option"):
        check_train_options({"batchsize": 4})
    with pytest.raises(ValueError, match=r"train\.lr = 'fast': expected float"):
        check_train_options({"lr": "fast"})
    with pytest.raises(ValueError, match=r"train\.amp = 1: expected bool"):
        check_train_options({"amp": 1})
    with pytest.raises(ValueError, match=r"train\.scheduler_type = 'linear': expected one of 'constant', 'cosine'"):
        check_train_options({"scheduler_type": "linear"})
    assert check_train_options({"lr": 1})["lr"] == 1.0


def test_training_yaml_merges_model_config_and_rejects_unknown_sections(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("model_config: tiny_random.yaml\ntrain: {batch_size: 2}\nscale_factor: 0.5\n")
    config = load_training_config(good)
    assert config.train["batch_size"] == 2 and config.train["lr"] == 5e-5
    assert config.scale_factor == 0.5 and config.model.params.model_channels == 32
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_config: tiny_random.yaml\ntrainer: {batch_size: 2}\n")
    with pytest.raises(ValueError, match="unknown top-level key.*trainer"):
        load_training_config(bad)
    bad.write_text("model_config: tiny_random.yaml\ntrain: {bach_size: 2}\n")
    with pytest.raises(ValueError, match=r"train\.bach_size"):
        load_training_config(bad)


# What the README and docs promise for each training YAML under configs/ (dotted paths into the
# loaded config; train.* with TRAIN_DEFAULTS filled in, interaction.* with INTERACTION_DEFAULTS).
# Every toy row trains on the embedded default's budget (README "The paper's table in miniature",
# docs/toy_world.md "Recipe") and samples as the table does (PLMS 25 steps, guidance 3).
TOY_RECIPE = {
    "train.batch_size": 32, "train.total_iters": 5000, "train.lr": 1e-3, "train.warmup_steps": 200,
    "train.scheduler_type": "cosine", "train.enable_ema": True, "train.ema_rate": 0.999, "train.grad_clip": 1.0,
    "train.caption_drop_prob": 0.1, "train.train_whole_unet": True, "train.role_types": "toy",
    "data.format": "detector_json", "data.root": "data/toy", "data.image_size": 32, "data.in_memory": True,
    "model.params.model_channels": 48, "model.params.in_channels": 12, "model.params.context_dim": 64,
    "interaction.position_net.params.max_interactions": 4, "diffusion.params.parameterization": "v",
    "interaction.fuser_positions": True, "interaction.fuser_init": "zero_outputs",
    "sampling.sampler": "plms", "sampling.steps": 25, "sampling.guidance_scale": 3.0,
}
# The box-aware InteractDiffusion (the embedded default): grounded on every batch but the 10% null
# grounding guidance needs, subject, action and object tokens, fixed roles, the self-attention fuser.
TOY_INTERACT = {**TOY_RECIPE, "train.train_interaction": True, "train.null_grounding_prob": 0.1,
                "tokens_per_interaction": 3, "interaction.box_attention": "boxes",
                "interaction.fuser_type": "gatedSA", "interaction.role_embedding": "fixed"}
DOCUMENTED_TRAINING_YAMLS = {
    "toy_hoi.yaml": TOY_INTERACT,
    "toy_hoi_plain.yaml": {**TOY_INTERACT, "interaction.box_attention": "none"},
    "toy_boxes_only.yaml": {**TOY_INTERACT, "tokens_per_interaction": 2},
    "toy_boxes_only_plain.yaml": {**TOY_INTERACT, "tokens_per_interaction": 2, "interaction.box_attention": "none"},
    "toy_cross_attention.yaml": {**TOY_INTERACT, "interaction.fuser_type": "gatedCA"},
    "toy_typed.yaml": {**TOY_INTERACT, "interaction.role_embedding": "typed"},
    "toy_typed_cross_attention.yaml": {**TOY_INTERACT, "interaction.role_embedding": "typed",
                                       "interaction.fuser_type": "gatedCA"},
    # captions alone: every batch gets the null grounding, the control never trains
    "toy_text_only.yaml": {**TOY_RECIPE, "train.train_interaction": False, "train.null_grounding_prob": 1.0},
    # README "Training" and docs/reference.md §1-§4: SD v1.x frozen, only the tokenizer and fusers train
    "hoi_hico_text.yaml": {
        "model.params.model_channels": 320, "model.params.context_dim": 768, "scale_factor": 0.18215,
        "interaction.position_net.params.max_interactions": 30, "tokens_per_interaction": 3,
        "interaction.fuser_type": "gatedSA", "interaction.role_embedding": "fixed", "interaction.box_attention": "none",
        "train.train_whole_unet": False, "train.train_interaction": True, "train.batch_size": 4,
        "train.total_iters": 500000, "train.lr": 5e-5, "train.null_grounding_prob": 0.1, "train.caption_drop_prob": 0.5,
        "data.image_size": 512, "data.random_flip": True, "data.min_box_area": 0.001,
        "sampling.sampler": "plms", "sampling.steps": 50, "sampling.guidance_scale": 7.5,
    },
}


def shipped_training_yamls() -> list[str]:
    """The YAMLs under configs/ that main.py trains from: those with a train section or a model_config,
    or a base_config that is such a training config (a model config may extend a model config too)."""
    def trains(path) -> bool:
        config = OmegaConf.load(path)
        if {"train", "model_config"} & set(config):
            return True
        return "base_config" in config and trains(path.parent / config.base_config)
    return sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml") if trains(p))


def documented_value(config, model, dotted: str):
    section, _, key = dotted.partition(".")
    if dotted == "tokens_per_interaction":
        return model.interaction_tokenizer.num_tokens // model.interaction_tokenizer.max_interactions
    if section == "train":
        return config.train[key]
    if section == "interaction" and key in INTERACTION_DEFAULTS:
        return interaction_options(config)[key]
    return OmegaConf.select(config, dotted, throw_on_missing=True)


def test_every_training_yaml_is_documented_here():
    assert shipped_training_yamls() == sorted(DOCUMENTED_TRAINING_YAMLS)


@pytest.mark.parametrize("name", sorted(DOCUMENTED_TRAINING_YAMLS))
def test_shipped_training_yaml_validates_and_has_its_documented_values(name, tmp_path):
    config = load_training_config(REPO_ROOT / "configs" / name)
    model = build_model(config, device="meta")  # every model section's params are accepted
    found = {dotted: documented_value(config, model, dotted) for dotted in DOCUMENTED_TRAINING_YAMLS[name]}
    assert found == DOCUMENTED_TRAINING_YAMLS[name]
    # the data section passes every key and type check: only the (absent) annotation file stops it
    with pytest.raises(FileNotFoundError, match=r"data\.train\.annotations"):
        build_dataset({**config.data, "root": str(tmp_path)}, "train", seed=0)


@pytest.mark.parametrize("name", sorted(DOCUMENTED_TRAINING_YAMLS))
def test_a_misspelt_key_in_a_copy_of_a_training_yaml_fails_naming_it(name, tmp_path):
    """A copy in another folder (its model_config still found under configs/) with one bad key
    per section: loading, building the model or reading the data stops naming that key."""
    own = OmegaConf.load(REPO_ROOT / "configs" / name)

    def copy_with(dotted: str):
        bad = copy.deepcopy(own)
        OmegaConf.update(bad, dotted, 1, force_add=True)
        path = tmp_path / name
        OmegaConf.save(bad, path)
        return path

    with pytest.raises(ValueError, match=r"\btrian\b"):
        load_training_config(copy_with("trian"))
    with pytest.raises(ValueError, match=r"train\.bach_size"):
        load_training_config(copy_with("train.bach_size"))
    with pytest.raises(ValueError, match=r"\bmodel_channel\b"):
        build_model(load_training_config(copy_with("model.params.model_channel")), device="meta")
    with pytest.raises(ValueError, match=r"data\.imagesize"):
        build_dataset(load_training_config(copy_with("data.imagesize")).data, "train", seed=0)


def test_model_config_holds_only_the_model_and_base_config_varies_a_training_config(tmp_path):
    """A training config's train options come from itself, an explicit base_config, or
    TrainOptions' defaults: a model_config that brought train or data options is refused."""
    stage = tmp_path / "stage.yaml"
    stage.write_text("model_config: hoi_hico_text.yaml\ntrain: {batch_size: 2}\n")
    with pytest.raises(ValueError, match=r"stage\.yaml: model_config = 'hoi_hico_text\.yaml' has a 'train' section, "
                                         r"but a model config holds only"):
        load_training_config(stage)
    variant = tmp_path / "variant.yaml"
    variant.write_text("base_config: toy_hoi.yaml\ntrain: {lr: 0.002}\ninteraction: {fuser_type: gatedCA}\n")
    config, toy = load_training_config(variant), load_training_config(REPO_ROOT / "configs" / "toy_hoi.yaml")
    assert config.train["lr"] == 0.002 and config.train["batch_size"] == toy.train["batch_size"] == 32
    assert config.interaction.fuser_type == "gatedCA" and config.data == toy.data
    both = tmp_path / "both.yaml"
    both.write_text("base_config: toy_hoi.yaml\nmodel_config: toy_model.yaml\n")
    with pytest.raises(ValueError, match="give model_config or base_config, not both"):
        load_training_config(both)
    missing = tmp_path / "missing.yaml"
    missing.write_text("base_config: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="base_config = 'nowhere.yaml': not found"):
        load_training_config(missing)


def config_chain(path: Path) -> list[Path]:
    """The files a config is built from, itself first."""
    own = OmegaConf.load(path)
    base = own.get("base_config") or own.get("model_config")
    return [path] + (config_chain(REPO_ROOT / "configs" / base) if base else [])


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("toy_*.yaml")), ids=lambda p: p.name)
def test_toy_configs_take_unset_train_options_from_the_schema(path):
    """No toy config is built on the fine-tune's (SD) files; every train option that no toy file
    of its chain sets is TrainOptions' default."""
    from interact.trainer import TrainOptions
    chain = config_chain(path)
    assert all(p.name.startswith("toy_") for p in chain), chain
    if path.name == "toy_model.yaml":
        assert not {"train", "data"} & set(OmegaConf.load(path))
        return
    config = load_training_config(path)
    set_somewhere = {k for p in chain for k in OmegaConf.load(p).get("train", {})}
    defaults = TrainOptions()
    for key in config.train:
        if key not in set_somewhere:
            assert config.train[key] == getattr(defaults, key), key


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_config: tiny_random.yaml\ntrain:\n  batch_size: [2\n  lr: 0.1\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML at line \d+"):
        load_training_config(broken)


def test_interaction_section_is_checked_against_its_schema():
    from interact.model import InteractionOptions, interaction_options, interaction_switches, load_config
    config = load_config(TINY_CONFIG)
    assert interaction_options(config)["fuser_init"] == InteractionOptions().fuser_init == "zero_gates"
    assert interaction_switches() == {"fuser_type": ("gatedSA", "gatedCA"), "role_embedding": ("fixed", "typed"),
                                      "box_attention": ("none", "boxes")}
    with pytest.raises(ValueError, match=r"interaction\.fuser: unknown option"):
        load_config(OmegaConf.merge(config, {"interaction": {"fuser": "gatedCA"}}))
    with pytest.raises(ValueError, match=r"interaction\.fuser_positions = 'yes': expected bool"):
        load_config(OmegaConf.merge(config, {"interaction": {"fuser_positions": "yes"}}))


@pytest.mark.parametrize("kind", ["constant", "cosine"])
def test_lr_schedule_closed_form(kind):
    f = lr_lambda(warmup=4, total=14, kind=kind)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    import math
    for step in (4, 6, 9, 14, 20):
        expected = 1.0 if kind == "constant" else 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 4) / 10)))
        assert f(step) == pytest.approx(expected)


# ----------------------------------------------------------------------------- data order

def test_sample_stream_is_a_permutation_per_epoch_and_independent_of_where_it_starts():
    stream = SampleStream(Squares(5), seed=1)
    epochs = [[stream.index(p) for p in range(e * 5, e * 5 + 5)] for e in range(3)]
    for e, items in enumerate(epochs):
        assert {i for _, i in items} == set(range(5)) and {ep for ep, _ in items} == {e}
    assert [i for _, i in epochs[0]] != [i for _, i in epochs[1]]  # reshuffled
    fresh = SampleStream(Squares(5), seed=1)
    assert fresh.index(12) == epochs[2][2]


def test_step_batches_split_the_global_stream_between_ranks():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]
    one = take(StepBatches(3, batch_size=4, world=1, rank=0, accumulation=2), 2)
    r0 = take(StepBatches(3, batch_size=2, world=2, rank=0, accumulation=2), 2)
    r1 = take(StepBatches(3, batch_size=2, world=2, rank=1, accumulation=2), 2)
    assert one[0] == r0[0] + r1[0] and one[1] == r0[1] + r1[1]
    assert one[0][0] == 3 * 8  # iteration 3 starts after 3 steps of 8 samples


# ----------------------------------------------------------------------------- what is trained

def test_only_interaction_parameters_train_by_default(tmp_path):
    t = make_trainer(tmp_path, total_iters=1)
    from interact.trainer import TrainOptions
    # `options` are the train options (typed); `optimizer` is the optimiser: no `opt` meaning either
    assert isinstance(t.options, TrainOptions) and t.options.batch_size == 4 and not hasattr(t, "opt")
    assert t.trained and all(is_interaction_key(n) for n in t.trained)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.run()
    after = dict(t.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("model.") and is_interaction_key(n[len("model."):]) for n in changed)
    # The gates start at 0, so after one step the fusers' gates must have moved.
    assert any(".fuser.alpha" in n for n in changed)


def test_fix_interaction_embedding_keeps_it(tmp_path):
    t = make_trainer(tmp_path, total_iters=1, fix_interaction_embedding=True)
    assert not any("interaction_embedding" in n for n in t.trained)
    emb = t.model.interaction_tokenizer.interaction_embedding.emb.weight.detach().clone()
    t.run()
    assert torch.equal(emb, t.model.interaction_tokenizer.interaction_embedding.emb.weight)


def test_gradient_accumulation_equals_the_doubled_batch(tmp_path):
    big = make_trainer(tmp_path, "big", batch_size=4, grad_accumulation_step=1, total_iters=2)
    big.run()
    accumulated = make_trainer(tmp_path, "accumulated", batch_size=2, grad_accumulation_step=2, total_iters=2)
    accumulated.run()
    assert max_difference(trained_state(big), trained_state(accumulated)) < 1e-5
    assert max_difference(trained_state(big), trained_state(make_trainer(tmp_path, "fresh"))) > 1e-4


# ----------------------------------------------------------------------------- resume and checkpoints

class Killed(Exception):
    pass


def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path):
    straight = make_trainer(tmp_path, "straight", total_iters=6, enable_ema=True, ema_rate=0.9)
    straight.run()
    reference = trained_state(straight)

    victim = make_trainer(tmp_path, "killed", total_iters=6, enable_ema=True, ema_rate=0.9)
    real_step = victim.step

    def step_then_die(batches):
        stats = real_step(batches)
        if victim.iters == 3:  # after the checkpoint at 2: iteration 3's work is lost
            raise Killed
        return stats
    victim.step = step_then_die
    with pytest.raises(Killed):
        victim.run()
    saved = torch.load(victim.paths.latest, weights_only=False)
    assert saved["iters"] == 2

    resumed = make_trainer(tmp_path, "killed", total_iters=6, enable_ema=True, ema_rate=0.9)
    assert resumed.resume() and resumed.iters == 2
    resumed.run()
    assert resumed.iters == 6
    assert max_difference(trained_state(resumed), reference) < 1e-6
    assert max_difference(resumed.ema.shadow, straight.ema.shadow) < 1e-6
    # The run differs from a fresh start: the comparison is not vacuous.
    assert max_difference(reference, trained_state(make_trainer(tmp_path, "fresh"))) > 1e-3


def test_interrupted_checkpoint_write_leaves_the_previous_one_readable(tmp_path, monkeypatch):
    t = make_trainer(tmp_path, total_iters=2, checkpoint_every=1)
    t.run()
    good = torch.load(t.paths.latest, weights_only=False)
    assert good["iters"] == 2

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", torn_save)
    t.iters = 3
    with pytest.raises(OSError, match="disk full"):
        t.save()
    monkeypatch.undo()
    assert torch.load(t.paths.latest, weights_only=False)["iters"] == 2
    assert not list(t.paths.checkpoints.glob(".*tmp*"))


def test_a_damaged_latest_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    from interact.checkpoint import CheckpointError
    straight = make_trainer(tmp_path, total_iters=6, checkpoint_every=1, save_every_iters=2)
    straight.run()
    paths = straight.paths
    assert [p.name for p in paths.resume_candidates()] == [
        "latest.pth", "checkpoint_00000006.pth", "checkpoint_00000004.pth", "checkpoint_00000002.pth"]
    for damaged in (paths.latest, paths.kept(6)):   # cut short, as by a full disk
        damaged.write_bytes(damaged.read_bytes()[:200])
    lines = []
    config = tiny_train_config(tmp_path, total_iters=6, checkpoint_every=1, save_every_iters=2)
    resumed = Trainer(config, paths.root, dataset=Squares(), progress=False, log=lines.append)
    assert resumed.resume() and resumed.iters == 4
    assert any("skipped" in line and "latest.pth" in line for line in lines)
    assert any("falling back to checkpoint_00000004.pth" in line for line in lines)
    resumed.run()   # and the run goes on to the uninterrupted run's weights
    assert max_difference(trained_state(resumed), trained_state(straight)) < 1e-6

    for kept in paths.checkpoints.glob("*.pth"):
        kept.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume from"):
        make_trainer(tmp_path, total_iters=6).resume()


def test_a_killed_writes_temporaries_are_removed_at_start(tmp_path):
    import subprocess
    import sys
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    checkpoints, previews = tmp_path / "run" / "checkpoints", tmp_path / "run" / "previews"
    checkpoints.mkdir(parents=True)
    previews.mkdir()
    stale = checkpoints / f".latest.pth.tmp-{finished.pid}"        # its process is gone
    stale_preview = previews / f".iter_00000001.png.tmp-{finished.pid}"
    live = checkpoints / f".latest.pth.tmp-{os.getppid()}"         # a process still writing it
    for path in (stale, stale_preview, live):
        path.write_bytes(b"")
    lines = []
    config = tiny_train_config(tmp_path, total_iters=1)
    Trainer(config, tmp_path / "run", dataset=Squares(), progress=False, log=lines.append).run()
    assert not stale.exists() and not stale_preview.exists() and live.exists()
    assert any(stale.name in line and "killed" in line for line in lines)
    assert any(stale_preview.name in line and "killed" in line for line in lines)


def test_final_export_loads_for_inference(tmp_path):
    from interact.pipeline import InteractDiffusionPipeline
    t = make_trainer(tmp_path, total_iters=2, train_whole_unet=True)
    final = t.run()
    pipe = InteractDiffusionPipeline.from_checkpoint(final, config=t.config)
    for name, p in t.model.unet.named_parameters():
        assert torch.equal(p.detach(), pipe.model.unet.get_parameter(name).detach()), name


# ----------------------------------------------------------------------------- overfitting

@pytest.mark.slow
def test_tiny_model_overfits_eight_images(tmp_path):
    config = tiny_train_config(tmp_path, batch_size=8, total_iters=100, lr=3e-3, warmup_steps=10,
                               train_whole_unet=True, caption_drop_prob=0.0, null_grounding_prob=0.0,
                               checkpoint_every=1000)
    config.model.params.attention_resolutions = [2]  # one attention level: 3x faster, still a full UNet
    t = Trainer(config, tmp_path / "overfit", dataset=Squares(), progress=False, log=lambda *a: None)
    losses = []
    real_step = t.step

    def record(batches):
        stats = real_step(batches)
        losses.append(stats["loss"])
        return stats
    t.step = record
    t.run()
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert last <= 0.5 * first, (first, last)


# ----------------------------------------------------------------------------- DDP

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, tmp: str, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    t = make_trainer(Path(tmp), "ddp", batch_size=2, total_iters=2, device="cpu")
    t.run()
    if rank == 0:
        torch.save(trained_state(t), out)
    assert not torch.distributed.is_initialized()  # run() tears its process group down


@pytest.mark.slow
def test_two_process_gloo_ddp_equals_one_process_with_the_doubled_batch(tmp_path):
    import torch.multiprocessing as mp
    out = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path), str(out)), nprocs=2, start_method="spawn")
    ddp_state = torch.load(out)
    single = make_trainer(tmp_path, "single", batch_size=4, total_iters=2)
    single.run()
    assert max_difference(ddp_state, trained_state(single)) < 1e-5


# ----------------------------------------------------------------------------- logging and previews

def test_tensorboard_gets_loss_lr_grad_norm_and_throughput(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    t = make_trainer(tmp_path, total_iters=3, log_every=1, warmup_steps=4)
    t.run()
    events = EventAccumulator(str(t.paths.root / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"} <= tags
    lr = [e.value for e in events.Scalars("train/lr")]
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3]
    assert lr == pytest.approx([1e-3 * f for f in (0.5, 0.75, 1.0)])  # warmup after steps 1, 2, 3
    assert all(e.value > 0 for e in events.Scalars("train/samples_per_s"))


def test_preview_grid_shows_generated_and_real_images_with_layouts(tmp_path):
    from PIL import Image
    t = make_trainer(tmp_path, total_iters=1, preview_count=3)
    path = t.preview()
    grid = Image.open(path)
    # Each 16 px tile is drawn at >= 256 px for legible labels; 2 columns (generated, real), 3 rows.
    assert grid.size == (2 * 256, 3 * 256)
    real_tile = grid.crop((256, 0, 512, 256))
    # The real image's subject rectangle is red: the tile must contain it (and the layout colours).
    colours = {c for _, c in real_tile.getcolors(1 << 16)}
    assert (255, 63, 63) in colours or any(r > 240 and g < 80 and b < 80 for r, g, b in colours)
    assert t.model.unet.training  # back in training mode after sampling


def test_ema_decay_warms_up_and_averages_as_the_closed_form():
    from interact.trainer import EMA
    p = {"w": torch.nn.Parameter(torch.zeros(3))}
    ema = EMA(p, rate=0.99)
    expected = torch.zeros(3)
    for n in range(1000):
        with torch.no_grad():
            p["w"].fill_(float(n + 1))
        decay = min(0.99, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * (n + 1)
        ema.update(p)
    assert ema.decay() == 0.99 and ema.updates == 1000
    assert torch.allclose(ema.shadow["w"], expected.expand(3), rtol=1e-5)
    # The warm-up: after the first update the average is already 90% the current weights.
    fresh = EMA({"w": torch.nn.Parameter(torch.zeros(1))}, rate=0.9999)
    fresh.update({"w": torch.nn.Parameter(torch.ones(1))})
    assert fresh.shadow["w"].item() == pytest.approx(0.9)


# ----------------------------------------------------------------------------- resume edge cases

def test_an_unreadable_sample_is_replaced_by_the_next_position():
    from hoi.records import DataError

    class OneBad(Squares):
        def get(self, index, epoch):
            if index == 2:
                raise DataError("img2: cannot read image img2.png")
            return super().get(index, epoch)
    stream = SampleStream(OneBad(5), seed=1)
    position = next(p for p in range(5) if stream.index(p)[1] == 2)
    with pytest.warns(UserWarning, match="img2: cannot read image"):
        sample = stream[position]
    assert sample.key == f"img{stream.index(position + 1)[1]}"


def test_resume_takes_the_new_lr_and_refuses_a_missing_backbone(tmp_path):
    make_trainer(tmp_path, total_iters=2, warmup_steps=0).run()
    again = make_trainer(tmp_path, total_iters=4, warmup_steps=0, lr=3e-4)
    assert again.resume() and again.iters == 2
    assert [g["lr"] for g in again.optimizer.param_groups] == [3e-4]
    again.run()
    assert again.scheduler.get_last_lr() == [3e-4]

    latest = again.paths.latest
    raw = torch.load(latest, weights_only=True)
    raw["backbone_from_file"] = True  # as if the run had been started with --official_ckpt_name
    torch.save(raw, latest)
    with pytest.raises(RuntimeError, match="--official_ckpt_name"):
        make_trainer(tmp_path, total_iters=6).resume()


def test_frozen_interaction_control(tmp_path):
    """train_interaction false leaves position_net and fusers untouched and trains the rest."""
    frozen = make_trainer(tmp_path, run="frozen", train_whole_unet=True, train_interaction=False, total_iters=2)
    before = {n: p.detach().clone() for n, p in frozen.model.unet.named_parameters()}
    frozen.run()
    after = dict(frozen.model.unet.named_parameters())
    from interact.model import is_interaction_key
    assert all(torch.equal(before[n], after[n]) == is_interaction_key(n) for n in before)
    with pytest.raises(ValueError, match="nothing to train"):
        check_train_options({"train_interaction": False})


def test_cached_data_and_captions_train_exactly_as_the_uncached_path(tmp_path):
    """The toy world's fast path (images decoded once into memory, each distinct caption encoded
    once) takes the same steps as decoding and encoding every time."""
    from dataset.hoi_dataset import build_dataset
    from dataset.toy import generate
    root = generate(tmp_path / "toy", train=10, test=0, size=32, progress=False)
    data = {"format": "detector_json", "root": str(root), "image_size": 16, "random_flip": True,
            "train": {"annotations": "annotations/trainval_hico.json", "images": "images/train"}}
    plain, cached = build_dataset(data, "train", seed=3), build_dataset({**data, "in_memory": True}, "train", seed=3)
    assert cached.images is not None and plain.images is None
    for epoch in (0, 1):
        for i in range(len(plain)):
            a, b = plain.get(i, epoch), cached.get(i, epoch)
            assert torch.equal(a.image, b.image) and a.caption == b.caption and a.interactions == b.interactions
    runs = {}
    for name, dataset, cache in (("plain", plain, 0), ("cached", cached, 1000)):
        trainer = make_trainer(tmp_path, name, dataset=dataset, total_iters=3, caption_cache_size=cache)
        trainer.run()
        runs[name] = trained_state(trainer)
        assert (len(trainer.captions) > 0) == (cache > 0)
    assert max_difference(runs["plain"], runs["cached"]) < 1e-6
    assert max_difference(runs["plain"], trained_state(make_trainer(tmp_path, "fresh"))) > 1e-4


def test_caption_cache_keeps_at_most_its_size():
    from interact.phrase_cache import CaptionContextCache

    class Encoder:
        calls: list = []

        def encode(self, captions):
            self.calls.append(list(captions))
            return torch.stack([torch.full((2, 3), float(len(c))) for c in captions])

    enc = Encoder()
    cache = CaptionContextCache(enc, max_entries=2)
    out = cache(["a", "bb", "a"])
    assert out[:, 0, 0].tolist() == [1.0, 2.0, 1.0] and enc.calls == [["a", "bb"]]
    cache(["ccc"])                        # evicts the oldest ("a")
    assert set(cache.table) == {"bb", "ccc"}
    cache(["bb", "a"])
    assert enc.calls[-1] == ["a"]         # "bb" came from the cache
    assert CaptionContextCache(enc, 0)(["dddd"])[0, 0, 0] == 4.0 and len(CaptionContextCache(enc, 0)) == 0


def test_phase_times_cover_every_part_of_a_step_and_change_nothing(tmp_path):
    """scripts/bench_train.py's breakdown: with phase_times set, a step records each phase, and
    takes exactly the step it takes without them."""
    timed, plain = make_trainer(tmp_path, "timed", enable_ema=True), make_trainer(tmp_path, "plain", enable_ema=True)
    timed.phase_times = {}
    for trainer in (timed, plain):
        batches = trainer.batches()
        for _ in range(2):
            trainer.step(batches)
    assert set(timed.phase_times) == {"data", "first stage", "text", "forward", "backward", "optimiser", "ema"}
    assert all(v > 0 for v in timed.phase_times.values())
    assert max_difference(trained_state(timed), trained_state(plain)) == 0.0
