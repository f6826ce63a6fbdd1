"""What a control is: one class per kind of layout input (docs/adding_a_control.md).

A control owns everything about its kind of input, so nothing else in the project tells kinds
apart:
- its record keys in a batch file and its Python items (`parse`, `item_type`), their checks
  (one line naming the record and the field);
- batching, padding and its null input (`build` -> a ControlInput, which Cond carries);
- its entries in the UNet's `controls` mapping (`entries`), read by its fusers or attention hooks,
  and how strongly it acts at each sampling step (`step_scale`);
- its overlay drawing and sidecar fields; its instances, for the multi-instance sampler;
- an auxiliary training loss (`aux_loss`);
- for a trained control: its tokenizer module (released name `position_net`) and its
  checkpoint formats (`formats`, read by the loader, `inspect` and the diffusers-folder code).

A model has one trained control (chosen by its config's `interaction.position_net.target`: the
control whose `tokenizer_class` that is) and every training-free control.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Sequence

import torch

from hoi.records import ConditionError


class ControlInput:
    """A control's batch-first tensors, as Cond carries them: moved, nulled (the unconditional
    branch), concatenated (guidance) and, for rows that lack the control, made absent. The
    default implementation is for a dataclass of tensors padded with zeros."""

    def as_kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to(self, device=None, dtype=None):
        return type(self)(**{k: v.to(device=device, dtype=dtype) for k, v in self.as_kwargs().items()})

    def null(self):
        """The same shapes with every slot masked out (the unconditional branch)."""
        return type(self)(**{k: torch.zeros_like(v) for k, v in self.as_kwargs().items()})

    @classmethod
    def cat(cls, inputs: Sequence):
        return cls(**{f.name: torch.cat([getattr(g, f.name) for g in inputs]) for f in fields(cls)})


@dataclass
class FuserInput:
    """A trained control's entry in the UNet's `controls` mapping: what its fusers read."""
    tokens: torch.Tensor                   # [B, T, D]
    scale: float = 1.0                     # scheduled sampling's factor for this step (0: skipped)
    regions: torch.Tensor | None = None    # [B, T, 4] normalised xyxy: where each token may be attended from


@dataclass
class TextEncoders:
    """The text encoder's verbs a control builds its input with (caches plug in here in training)."""
    encode: Callable[[list[str]], torch.Tensor]          # prompts -> [B, L, D] token states
    encode_pooled: Callable[[list[str]], torch.Tensor]   # phrases -> [n, D] pooled embeddings
    tokenize: Callable[[list[str]], torch.Tensor]        # -> [B, L] token ids
    eos_id: int
    dim: int                                             # D of the pooled embeddings


def phrase_table(phrases: Sequence[str], encode_phrases: Callable[[list[str]], torch.Tensor],
                 dim: int) -> tuple[dict[str, int], torch.Tensor]:
    """Each distinct phrase encoded once (`encode_phrases`: [n] -> [n, dim] pooled embeddings):
    ({phrase: row}, [n, dim] float32 on the CPU)."""
    distinct = sorted(set(phrases))
    table = encode_phrases(distinct) if distinct else torch.zeros(0, dim)
    if tuple(table.shape) != (len(distinct), dim):
        raise ValueError(f"phrase encoder returned {tuple(table.shape)}, expected {(len(distinct), dim)}")
    return {p: i for i, p in enumerate(distinct)}, table.float().cpu()


@dataclass(frozen=True)
class Format:
    """A checkpoint layout a control's weights come in (interact/checkpoint/formats.py keeps the
    one table of them): `matches(raw)` on the file's dict, the control it holds, whether the
    backbone comes with it, and the model config it generates with."""
    name: str
    description: str
    matches: Callable[[dict], bool]
    control: str | None = None
    backbone: bool = False
    config: Any = None
    folder_description: str | None = None


