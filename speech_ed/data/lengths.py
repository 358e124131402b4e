"""Durations and decoder-token counts of a whole manifest, fast enough for a million cuts.

Bin estimation and the padding report need only two numbers per cut: they come from the corpus indexer
(:func:`speech_ed.data.indexing.build_index`: JSON lines parsed without building Lhotse objects, the same
target / normalisation / token-count functions as training, batched SentencePiece calls, chunks spread over
worker processes). The result equals ``measure_lengths(CutSet.from_file(path), count_decoder_tokens)`` on cuts
that can train (tested); cuts that training skips (empty transcript, a language without a prompt token, an
unknown task) are left out here too, so bins describe what training draws.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from speech_ed.data.indexing import build_index
from speech_ed.sampling.index import REASON_CODE
from speech_ed.sampling.lengths import Lengths


def measure_manifest_lengths(path: Union[str, os.PathLike], tokenizer_path: Union[str, os.PathLike],
                             pnc: bool = False, num_workers: Optional[int] = None, chunk_size: int = 4096,
                             progress: bool = True) -> Lengths:
    """Lengths of the cuts of a ``.jsonl[.gz]`` cut manifest that can train, in manifest order.

    Args:
        path: the cut manifest.
        tokenizer_path: the run's tokenizer (directory or ``tokenizer.model``).
        pnc: count punctuated targets (else normalised text), as training does.
        num_workers: processes; default ``min(4, cpu count)``; 0 runs in this process.
        chunk_size: lines per task.
        progress: show a progress bar (on a terminal).

    Raises:
        ValueError: ``FILE:LINE: ...`` for a line that is not JSON, not a usable cut, or a cut without
            supervision.
    """
    path = Path(path)
    index = build_index("lhotse", [path], tokenizer_path, pnc=pnc, num_workers=num_workers, progress=progress,
                        chunk_size=chunk_size, keep_ids=True)
    ids = index.extra["ids"]
    unsupervised = index.status == REASON_CODE["no_supervision"]
    if unsupervised.any():
        k = int(unsupervised.argmax())
        raise ValueError(f"{path}:{int(index.extra['line'][k])}: cut {ids[k]} has no supervision")
    ok = index.status == 0
    return Lengths(ids[ok], index.durations[ok], index.tokens[ok])
