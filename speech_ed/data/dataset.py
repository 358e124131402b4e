"""Map-style dataset over Lhotse cuts: the sampler hands it a CutSet, it returns one collated batch.

Audio is read with soundfile (through Lhotse) in DataLoader worker processes; features are computed inside the
model. A cut whose audio is missing, unreadable, empty or not finite, whose transcript is empty, whose
language has no prompt token, or whose task is neither transcribe nor translate, is skipped and counted in
``batch["skipped"]`` (reason -> count); the training loop adds the counts up and reports them. Characters the
tokenizer does not know become ``<unk>`` and are counted in ``batch["unk_pieces"]``. Audio at another sample
rate is resampled, not rejected. Nothing is dropped silently.

Batch layout (B cuts that survived, S samples, U decoder tokens, N text tokens)::

    audio        (B, S) float32, zero padded        audio_lens  (B,) int64 samples
    tokens       (B, U) int64, pad id 0             token_lens  (B,) int64
    ctc_targets  (B, N) int64, text pieces only     ctc_target_lens (B,) int64
    cut_ids, languages, texts: list[str]            skipped: dict[str, int]; unk_pieces: int
    bucket: the sampler's bucket index of the batch (None for other samplers, -1 for mixed end-of-epoch batches)
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from speech_ed.data.prompt import PROMPT_LEN, cut_target, decoder_sequence
from speech_ed.data.sources import resolve_audio
from speech_ed.data.tokenizer import TASKS, Tokenizer

IGNORE_INDEX = -100


class AEDDataset(torch.utils.data.Dataset):
    """Turns a CutSet into a padded batch of waveforms and Canary-style decoder sequences.

    Args:
        tokenizer: the run's tokenizer.
        pnc: punctuation-and-casing targets (else normalised text).
        sample_rate: audio at another rate is resampled to it (Lhotse's resampler), never rejected.
    """

    def __init__(self, tokenizer: Tokenizer, pnc: bool = False, sample_rate: int = 16000):
        self.tokenizer = tokenizer
        self.pnc = pnc
        self.sample_rate = sample_rate

    def __getitem__(self, cuts) -> dict:
        skipped: Counter = Counter()
        waves, seqs, texts, ids, langs = [], [], [], [], []
        unk_pieces = 0  # characters the tokenizer does not know: kept as <unk>, counted
        for cut in cuts:
            try:
                target = cut_target(cut, self.pnc)
            except ValueError:
                skipped["no_supervision"] += 1
                continue
            if not target.text.strip():
                skipped["empty_transcript"] += 1
                continue
            if not (self.tokenizer.has_language(target.source_lang)
                    and self.tokenizer.has_language(target.target_lang)):
                skipped["unknown_language"] += 1
                continue
            if target.task not in TASKS:
                skipped["unknown_task"] += 1
                continue
            try:
                cut = resolve_audio(cut)  # Shar: bytes out of the tar shard; NeMo: open the audio file
                if cut.sampling_rate != self.sample_rate:
                    cut = cut.resample(self.sample_rate)
                audio = cut.load_audio()
            except Exception:  # missing file, corrupt header, truncated data: all are 'unreadable' here
                skipped["unreadable_audio"] += 1
                continue
            audio = np.asarray(audio, dtype=np.float32)
            audio = audio.mean(axis=0) if audio.ndim == 2 else audio
            if audio.size == 0:
                skipped["empty_audio"] += 1
                continue
            if not np.isfinite(audio).all():
                skipped["non_finite_audio"] += 1
                continue
            seq = decoder_sequence(self.tokenizer, target, self.pnc)
            unk_pieces += sum(1 for t in seq if t == self.tokenizer.unk_id)
            waves.append(torch.from_numpy(audio))
            seqs.append(seq)
            texts.append(target.text)
            ids.append(cut.id)
            langs.append(target.source_lang)
        batch = collate(waves, seqs)
        batch.update(cut_ids=ids, languages=langs, texts=texts, skipped=dict(+skipped), unk_pieces=unk_pieces,
                     bucket=getattr(cuts, "bucket", None))
        return batch


def collate(waves: list[torch.Tensor], seqs: list[list[int]]) -> dict:
    """Pad waveforms (S,) and decoder sequences into one batch (see the module docstring for shapes)."""
    b = len(waves)
    audio_lens = torch.tensor([w.numel() for w in waves], dtype=torch.long)
    token_lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    audio = torch.zeros(b, int(audio_lens.max()) if b else 0)
    tokens = torch.zeros(b, int(token_lens.max()) if b else 0, dtype=torch.long)
    ctc_lens = (token_lens - PROMPT_LEN - 1).clamp(min=0)
    ctc_targets = torch.zeros(b, int(ctc_lens.max()) if b else 0, dtype=torch.long)
    for i, (w, s) in enumerate(zip(waves, seqs)):
        audio[i, : w.numel()] = w
        tokens[i, : len(s)] = torch.tensor(s)
        ctc_targets[i, : ctc_lens[i]] = tokens[i, PROMPT_LEN : PROMPT_LEN + ctc_lens[i]]
    return {"audio": audio, "audio_lens": audio_lens, "tokens": tokens, "token_lens": token_lens,
            "ctc_targets": ctc_targets, "ctc_target_lens": ctc_lens}


def split_decoder_io(tokens: torch.Tensor, token_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder input (B, U-1) and targets (B, U-1) from full sequences (B, U).

    Targets are the sequence shifted by one; the prompt's own tokens and the padding are set to
    :data:`IGNORE_INDEX`, so only text pieces and end-of-text are scored.
    """
    tokens_in = tokens[:, :-1]
    targets = tokens[:, 1:].clone()
    pos = torch.arange(targets.shape[1], device=tokens.device)[None, :]
    targets[(pos < PROMPT_LEN - 1) | (pos >= (token_lens[:, None] - 1))] = IGNORE_INDEX
    return tokens_in, targets


def padding_ratios(batch: dict) -> tuple[float, float]:
    """(input, output) padding: padded samples / all samples and padded tokens / all tokens of a batch."""
    a, t = batch["audio"], batch["tokens"]
    in_pad = (a.numel() - batch["audio_lens"].sum().item()) / max(a.numel(), 1)
    out_pad = (t.numel() - batch["token_lens"].sum().item()) / max(t.numel(), 1)
    return in_pad, out_pad
