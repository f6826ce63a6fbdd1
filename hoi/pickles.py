"""Reading pickled files without letting them run code: the one rule every reader of the project
follows (checkpoints, LoRA files, training data in torch files, layouts pickles, phrase caches,
feature-extractor weights).

A pickle can name any Python callable and have it called while loading (`__reduce__`), so a
hostile file runs code as soon as `pickle.load` or `torch.load(weights_only=False)` reads it.
Here:
- torch files load with torch's weights-only unpickler, which rebuilds tensors and plain data
  only, plus the classes a reader allows by name (OmegaConf containers in released
  checkpoints, PIL images in the reference trainer's data files);
- plain pickles (layouts) load with `PlainUnpickler`, which rebuilds containers, numbers,
  strings and numpy arrays only;
- a file that needs anything else is refused with `RefusedPickle`, naming what it asked for,
  unless the user passes `--allow-pickle` for a file they trust.
Messages never repeat torch's advice to pass `weights_only=False`.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import re
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format


class RefusedPickle(ValueError):
    """A well-formed pickle that asks for Python objects this reader does not rebuild."""

    def __init__(self, names: list[str]):
        self.names = names
        shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "") if names else "an object"
        super().__init__(f"holds a Python object beyond tensors and plain data ({shown}), which is not unpickled "
                         f"(unpickling it could run code)")


class UnreadablePickle(ValueError):
    """A file that is not a readable pickle of this kind (damaged, cut short, another format)."""


TORCH_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


def is_torch_legacy(head: bytes) -> bool:
    """Whether a file starting with `head` is torch.save's legacy format: its first pickle is
    torch's magic number alone (whatever protocol wrote it)."""
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(head)):
            if opcode.name in ("PROTO", "FRAME"):
                continue
            return opcode.name in ("LONG1", "LONG4", "LONG") and arg == TORCH_MAGIC_NUMBER
    except Exception:  # noqa: BLE001 - cut short or not a pickle
        return False
    return False


def pickle_globals(data: bytes, limit: int = 20) -> list[str]:
    """The "module.name" globals a pickle asks for, found by reading its opcodes (nothing is run).
    STACK_GLOBAL's operands are the two strings pushed before it."""
    names: list[str] = []
    strings: list[str] = []
    memo: dict[int, str] = {}
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings.append(arg)
            elif opcode.name in ("MEMOIZE",) and strings:
                memo[len(memo)] = strings[-1]
            elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                memo[int(arg)] = strings[-1]
            elif opcode.name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
                strings.append(memo[int(arg)])
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            if len(names) >= limit:
                break
    except Exception:  # noqa: BLE001 - a damaged pickle: report what was found before the damage
        pass
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- torch files

# torch's weights-only unpickler names a refused class as "GLOBAL module.Name" (the wording and
# its case vary between releases), or says it cannot build/call an object.
_GLOBAL_IN_MESSAGE = re.compile(r"\bglobal\s+([\w.]+)", re.IGNORECASE)
_OBJECT_IN_MESSAGE = re.compile(r"(?:can only (?:create|build)\b.*?\bbut got|reduce for unrecognized function)\s+(.+)",
                                re.IGNORECASE)


def refused_names(path: Path, err: Exception, allowed: list) -> list[str]:
    """What a weights-only load refused in a well-formed file ("module.Name"), or [] when `err`
    means the file is damaged. Read from the file's own pickle where torch can list it (zip
    files), else from the error message."""
    import torch
    if not isinstance(err, pickle.UnpicklingError):
        return []
    with open(path, "rb") as f:
        head = f.read(4)
    if head == ZIP_MAGIC:
        try:
            with torch.serialization.safe_globals(allowed):
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - a damaged archive: fall back to the message
            unsafe = []
        if unsafe:
            return list(unsafe)
    text = str(err)
    found = _GLOBAL_IN_MESSAGE.search(text) or _OBJECT_IN_MESSAGE.search(text)
    return [found.group(1).strip().rstrip(".")] if found else []


def failure_reason(err: Exception) -> str:
    """torch's reason for a failed load in one short line, without its advice to load with
    weights_only=False (the advice that matters here is --allow-pickle, and only for a trusted,
    intact file)."""
    text = str(err)
    inner = re.search(r"WeightsUnpickler error:\s*(.*)", text, re.DOTALL)
    lines = [line.strip() for line in (inner.group(1) if inner else text).splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and not line.startswith("Check the documentation")]
    if not lines:
        return type(err).__name__
    first_sentence = re.split(r"(?<=\.)\s", lines[0], maxsplit=1)[0]  # torch goes on with guesses and advice
    return f"{type(err).__name__}: {first_sentence[:200]}"


