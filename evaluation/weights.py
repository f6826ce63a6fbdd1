"""Reading a feature extractor's weights file, with errors of one line that name the file and
say what is wrong (not a torch file, not a state dict, missing / unexpected / misshaped tensors)
instead of torch's multi-line reports."""
from __future__ import annotations

from pathlib import Path

import torch

from hoi.pickles import RefusedPickle, UnreadablePickle, load_torch


class WeightsError(RuntimeError):
    """A weights file that cannot be used; the message is one line naming the file."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's type and whole message on one line, shortened (torch's load_state_dict
    report spreads its key lists over several lines)."""
    text = " ".join(line.strip() for line in f"{type(err).__name__}: {err}".splitlines() if line.strip())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_torch_file(path: str | Path, what: str):
    """torch.load(path) of tensors and plain data only (never arbitrary code); WeightsError
    "{path} is not {what}: ..." when the file is no torch file or asks for other objects."""
    try:
        return load_torch(path)
    except RefusedPickle as err:
        raise WeightsError(f"{path} is not {what}: refused: it {err}; a weights file holds tensors only") from None
    except UnreadablePickle as err:
        raise WeightsError(f"{path} is not {what}: {err}") from None


def load_state_dict_file(path: str | Path, what: str) -> dict:
    """The state dict in the torch file `path` (a {"state_dict": {...}} checkpoint is unwrapped).
    WeightsError "{path} is not {what}: ..." when the file is no torch file or holds no dict of
    tensors."""
    state = read_torch_file(path, what)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} is not {what}: it holds a {type(state).__name__}, not a state dict")
    not_tensors = [k for k, v in state.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise WeightsError(f"{path} is not {what}: entry {not_tensors[0]!r} is a "
                           f"{type(state[not_tensors[0]]).__name__}, not a tensor")
    return state


def _mismatch(model: torch.nn.Module, state: dict) -> str:
    """Why `state` does not fit `model`: counts and a first example of missing, unexpected and
    misshaped tensors."""
    # batch norm's num_batches_tracked may be absent (older saves): torch fills it in
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    misshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its {len(own)} tensors missing (e.g. {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
    if misshaped:
        k = misshaped[0]
        parts.append(f"{len(misshaped)} of another shape (e.g. {k!r} {tuple(state[k].shape)}, "
                     f"expected {tuple(own[k].shape)})")
    return "; ".join(parts) or "the tensors do not load"


def load_strictly(model: torch.nn.Module, state: dict, path: str | Path, what: str) -> None:
    """model.load_state_dict(state, strict=True); WeightsError "{path} is not {what}: ..." naming
    the first missing, unexpected or misshaped tensor when it does not fit."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise WeightsError(f"{path} is not {what}: {_mismatch(model, state)}") from None
