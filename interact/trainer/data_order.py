"""The data order: a global sample stream keyed by (seed, position), cut into each rank's
micro-batches, so a resumed run and any split into processes see the same samples."""
from __future__ import annotations

import hashlib
import warnings
from itertools import count

import torch

from hoi.records import DataError


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def keyed_generator(*parts) -> torch.Generator:
    """A CPU generator that depends only on `parts`."""
    return torch.Generator().manual_seed(_seed(*parts))


class SampleStream(torch.utils.data.Dataset):
    """Global sample position p -> dataset item: epoch p // n uses its own permutation of the n
    samples, so the order depends only on (seed, p), never on how far an earlier run got."""

    MAX_REPLACEMENTS = 100

    def __init__(self, dataset, seed: int):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset, self.seed = dataset, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def index(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, len(self.dataset))
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(len(self.dataset), generator=keyed_generator(self.seed, "epoch", epoch)))
        return epoch, int(self._perm[1][offset])

    def __len__(self):  # the stream is endless; DataLoader only needs this for its own checks
        return 2 ** 62

    def __getitem__(self, position: int):
        # A sample that cannot be read (a corrupt image found only now) is replaced by the next
        # position's: a pure function of the position, so a resumed run makes the same choice.
        for offset in range(self.MAX_REPLACEMENTS):
            epoch, index = self.index(position + offset)
            try:
                return self.dataset.get(index, epoch)
            except DataError as err:
                warnings.warn(f"{err}; sample skipped, using the next one")
        raise DataError(f"{self.MAX_REPLACEMENTS} unreadable samples in a row from position {position}")


class StepBatches(torch.utils.data.Sampler):
    """This rank's micro-batches of global positions, from iteration `start` on."""

    def __init__(self, start: int, batch_size: int, world: int, rank: int, accumulation: int):
        self.start, self.b, self.world, self.rank, self.accum = start, batch_size, world, rank, accumulation

    def __iter__(self):
        per_step = self.b * self.world * self.accum
        for it in count(self.start):
            for micro in range(self.accum):
                base = it * per_step + (micro * self.world + self.rank) * self.b
                yield list(range(base, base + self.b))