class Control:
    """One kind of layout input; subclasses set the class attributes and override what they do."""
    name: ClassVar[str]                  # its key in Cond.controls, the UNet's mapping and the registry
    title: ClassVar[str]                 # for messages ("InteractDiffusion", "GLIGEN", "DenseDiffusion")
    record_keys: ClassVar[tuple[str, ...]]
    record_label: ClassVar[str]          # how messages name its record keys
    slot: ClassVar[str]                  # a record holds at most one control per slot
    item_type: ClassVar[type]            # the Python items its lists hold
    trained: ClassVar[bool] = True       # it has weights (a tokenizer and fusers); plain SD ignores it
    instances: ClassVar[bool] = False    # its items are instances (the multi-instance sampler's branches)
    adopts: ClassVar[dict[str, Callable[[list], list]]] = {}  # another control's items, converted to its own
    tokenizer_class: ClassVar[type | None] = None   # a trained control's tokenizer (config: position_net.target)
    formats: ClassVar[tuple] = ()        # its checkpoint formats (interact/checkpoint/formats.py's Format)
    example: ClassVar[dict] = {}         # a batch-file record of it (docs and the tests' common path)

    def __init__(self, module: torch.nn.Module | None = None):
        self.module = module             # the tokenizer of a trained control (released name position_net)

    # -------------------------------------------------------------- records (no model needed)
    @classmethod
    def parse(cls, record: dict, where: str, base_dir: str | None = None) -> list | None:
        """Its items in a batch-file record, checked; None when the record has none of its keys."""
        raise NotImplementedError

    @classmethod
    def precheck(cls, items: list, where: str, image_size: tuple[int, int]) -> None:
        """Checks that need the image size but no model (before anything is loaded)."""

    @classmethod
    def sidecar(cls, record: dict, items: list) -> dict:
        """Its fields in a record's sidecar (what a resume compares)."""
        raise NotImplementedError

    @classmethod
    def texts(cls, record: dict, items: list) -> list[tuple[str, str]]:
        """(field, text) of the texts the text encoder reads, for the too-long warning."""
        return []

    @classmethod
    def draw(cls, draw, items: list, size: tuple[int, int], image_size: tuple[int, int]) -> None:
        """Its part of the layout overlay, on a PIL ImageDraw of `size` (width, height) over an
        image of `image_size` (height, width)."""

    # -------------------------------------------------------------- with a model
    def check(self, items: list, where: str, prompt: str = "", text: TextEncoders | None = None,
              image_size: tuple[int, int] | None = None) -> list:
        """The items as this model's control takes them (for the image's `prompt`; with `text`
        and `image_size`, also what needs the tokenizer); ConditionError naming `where`."""
        return items

    def take(self, name: str, items: list, where: str) -> list:
        """Items given for control `name` as this control's own (its own, or adopted)."""
        if name == self.name:
            return items
        if name in self.adopts:
            return self.adopts[name](items)
        owner = CONTROL_TITLES.get(name)
        raise ConditionError(f"{where}: {CONTROL_LABELS.get(name, name)} are "
                             + (f"{owner}'s input" if owner else "not an input of this model")
                             + f"; this {self.title} model takes {self.record_label}")

    def build(self, captions: Sequence[str], batch: Sequence[list], text: TextEncoders, context: torch.Tensor,
              image_size: tuple[int, int] | None, options) -> tuple[torch.Tensor, Any]:
        """(context, input): the batch's input (one list of items per caption; None when nothing
        is to be done; a trained control always has one, its null slots for empty lists), and
        the text context, which a control may change. `options`: SamplingOptions (or None)."""
        raise NotImplementedError

    def entries(self, input: Any, timesteps: torch.Tensor, scale: float) -> dict:
        """Its entries in the UNet's `controls` mapping for one forward ({} when it does nothing):
        its own name for its fusers, "attention" for a hook on the attention logits."""
        raise NotImplementedError

    def step_scale(self, step_index: int, steps: int, options) -> float:
        """How strongly it acts at sampling step `step_index` (0: not at all)."""
        return 1.0

    def branches(self, items: list) -> list[tuple[str, list]]:
        """The multi-instance sampler's branches: (caption, items) of each instance alone."""
        return []

    def prepare_training(self, **resources) -> None:
        """Before training: take what the trainer was given for the controls (e.g. role_types)."""

    def aux_loss(self, cond, batch: dict) -> torch.Tensor | None:
        """An auxiliary training loss from the (un-nulled) Cond and the data batch, or None."""
        return None

    # -------------------------------------------------------------- checkpoints (trained controls)
    def starts_from(self, control: str):
        """For training: (converter of a `model` section, names that start fresh) when this control
        can be initialised from a file of another control's weights, else None."""
        return None

    def complete_state(self, state: dict) -> dict:
        """A file's `model` section with what this model's variant adds and files may lack."""
        return state

    def variant(self, state: dict) -> dict:
        """The config switches (interaction.<key>: value) a file's tokenizer names imply."""
        return {}

    def fit_folder_state(self, state: dict) -> None:
        """Adapt, in place, a diffusers folder's `model` section read under this project's names."""


CONTROLS: dict[str, type[Control]] = {}   # name -> class, in the order records and sidecars list them
CONTROL_LABELS: dict[str, str] = {}   # name -> record_label
CONTROL_TITLES: dict[str, str] = {}   # name -> title


def register(cls: type[Control]) -> type[Control]:
    """A control module's class decorator: the registry (interact/controls/__init__.py imports the module)."""
    CONTROLS[cls.name] = cls
    CONTROL_LABELS[cls.name] = cls.record_label
    CONTROL_TITLES[cls.name] = cls.title
    return cls
