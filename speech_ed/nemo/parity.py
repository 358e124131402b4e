"""Compare an imported model with the reference outputs NeMo wrote for it (scripts/nemo_parity.py).

Shapes: B utterances, S samples, T frames, F mel bins, T' encoder frames, D width, U tokens, V vocabulary.
Outputs are compared on valid frames only (padding is meaningless in both implementations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from speech_ed.data.prompt import build_prompt

_PROMPT_ARGS = ("source_lang", "target_lang", "task", "pnc")


@dataclass
class ParityReport:
    """Max abs differences and transcript agreement against NeMo's reference.

    Attributes:
        features, encoder, logits, log_probs: max abs difference over valid positions.
        lengths_equal: feature and encoder frame counts equal NeMo's.
        prompt_equal: our prompt token ids equal NeMo's.
        transcripts: per utterance ``(ours_text, nemo_text, ids_equal)``.
    """

    features: float
    encoder: float
    logits: float
    log_probs: float
    lengths_equal: bool
    prompt_equal: bool
    transcripts: list[tuple[str, str, bool]] = field(default_factory=list)

    @property
    def transcripts_equal(self) -> bool:
        return all(ids_equal and ours == theirs for ours, theirs, ids_equal in self.transcripts)

    def worst(self) -> float:
        return max(self.features, self.encoder, self.logits, self.log_probs)


def read_audio_batch(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) zero-padded float32 waveforms and (B,) lengths, read as NeMo's dataloader reads them."""
    import soundfile as sf

    waves = [torch.from_numpy(sf.read(str(p), dtype="float32")[0]) for p in paths]
    lens = torch.tensor([w.numel() for w in waves])
    audio = torch.zeros(len(waves), int(lens.max()))
    for i, w in enumerate(waves):
        audio[i, : w.numel()] = w
    return audio, lens


def prompt_from_slots(tokenizer, slots: dict) -> list[int]:
    """Our prompt for NeMo ``transcribe`` slot values (source_lang, target_lang, task, pnc, ...)."""
    rest = {k: v for k, v in slots.items() if k not in _PROMPT_ARGS}
    return build_prompt(tokenizer, slots["source_lang"], slots["target_lang"], slots.get("task", "transcribe"),
                        slots.get("pnc", "no"), **rest)


def _masked_max(a: torch.Tensor, b: torch.Tensor, lens: torch.Tensor) -> float:
    """Max |a - b| over the first lens[i] positions of dim 1 of row i; a, b (B, T, ...)."""
    t = min(a.shape[1], b.shape[1])
    valid = torch.arange(t)[None, :] < lens[:, None]
    diff = (a[:, :t] - b[:, :t]).abs().flatten(2).amax(dim=2)  # (B, T)
    return float(diff.masked_fill(~valid, 0.0).max())


@torch.no_grad()
def compare(model, tokenizer, reference: dict, audio_dir: str | Path) -> ParityReport:
    """Run our model on the reference's audio and prompt; greedy decoding is batched as NeMo's transcribe ran.

    Greedy decoding runs to the decoder's last position like NeMo's (``max_generation_delta`` -1): the token
    budget per row is larger than any utterance needs, so only end-of-text or the position cap stop it.
    """
    from speech_ed.models import greedy_decode

    model.eval()
    audio, lens = read_audio_batch([Path(audio_dir) / f for f in reference["files"]])
    feats, feat_lens = model.frontend(audio, lens)
    enc, enc_lens = model.encode(audio, lens)
    logits = model.decoder(reference["tokens_in"], enc, enc_lens)
    u = torch.full((len(lens),), logits.shape[1])
    prompt = prompt_from_slots(tokenizer, reference["prompt_slots"])
    ratio = float(model.dims.max_decoder_positions)  # floor(ratio * frames) + 3 exceeds every position cap
    hyps = greedy_decode(model, enc, enc_lens, torch.tensor([prompt] * len(lens)), tokenizer.eos_id,
                         max_len_ratio=ratio)
    transcripts = []
    for ids, ref in zip(hyps, reference["greedy"]):
        while ids and ids[-1] == tokenizer.pad_id:  # NeMo strips trailing pads with the end-of-text
            ids = ids[:-1]
        transcripts.append((tokenizer.decode(ids), ref["text"], ids == list(ref["ids"])))
    return ParityReport(
        features=_masked_max(feats, reference["features"].transpose(1, 2), feat_lens),
        encoder=_masked_max(enc, reference["enc"], enc_lens),
        logits=_masked_max(logits, reference["logits"], u),
        log_probs=_masked_max(torch.log_softmax(logits.float(), dim=-1), reference["log_probs"], u),
        lengths_equal=feat_lens.tolist() == reference["feat_lens"].tolist()
        and enc_lens.tolist() == reference["enc_lens"].tolist(),
        prompt_equal=prompt == reference["prompt"].tolist(),
        transcripts=transcripts,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m speech_ed.nemo.parity DIR ...``: one table row per folder written by scripts/nemo_parity.py
    (``model.nemo``, ``reference.pt``, ``audio/``); exit status 1 when a difference exceeds ``--tol``."""
    import argparse

    from speech_ed.nemo.convert import load_nemo

    parser = argparse.ArgumentParser(prog="python -m speech_ed.nemo.parity", description=main.__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    print("| shape | features | encoder output | decoder logits | log-probs | greedy transcripts identical |")
    print("|---|---|---|---|---|---|")
    failed = False
    for d in args.dirs:
        imported = load_nemo(d / "model.nemo")
        r = compare(imported.model, imported.tokenizer, torch.load(d / "reference.pt", weights_only=True),
                    d / "audio")
        same = sum(ids and ours == theirs for ours, theirs, ids in r.transcripts)
        failed |= r.worst() > args.tol or not (r.transcripts_equal and r.lengths_equal and r.prompt_equal)
        print(f"| {d.name} | {r.features:.1e} | {r.encoder:.1e} | {r.logits:.1e} | {r.log_probs:.1e} | "
              f"{same}/{len(r.transcripts)} |")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
