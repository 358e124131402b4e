"""Inverse real-time factor (RTFx) of model presets, encoder and decoder apart (``speech-ed bench-rtfx``).

Usage::

    settings = RtfxSettings(batch_size=32, device="cpu", dtype="bf16", cuts="test-clean.tsv", num_utterances=128)
    blob = bench_presets(["twin_24x24", "twin_32x4"], settings, json_path="out.json")   # prints the tables

Randomly initialised models are compared fairly by forcing each utterance's output length to its reference
token count (the decoder still runs step by step on the KV cache, EOS ignored). As on the Open ASR
Leaderboard, utterances are sorted by length (longest first) and a warm-up pass over the first batch runs
before timing. Decoding is the evaluation decode path (:func:`speech_ed.evaluation.decoding.decode_audio`).
RTFx = audio seconds / (encoder + decoder seconds); encoder time includes the frontend and the copy to the
device, decoder time includes the cross-attention key/value projection and the prompt step.
``no_kv_cache`` adds a pass that recomputes the whole prefix (self- and cross-attention keys/values) at every
step.

Lengths and token counts come from ``cuts`` (a Lhotse manifest, audio-less allowed, or a metadata TSV as
``speech-ed import-tsv`` reads it); otherwise from a seeded LibriSpeech-like log-normal (the test-clean fit:
log-duration mean 1.80, std 0.63, clipped to 1.3-35 s). Token counts are the tokenizer's count of the text
with ``tokenizer``, else ``round(tokens_per_second x duration)``, capped so prompt + output fits the decoder's
positions. Audio is the cut's recording when it has one, otherwise seeded noise.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

import torch

from speech_ed.data.prompt import (
    PROMPT_LEN,  # the decoder context: <|startoftranscript|> <src> <task> <tgt> <pnc>
)


class DeviceUnavailable(RuntimeError):
    """The requested device is not there (``--device cuda`` without CUDA)."""


@dataclass
class RtfxSettings:
    """What ``speech-ed bench-rtfx`` measures and how (one field per flag)."""

    batch_size: int = 32
    device: str = "cpu"
    """'cpu' or 'cuda'."""
    dtype: str = "bf16"
    """'bf16' casts the weights (inference); the log-mel frontend always runs in fp32. Or 'fp32'."""
    cuts: str = ""
    """Lhotse manifest (.jsonl[.gz]) or metadata TSV; empty: the LibriSpeech-like distribution."""
    num_utterances: int = 0
    """Seeded random subset of the manifest (0 = all; default distribution: 256)."""
    tokens_per_second: float = 5.0
    """Reference tokens per second without ``tokenizer`` (5 ~ 1024-piece English BPE)."""
    tokenizer: str = ""
    """SentencePiece model counting the reference tokens."""
    fixed_output_tokens: int = 0
    """Force every output to this many tokens instead (0: the reference count)."""
    no_kv_cache: bool = False
    """Also time decoding without the KV cache."""
    repeats: int = 1
    """Timed passes; the fastest is reported."""
    threads: int = 0
    """Torch CPU threads (0 = torch default)."""
    vocab_size: int = 0
    """Vocabulary override (0 = the preset's, or 1024 where it leaves it to the tokenizer)."""
    overrides: list[str] = field(default_factory=list)
    """``FIELD=VALUE`` ModelDims overrides applied to every preset."""
    seed: int = 0
    compact: bool = True
    """Drop finished rows from the decoding batch."""
    cuda_graph: bool = True
    """On CUDA, replay the static decoder step as a CUDA graph."""


@dataclass
class Utterance:
    duration_s: float
    num_tokens: int
    cut: object = None  # a lhotse Cut with a recording, or None (noise)


def load_utterances(settings: RtfxSettings) -> list[Utterance]:
    """The utterances to decode, with their output lengths (not yet sorted).

    Raises:
        speech_ed.sampling.tsv.TsvFormatError: a malformed TSV (file, line and field named).
    """
    g = torch.Generator().manual_seed(settings.seed)
    texts: list[str | None]
    cuts = []
    if not settings.cuts:
        n = settings.num_utterances or 256
        durations = torch.exp(1.80 + 0.63 * torch.randn(n, generator=g)).clamp(1.3, 35.0).tolist()
        texts = [None] * n
    elif settings.cuts.endswith(".tsv"):
        from speech_ed.sampling.tsv import iter_tsv_rows

        rows = list(iter_tsv_rows(settings.cuts))
        durations = [float(r["duration_seconds"]) for r in rows]
        texts = [r["text"] or None for r in rows]
    else:
        from lhotse import CutSet

        cuts = list(CutSet.from_file(settings.cuts))
        durations = [c.duration for c in cuts]
        texts = [" ".join(s.text or "" for s in c.supervisions) or None for c in cuts]
    index = list(range(len(durations)))
    if settings.cuts and settings.num_utterances and settings.num_utterances < len(index):
        index = sorted(torch.randperm(len(index), generator=g)[: settings.num_utterances].tolist())
    sp = None
    if settings.tokenizer:
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=settings.tokenizer)
    utts = []
    for i in index:
        if settings.fixed_output_tokens:
            n_tok = settings.fixed_output_tokens
        elif sp is not None and texts[i]:
            n_tok = len(sp.encode(texts[i]))
        else:
            n_tok = round(settings.tokens_per_second * durations[i])
        cut = cuts[i] if cuts and cuts[i].has_recording else None
        utts.append(Utterance(durations[i], max(1, n_tok), cut))
    return utts


