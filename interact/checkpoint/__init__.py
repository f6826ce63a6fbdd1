"""Reading, checking and writing checkpoints.

- formats: reading files safely (weights-only unpickling unless `allow_pickle`), telling the
  layouts apart (released InteractDiffusion/GLIGEN, SD v1.x originals, interaction-only
  exports), splitting them into sections, converting GLIGEN's names;
- checks: names and shapes against a model, interaction switches, which configs/*.yaml a file fits;
- loading: `load_weights(model, ckpt, sd_ckpt, purpose="generate" | "train")`;
- writing: `save_checkpoint`, `export_sections`, `pack`;
- cli: python -m interact.checkpoint inspect FILE [--config YAML] | pack FILE OUT
"""
from interact.checkpoint.checks import (SectionReport, check_file, check_variant, compare, config_hint,
                                        interaction_variant, matching_configs, with_typed_role_defaults)
from interact.checkpoint.cli import inspect, main
from interact.checkpoint.formats import (DIFFUSION_BUFFERS, GLIGEN_FRESH_KEYS, SD_PREFIXES, CheckpointError, classify,
                                         describe_kind, gligen_to_interaction, read_file, to_sections)
from interact.checkpoint.loading import WeightSources, load_weights
from interact.checkpoint.writing import export_sections, pack, save_checkpoint

__all__ = ["DIFFUSION_BUFFERS", "GLIGEN_FRESH_KEYS", "SD_PREFIXES", "CheckpointError", "SectionReport",
           "WeightSources", "check_file", "check_variant", "classify", "compare", "config_hint", "describe_kind",
           "export_sections", "gligen_to_interaction", "inspect", "interaction_variant", "load_weights", "main",
           "matching_configs", "pack", "read_file", "save_checkpoint", "to_sections", "with_typed_role_defaults"]