def load_torch(path: str | Path, allowed: list | tuple = (), allow_pickle: bool = False, mmap: bool = False):
    """torch.load(path) on the CPU, weights-only with the classes in `allowed` besides tensors and
    plain data. RefusedPickle when the file asks for more (unless `allow_pickle`: the user trusts
    the file); UnreadablePickle when it is no torch file (a plain pickle, damaged, cut short)."""
    import warnings

    import torch
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise UnreadablePickle("an empty file")
    if not head.startswith(ZIP_MAGIC) and head[:1] != b"\x80":
        raise UnreadablePickle(f"not a torch file (a zip archive or a pickle): it starts with {head[:8]!r}")
    if head[:1] == b"\x80" and not is_torch_legacy(head):
        # A bare pickle that torch.save did not write: even a trusted one is no torch file, and
        # torch.load would unpickle all of it before finding that out.
        with open(path, "rb") as f:
            names = pickle_globals(f.read(1 << 24))
        what = f"; it asks for {', '.join(names[:3])}" if names else ""
        raise UnreadablePickle(f"a plain Python pickle, not a torch file (torch.save files are zip archives or "
                               f"start with torch's magic number){what}")
    try:
        with warnings.catch_warnings():  # e.g. a pickle-protocol notice: the error below says it all
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(list(allowed)):
                return torch.load(path, map_location="cpu", weights_only=not allow_pickle, mmap=mmap)
    except Exception as err:  # torch raises many types for a damaged file; all mean "unusable"
        names = [] if allow_pickle else refused_names(path, err, list(allowed))
        if names:
            raise RefusedPickle(names) from None
        raise UnreadablePickle(f"not a readable torch file (truncated or corrupt?): {failure_reason(err)}") from None


def check_torch_file(path: str | Path, allowed: list | tuple = ()) -> None:
    """load_torch's refusals without loading the tensors where the format allows (a zip file's
    pickle is read alone), for files another library loads afterwards."""
    import torch
    path = Path(path)
    with open(path, "rb") as f:
        zipped = f.read(4) == ZIP_MAGIC
    if not zipped:
        load_torch(path, allowed)
        return
    try:
        with torch.serialization.safe_globals(list(allowed)):
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - a damaged archive
        raise UnreadablePickle(f"not a readable torch file (truncated or corrupt?): {failure_reason(err)}") from None
    if unsafe:
        raise RefusedPickle(list(unsafe))


# ----------------------------------------------------------------------------- plain pickles

# Exactly what a pickle of plain data needs: containers without an opcode of their own in older
# protocols, bytes (protocol 2 writes them through _codecs.encode) and numpy arrays and scalars.
PLAIN_GLOBALS = frozenset({
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"),
    ("builtins", "slice"), ("builtins", "range"), ("__builtin__", "set"), ("__builtin__", "frozenset"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *((module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")),
})


class PlainUnpickler(pickle.Unpickler):
    """Rebuilds containers, numbers, strings, bytes and numpy arrays only: any other global is
    refused before it is looked up, so nothing in the file can be called."""

    def find_class(self, module, name):
        if (module, name) in PLAIN_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise RefusedPickle([f"{module}.{name}"])


def load_plain_pickle(path: str | Path, allow_pickle: bool = False):
    """A pickle of plain data (see PlainUnpickler); `allow_pickle`: any object (trusted files only).
    RefusedPickle or UnreadablePickle otherwise."""
    with open(path, "rb") as f:
        try:
            return pickle.load(f) if allow_pickle else PlainUnpickler(f).load()  # noqa: S301 - allowed by the user
        except RefusedPickle:
            raise
        except Exception as err:  # noqa: BLE001 - a broken pickle fails in many ways; all mean a bad file
            raise UnreadablePickle(f"not a readable pickle ({type(err).__name__}: {err})") from None


def numpy_globals() -> list:
    """The numpy names a pickled array or scalar asks for: allowed beside tensors where data files
    hold arrays (torch's weights-only unpickler refuses them by default)."""
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar, *dtypes]
