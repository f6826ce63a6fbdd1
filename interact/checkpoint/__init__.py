"""Reading, checking and writing checkpoints.

- formats: reading files safely (weights-only unpickling unless `allow_pickle`), telling the
  layouts apart by one table (formats(): LoRA, each control's formats, SD v1.x), splitting them
  into sections;
- checks: names and shapes against a model, interaction switches, which configs/*.yaml a file fits;
- loading: `load_weights(model, ckpt, sd_ckpt, purpose="generate" | "train")`;
- writing: `save_checkpoint`, `export_sections`, `pack`;
- cli: python -m interact.checkpoint inspect FILE [--config YAML] | pack FILE OUT
"""
from interact.checkpoint.checks import (SectionReport, check_file, check_variant, compare, config_hint,
                                        interaction_variant, matching_configs)
from interact.checkpoint.cli import inspect, main
from interact.checkpoint.formats import (DIFFUSION_BUFFERS, SD_PREFIXES, CheckpointError, classify, describe_kind,
                                         formats, read_file, to_sections)
from interact.checkpoint.loading import WeightSources, load_weights
from interact.checkpoint.writing import export_sections, pack, save_checkpoint

__all__ = ["DIFFUSION_BUFFERS", "SD_PREFIXES", "CheckpointError", "SectionReport", "WeightSources",
           "check_file", "check_variant", "classify", "compare", "config_hint", "describe_kind", "export_sections",
           "formats", "inspect", "interaction_variant", "load_weights", "main", "matching_configs", "pack", "read_file",
           "save_checkpoint", "to_sections"]
