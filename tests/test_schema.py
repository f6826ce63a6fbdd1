"""hoi.schema: option schemas check config values strictly and generate command-line flags."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest
from omegaconf import OmegaConf

from hoi.schema import add_flags, check_options, defaults, given_flags, option


@dataclass
class Example:
    steps: int = option(50, "sampling steps", check=lambda v: v >= 1, rule=">= 1", flags=("--ddim_steps",))
    scale: float = option(7.5, "guidance scale")
    sampler: Literal["plms", "ddim"] = option("plms", "sampler")
    half: bool = option(False, "fp16 on CUDA")
    name: str = option("", "a name")
    sizes: list = option([1, 2], "set in files only")
    hidden: int = option(3, "not a flag", cli=False)


def test_defaults_and_overrides_merge_typed():
    out = check_options(Example, {"steps": 20, "scale": 3}, "sampling")
    assert out.steps == 20 and out.scale == 3.0 and isinstance(out.scale, float)
    assert out.sampler == "plms" and out.sizes == [1, 2]
    assert defaults(Example)["scale"] == 7.5
    with pytest.raises(Exception):  # the result stays typed: OmegaConf refuses a str for an int later
        out.steps = "many"


@pytest.mark.parametrize("values, message", [
    ({"stpes": 20}, "sampling.stpes: unknown option; known: half, hidden, name, sampler, scale, sizes, steps"),
    ({"steps": "20"}, "sampling.steps = '20': expected int"),      # OmegaConf alone would convert this
    ({"steps": True}, "sampling.steps = True: expected int"),
    ({"half": "true"}, "sampling.half = 'true': expected bool"),
    ({"scale": float("nan")}, "sampling.scale = nan: must be a finite number"),
    ({"sampler": "euler"}, "sampling.sampler = 'euler': expected one of 'plms', 'ddim'"),
    ({"steps": 0}, "sampling.steps = 0: out of range (must be >= 1)"),
    ({"sizes": 3}, "sampling.sizes = 3: expected list"),
])
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ValueError) as err:
        check_options(Example, values, "sampling")
    assert str(err.value) == message


def test_flags_come_from_the_schema():
    parser = argparse.ArgumentParser()
    names = add_flags(parser, Example)
    assert names == ["steps", "scale", "sampler", "half", "name"]  # lists and cli=False stay in files
    args = parser.parse_args(["--ddim_steps", "20", "--half", "--sampler", "ddim"])
    assert given_flags(args, names) == {"steps": 20, "sampler": "ddim", "half": True}
    assert parser.parse_args(["--half", "false"]).half is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--sampler", "euler"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--scale", "big"])
    help_text = parser.format_help()
    assert "sampling steps (default: 50)" in help_text and "--hidden" not in help_text


def test_config_node_is_accepted_as_input():
    node = OmegaConf.create({"steps": 10})
    assert check_options(Example, node, "s").steps == 10
