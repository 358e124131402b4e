"""Several corpora mixed with weights into epochs: which record of which corpus comes at each position.

An epoch holds ``cuts_per_epoch`` cuts (default: all cuts of all corpora once). Corpus ``s`` contributes
``n_s`` of them, ``n_s`` proportional to its weight (largest-remainder rounding, so the counts add up exactly;
default weight: its number of cuts, i.e. plain concatenation). A corpus is read as an endless sequence of
passes and each epoch continues where the last one stopped: a corpus with ``n_s`` below its size is covered
over several epochs without repeating a cut, one above it repeats cuts. The corpora are interleaved in a
random order drawn from ``(seed, epoch)`` (an even interleave without shuffling), so the proportions hold at
every point of the epoch, not only at its end.

Everything is a function of ``(seed, epoch)`` and the corpus sizes: an epoch can be rebuilt exactly after a
restart from its number alone (about 0.1 s per million cuts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from speech_ed.sampling.index import CutIndex


def allocate(weights: Sequence[float], total: int) -> list[int]:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    parts = np.floor(exact).astype(np.int64)
    short = int(total - parts.sum())
    if short:
        order = np.argsort(-(exact - parts), kind="stable")
        parts[order[:short]] += 1
    return parts.tolist()


@dataclass
class EpochSequence:
    """The cuts of one epoch in stream order: position p is record ``record[p]`` of corpus ``source[p]``.

    ``durations``, ``tokens`` and ``status`` are gathered from the corpora's indexes, so the planner never
    looks anything up per cut.
    """

    source: np.ndarray
    record: np.ndarray
    durations: np.ndarray
    tokens: np.ndarray
    status: np.ndarray

    def __len__(self) -> int:
        return len(self.source)


class CorpusMix:
    """Weighted corpora (see the module docstring).

    Args:
        indexes: one :class:`CutIndex` per corpus.
        weights: relative share of each corpus in an epoch's cuts; None: proportional to their sizes.
        cuts_per_epoch: cuts per epoch; None: the corpora's total.
        pass_orders: ``pass_orders[s](cycle)`` gives corpus s's record order in its ``cycle``-th pass (None:
            corpus order).
    """

    def __init__(self, indexes: Sequence[CutIndex], weights: Optional[Sequence[float]] = None,
                 cuts_per_epoch: Optional[int] = None, pass_orders: Optional[Sequence] = None):
        self.indexes = list(indexes)
        if not self.indexes:
            raise ValueError("a corpus mix needs at least one corpus")
        self.sizes = [len(ix) for ix in self.indexes]
        if weights is None:
            weights = [float(n) for n in self.sizes]
        weights = [float(w) for w in weights]
        if len(weights) != len(self.indexes):
            raise ValueError(f"{len(weights)} weights for {len(self.indexes)} corpora")
        if any(not w >= 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(f"weights must be >= 0 and not all 0, got {weights}")
        self.weights = weights
        total = sum(self.sizes) if cuts_per_epoch is None else int(cuts_per_epoch)
        if total < 1:
            raise ValueError(f"cuts_per_epoch must be >= 1, got {cuts_per_epoch}")
        self.counts = allocate(weights, total)
        for s, (n, size) in enumerate(zip(self.counts, self.sizes)):
            if n and not size:
                raise ValueError(f"corpus {s} has weight {weights[s]} but holds no cuts")
        self.cuts_per_epoch = total
        self.pass_orders = list(pass_orders) if pass_orders is not None else [None] * len(self.indexes)

    def fingerprint(self) -> dict:
        """What a checkpoint must match to continue an epoch of this mix."""
        return {"sizes": list(self.sizes), "counts": list(self.counts)}

    def records(self, s: int, epoch: int) -> np.ndarray:
        """Corpus s's records in ``epoch``, in reading order."""
        n, size = self.counts[s], self.sizes[s]
        pos = epoch * n + np.arange(n, dtype=np.int64)
        cycles, offs = pos // size, pos % size
        order_of = self.pass_orders[s]
        if order_of is None:
            return offs
        out = np.empty(n, dtype=np.int64)
        for c in np.unique(cycles):
            sel = cycles == c
            order = order_of(int(c))
            out[sel] = offs[sel] if order is None else np.asarray(order)[offs[sel]]
        return out

    def epoch(self, epoch: int, seed: int, shuffle: bool = True) -> EpochSequence:
        """The stream order of ``epoch`` (see :class:`EpochSequence`)."""
        S = len(self.indexes)
        if S == 1:
            source = np.zeros(self.counts[0], dtype=np.int32)
        elif shuffle:
            source = np.repeat(np.arange(S, dtype=np.int32), self.counts)
            np.random.default_rng([int(seed), int(epoch), 0x6D6978]).shuffle(source)
        else:  # even interleave: the k-th cut of corpus s sits at fraction (k + 0.5) / n_s of the epoch
            frac = np.concatenate([(np.arange(n) + 0.5) / n for n in self.counts if n])
            ids = np.concatenate([np.full(n, s, dtype=np.int32) for s, n in enumerate(self.counts) if n])
            source = ids[np.argsort(frac, kind="stable")]
        record = np.empty(len(source), dtype=np.int64)
        durations = np.empty(len(source), dtype=np.float64)
        tokens = np.empty(len(source), dtype=np.int64)
        status = np.empty(len(source), dtype=np.int8)
        for s in range(S):
            sel = source == s
            rec = self.records(s, epoch)
            ix = self.indexes[s]
            record[sel] = rec
            durations[sel], tokens[sel], status[sel] = ix.durations[rec], ix.tokens[rec], ix.status[rec]
        return EpochSequence(source, record, durations, tokens, status)
