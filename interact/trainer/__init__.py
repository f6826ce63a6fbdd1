"""Training InteractDiffusion: only the interaction tokenizer and the fusers learn (optionally the whole
UNet, e.g. for the toy world trained from scratch); the autoencoder and text encoder are frozen.

One process or torchrun (NCCL on CUDA, gloo on CPU). Exact resume: every random draw of
a step (timesteps, noise, caption and grounding drops) comes from a generator seeded by
(seed, iteration) and is drawn for the step's whole global batch, each micro-batch of each
rank taking its rows; the data order is a per-epoch permutation of a global sample stream. A run
killed at any moment and restarted from its last checkpoint therefore repeats exactly the
steps the uninterrupted run would have taken (bit for bit on CPU; on CUDA with
train.deterministic, since GPU kernels otherwise differ in the last bits from run to run), and N ranks with batch b and A accumulation
micro-steps take the same step as one process with batch N*A*b.

The package, one concern a module: options (the `train:` section, the training YAML),
processes (torchrun, devices, precision), data_order (sample stream, micro-batches), denoiser
(the forward DDP wraps), optimisation (EMA, lr schedule), checkpointing (run files, RNG state,
which checkpoint a restart reads), build (the starting model, the phrase cache), preview and
loop (the Trainer).
"""
from interact.trainer.build import build_training_model, dataset_phrases, open_phrase_cache
from interact.trainer.checkpointing import ResumeError, RunPaths
from interact.trainer.data_order import SampleStream, StepBatches, keyed_generator
from interact.trainer.denoiser import Denoiser
from interact.trainer.loop import Trainer
from interact.trainer.optimisation import EMA, lr_lambda
from interact.trainer.options import TOP_LEVEL_KEYS, TrainOptions, check_train_options, load_training_config
from interact.trainer.processes import Distributed, init_distributed, resolve_amp

__all__ = ["EMA", "Denoiser", "Distributed", "ResumeError", "RunPaths", "SampleStream", "StepBatches", "TOP_LEVEL_KEYS",
           "TrainOptions", "Trainer", "build_training_model", "check_train_options", "dataset_phrases",
           "init_distributed", "keyed_generator", "load_training_config", "lr_lambda", "open_phrase_cache",
           "resolve_amp"]