def make_batches(utts: list[Utterance], batch_size: int) -> list[list[Utterance]]:
    """Longest first, then consecutive groups of batch_size (the last one may be smaller)."""
    ordered = sorted(utts, key=lambda u: u.duration_s, reverse=True)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def batch_audio(batch: list[Utterance], sample_rate: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) float32 zero-padded audio and (B,) int64 lengths, on the CPU."""
    lens = torch.tensor([round(u.duration_s * sample_rate) for u in batch])
    audio = torch.zeros(len(batch), int(lens.max()))
    g = torch.Generator().manual_seed(seed)
    for i, u in enumerate(batch):
        if u.cut is not None:
            samples = torch.from_numpy(u.cut.load_audio()).float().mean(0)
            lens[i] = min(int(lens[i]), samples.shape[0])
            audio[i, : lens[i]] = samples[: lens[i]]
        else:
            audio[i, : lens[i]] = 0.05 * torch.randn(int(lens[i]), generator=g)
    return audio, lens


def run_pass(model, batches, settings: RtfxSettings, use_cache: bool, max_tokens: int) -> dict:
    """Encode and decode every batch once (the evaluation decode path); returns summed seconds and tokens."""
    from speech_ed.evaluation.decoding import decode_audio
    from speech_ed.models.decoding import DecodeOptions

    options = DecodeOptions(mode="attention", use_cache=use_cache, compact=settings.compact,
                            cuda_graph=settings.cuda_graph)
    device = settings.device
    enc_s = dec_s = 0.0
    tokens = 0
    for bi, batch in enumerate(batches):
        audio, lens = batch_audio(batch, model.dims.sample_rate, settings.seed + bi)
        force = torch.tensor([min(u.num_tokens, max_tokens) for u in batch])
        prompt = torch.full((len(batch), PROMPT_LEN), 1, dtype=torch.long)
        out = decode_audio(model, audio.to(device), lens.to(device), prompt.to(device), eos_id=2, blank_id=0,
                           options=options, with_ctc=False, force_lengths=force.to(device), timed=True)
        enc_s, dec_s = enc_s + out.encoder_seconds, dec_s + out.decoder_seconds
        tokens += sum(len(h) for h in out.hyps)
    return {"encoder_seconds": enc_s, "decoder_seconds": dec_s, "output_tokens": tokens}


def apply_overrides(dims, overrides: list[str]):
    """Return ``dims`` with ``FIELD=VALUE`` strings applied, parsed and type-checked against the ModelDims
    schema as ``key=value`` config overrides are (OmegaConf dotlist).

    Raises:
        ValueError: not ``FIELD=VALUE``, an unknown field, or a value of the wrong type.
    """
    import dataclasses

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    fields = {f.name for f in dataclasses.fields(dims)}
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of the ModelDims fields")
    if not overrides:
        return dims
    try:
        merged = OmegaConf.merge(OmegaConf.structured(dims), OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ValueError(f"--set {list(overrides)}: {str(e).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)


def bench_preset(name: str, batches, settings: RtfxSettings, log=print) -> dict:
    """Build preset ``name`` (random weights, seeded), warm up, time ``settings.repeats`` passes; one result row."""
    from speech_ed.config import load_model_preset
    from speech_ed.models import AEDModel, count_parameters

    dims = apply_overrides(load_model_preset(name), settings.overrides)
    if settings.vocab_size > 0 or dims.vocab_size <= 0:
        dims.vocab_size = settings.vocab_size if settings.vocab_size > 0 else 1024
    torch.manual_seed(settings.seed)
    model = AEDModel(dims).eval()
    params = count_parameters(model)
    if settings.dtype == "bf16":
        model = model.to(torch.bfloat16)
    model = model.to(settings.device)
    max_tokens = dims.max_decoder_positions - PROMPT_LEN
    capped = sum(u.num_tokens > max_tokens for b in batches for u in b)
    audio_s = sum(u.duration_s for b in batches for u in b)
    with torch.inference_mode():
        run_pass(model, batches[:1], settings, True, max_tokens)  # warm-up
        best = min((run_pass(model, batches, settings, True, max_tokens) for _ in range(settings.repeats)),
                   key=lambda r: r["encoder_seconds"] + r["decoder_seconds"])
        total = best["encoder_seconds"] + best["decoder_seconds"]
        result = {"preset": name, "params": params, "rtfx": audio_s / total, **best, "total_seconds": total,
                  "audio_seconds": audio_s, "utterances": sum(len(b) for b in batches),
                  "outputs_capped": capped, "decoder_layers": dims.num_decoder_layers,
                  "encoder_layers": dims.num_encoder_layers,
                  "vocab_size": dims.vocab_size}
        if settings.no_kv_cache:
            run_pass(model, batches[:1], settings, False, max_tokens)
            nc = min((run_pass(model, batches, settings, False, max_tokens) for _ in range(settings.repeats)),
                     key=lambda r: r["decoder_seconds"])
            result["decoder_seconds_no_cache"] = nc["decoder_seconds"]
            result["rtfx_no_cache"] = audio_s / (best["encoder_seconds"] + nc["decoder_seconds"])
            result["kv_cache_speedup"] = nc["decoder_seconds"] / best["decoder_seconds"]
    if capped:
        log(f"[bench-rtfx] {name}: {capped} utterances had more reference tokens than the decoder's "
            f"{max_tokens} positions allow; their outputs were capped at {max_tokens}")
    return result


def format_table(results: list[dict]) -> str:
    cols = ["preset", "params", "rtfx", "encoder_seconds", "decoder_seconds", "output_tokens"]
    if any("kv_cache_speedup" in r for r in results):
        cols += ["decoder_seconds_no_cache", "rtfx_no_cache", "kv_cache_speedup"]
    rows = [cols] + [[_fmt(r.get(c)) for c in cols] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if v < 100 else f"{v:.1f}"
    if isinstance(v, int) and v > 100_000:
        return f"{v / 1e6:.1f}M"
    return "-" if v is None else str(v)


def _say(line: str) -> None:
    print(line, flush=True)


def bench_presets(presets: list[str], settings: RtfxSettings, json_path: str = "", log=_say) -> dict:
    """Time every preset on the same batches, log the tables, and write the JSON blob to ``json_path``.

    Returns:
        ``{"results": [one row per preset], "device", "dtype", "batch_size", ...}`` (what the JSON holds).

    Raises:
        DeviceUnavailable: ``device='cuda'`` without CUDA.
    """
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("--device cuda but CUDA is not available")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    utts = load_utterances(settings)
    batches = make_batches(utts, settings.batch_size)
    log(f"[bench-rtfx] {len(utts)} utterances, {sum(u.duration_s for u in utts) / 3600:.2f} h, "
        f"{sum(u.num_tokens for u in utts)} reference tokens, {len(batches)} batches of "
        f"<= {settings.batch_size}, device {settings.device}, dtype {settings.dtype}, "
        f"threads {torch.get_num_threads()}")
    results = []
    for name in presets:
        results.append(bench_preset(name, batches, settings, log))
        log(format_table(results[-1:]))
    log("\n" + format_table(results))
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            log(f"RTFx {r['preset']} / {base['preset']} = {r['rtfx'] / base['rtfx']:.2f}x")
    blob = {"results": results, "device": settings.device, "dtype": settings.dtype,
            "batch_size": settings.batch_size, "cuts": settings.cuts or "default LibriSpeech-like",
            "num_utterances": len(utts), "tokens_per_second": settings.tokens_per_second,
            "fixed_output_tokens": settings.fixed_output_tokens, "overrides": list(settings.overrides),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if json_path:
        import json

        from speech_ed.atomic import atomic_write_text

        atomic_write_text(json_path, json.dumps(blob, indent=2))
        log(f"[bench-rtfx] wrote {json_path}")
    return blob
