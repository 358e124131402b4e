"""Decoding: one entry point (:func:`decode`) over greedy, beam search, joint CTC/attention and CTC greedy.

Shapes: B batch, T encoder frames, D decoder width, P prompt tokens, V vocabulary, K beam size, L tokens.
Call these on a model in eval mode; they run under ``torch.no_grad``.

Modes (:class:`DecodeOptions`):

* ``attention``: the attention decoder alone, greedy (``beam_size=1``) or beam search.
* ``joint``: attention scores plus CTC prefix scores (:mod:`speech_ed.models.ctc_prefix`) with weight
  ``ctc_weight``: ``(1 - w) log p_att + w log p_ctc_prefix`` (Watanabe et al. 2017). ``beam_size=1`` is greedy
  decoding whose every token is chosen among the attention's ``pre_beam`` best by the joint score.
* ``ctc``: CTC best path.

Two guards against attention loops apply to the attention and joint modes: ``max_repeats`` blocks a token that
would repeat the hypothesis' last n-gram (n <= ``repeat_ngram``) more than ``max_repeats`` times in a row, and
``ctc_length_ratio`` caps the output at ``ratio x`` the CTC best path's length + 3 (models with a CTC head).

Batched greedy and beam search drop finished rows from the computation (batch and KV caches shrink) once
``compact_fraction`` of the rows still computed have finished; the result is what the full batch gives.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from speech_ed.models.steppers import make_stepper

DecodeMode = Literal["attention", "joint", "ctc"]
MODES = get_args(DecodeMode)


@dataclass
class DecodeOptions:
    """How :func:`decode` decodes (see the module docstring)."""

    mode: DecodeMode = "attention"
    """'attention', 'joint' (needs CTC logits) or 'ctc'."""
    beam_size: int = 1
    ctc_weight: float = 0.3
    """Weight w of the CTC prefix score in 'joint' mode, in (0, 1)."""
    pre_beam: int = 0
    """'joint': attention candidates scored by CTC per hypothesis (0: max(4, 1.5 x beam_size))."""
    length_penalty: float = 1.0
    penalty_style: Literal["gnmt", "simple"] = "gnmt"
    """Beam search length normalisation: 'gnmt' ((5 + L) / 6) ** alpha or 'simple' L ** alpha."""
    max_len_ratio: float = 0.6
    """At most floor(max_len_ratio x encoder frames) + 3 tokens."""
    ctc_length_ratio: float = 0.0
    """With CTC logits: also at most floor(ratio x CTC best-path tokens) + 3 tokens (0 = off)."""
    max_repeats: int = 0
    """Block a token that makes the last n-gram occur more than this many times in a row (0 = off)."""
    repeat_ngram: int = 4
    """Longest n-gram the repetition guard checks."""
    use_cache: bool = True
    compact: bool = True
    """Drop finished rows from the batch and its KV caches."""
    compact_fraction: float = 0.1
    """Compact once this share of the rows still computed has finished."""
    static_cache: bool = False
    """Fixed-shape decoder step (the CUDA-graph path) even without a graph, e.g. to test it on CPU."""
    cuda_graph: bool = True
    """On CUDA, replay the static step as a CUDA graph (ignored on CPU)."""

    def check(self) -> None:
        """Raise ValueError naming the bad field."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.mode == "joint" and not 0.0 < self.ctc_weight < 1.0:
            raise ValueError(f"ctc_weight must be in (0, 1) for mode 'joint', got {self.ctc_weight}")
        if self.penalty_style not in ("gnmt", "simple"):
            raise ValueError(f"penalty_style must be 'gnmt' or 'simple', got {self.penalty_style!r}")
        if self.max_repeats < 0 or self.repeat_ngram < 1:
            raise ValueError("max_repeats must be >= 0 and repeat_ngram >= 1")
        if self.ctc_length_ratio < 0 or self.pre_beam < 0 or not 0.0 < self.compact_fraction <= 1.0:
            raise ValueError("ctc_length_ratio and pre_beam must be >= 0, compact_fraction in (0, 1]")

    def describe(self) -> str:
        """Short human-readable name, e.g. 'joint beam 4 (ctc 0.3)'."""
        if self.mode == "ctc":
            return "CTC greedy"
        search = "greedy" if self.beam_size == 1 else f"beam {self.beam_size}"
        extra = f" (ctc {self.ctc_weight:g})" if self.mode == "joint" else ""
        guard = f", repeats <= {self.max_repeats}" if self.max_repeats else ""
        guard += f", len <= {self.ctc_length_ratio:g} x CTC" if self.ctc_length_ratio else ""
        return f"{self.mode} {search}{extra}{guard}"


def max_new_tokens(enc_lens: torch.Tensor, max_len_ratio: float) -> torch.Tensor:
    """(B,) int64 token budget per row: floor(max_len_ratio * enc_len) + 3 (ESPnet's maxlenratio)."""
    return torch.floor(enc_lens.float() * max_len_ratio).long() + 3


def step_budget(model, prompt_len: int, limits: torch.Tensor) -> int:
    """Decoding steps: the largest row budget, capped so prompt + output fits the decoder's positions."""
    return max(0, min(int(limits.max()), model.dims.max_decoder_positions - prompt_len)) if limits.numel() else 0


def _periodic_tails(history: torch.Tensor, max_repeats: int, ngram: int):
    """Yield ``(periodic, token)`` per n-gram length n <= ngram: (N,) bool, True where the last
    ``n x max_repeats`` tokens are ``max_repeats`` copies of one n-gram, and (N,) the token that would start
    copy number ``max_repeats + 1``."""
    length = history.shape[1]
    for n in range(1, ngram + 1):
        span = n * max_repeats
        if length < span:
            return
        tail = history[:, length - span:]
        periodic = (tail[:, n:] == tail[:, :-n]).all(dim=1)  # all() of an empty row is True (one copy)
        yield periodic, tail[:, -n]


def repeat_blocked(history: torch.Tensor, cands: torch.Tensor, max_repeats: int, ngram: int) -> torch.Tensor:
    """Which candidates would make a hypothesis end in more than ``max_repeats`` copies of an n-gram.

    Args:
        history: (N, L) int64 tokens generated so far.
        cands: (N, C) int64 candidate next tokens.
        max_repeats: allowed consecutive copies (> 0).
        ngram: longest n-gram checked.

    Returns:
        (N, C) bool.
    """
    blocked = torch.zeros(cands.shape, dtype=torch.bool, device=cands.device)
    for periodic, token in _periodic_tails(history, max_repeats, ngram):
        blocked |= periodic[:, None] & (cands == token[:, None])
    return blocked


def _block_repeats(logits: torch.Tensor, history: torch.Tensor, max_repeats: int, ngram: int) -> torch.Tensor:
    """logits (N, V) with the tokens :func:`repeat_blocked` forbids set to -inf (a copy when any is)."""
    copied = False
    for periodic, token in _periodic_tails(history, max_repeats, ngram):
        rows = periodic.nonzero()[:, 0]
        if rows.numel():
            if not copied:
                logits, copied = logits.clone(), True
            logits[rows, token[rows]] = float("-inf")
    return logits


def _should_compact(finished: torch.Tensor, fraction: float) -> bool:
    done = int(finished.sum())
    return done > 0 and done >= fraction * finished.shape[0]


def _stepper(model, enc, enc_lens, prompt, max_len: int, use_cache: bool, static_cache: bool,
             cuda_graph: bool):
    graph = cuda_graph and enc.is_cuda and use_cache
    return make_stepper(model, enc, enc_lens, prompt, max_len, use_cache, static=static_cache or graph,
                        cuda_graph=graph)


@torch.no_grad()
def greedy_decode(
    model,
    enc: torch.Tensor,
    enc_lens: torch.Tensor,
    prompt: torch.Tensor,
    eos_id: int,
    max_len_ratio: float = 0.6,
    use_cache: bool = True,
    force_lengths: torch.Tensor | None = None,
    limits: torch.Tensor | None = None,
    max_repeats: int = 0,
    repeat_ngram: int = 4,
    compact: bool = True,
    compact_fraction: float = 0.1,
    static_cache: bool = False,
    cuda_graph: bool = False,
) -> list[list[int]]:
    """Batched greedy decoding of the attention decoder.

    Args:
        model: an :class:`AEDModel` (eval mode).
        enc: (B, T, D) from ``model.encode``; enc_lens: (B,) int64.
        prompt: (B, P) int64, same length for every row (fed in one step).
        eos_id: end-of-sequence id (removed from the output).
        max_len_ratio: each row generates at most floor(ratio * enc_len) + 3 tokens.
        use_cache: decode on the KV cache (True) or recompute the whole prefix every step (False).
        force_lengths: optional (B,) int64 (benchmarks): row b generates exactly force_lengths[b] tokens,
            ignoring EOS; overrides max_len_ratio.
        limits: optional (B,) int64 token budgets replacing the max_len_ratio ones.
        max_repeats, repeat_ngram: the repetition guard (see the module docstring); 0 = off.
        compact: drop finished rows from the batch and its KV caches (same result, less work).
        compact_fraction: compact once this share of the computed rows has finished.
        static_cache, cuda_graph: decode with :class:`speech_ed.models.steppers.StaticStepper`.

    Returns:
        Per row, the generated token ids after the prompt, EOS excluded.
    """
    b, p = prompt.shape
    if force_lengths is not None:
        limits = force_lengths.long()
    elif limits is None:
        limits = max_new_tokens(enc_lens, max_len_ratio)
    limits = limits.to(enc.device)
    steps = step_budget(model, p, limits)
    if steps == 0:
        return [[] for _ in range(b)]
    stepper = _stepper(model, enc, enc_lens, prompt, p + steps, use_cache, static_cache, cuda_graph)
    out = torch.full((b, steps), eos_id, dtype=torch.long, device=enc.device)
    rows = torch.arange(b, device=enc.device)  # original row of each computed row
    row_limits = limits
    finished = row_limits <= 0
    logits = stepper.first()
    for step in range(steps):
        if max_repeats:
            logits = _block_repeats(logits, out[rows, :step], max_repeats, repeat_ngram)
        token = logits.argmax(dim=-1)
        if force_lengths is not None:
            token = torch.where(token == eos_id, logits.topk(2, dim=-1).indices[:, 1], token)
        token = token.masked_fill(finished, eos_id)
        out[rows, step] = token
        finished = finished | (token == eos_id) | (step + 1 >= row_limits)
        if bool(finished.all()):
            break
        if compact and stepper.can_select and _should_compact(finished, compact_fraction):
            keep = (~finished).nonzero()[:, 0]
            stepper.select(keep)
            rows, row_limits, finished, token = rows[keep], row_limits[keep], finished[keep], token[keep]
        logits = stepper.next(token)
    hyps = []
    for row, limit in zip(out.tolist(), limits.tolist()):
        row = row[:limit]
        if force_lengths is None and eos_id in row:
            row = row[: row.index(eos_id)]
        hyps.append(row)
    return hyps


def _length_norm(score: float, length: int, length_penalty: float, style: str) -> float:
    if style == "gnmt":
        return score / (((5.0 + length) / 6.0) ** length_penalty)
    return score / (max(length, 1) ** length_penalty)


def ctc_greedy_decode(ctc_logits: torch.Tensor, enc_lens: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, collapse repeats, drop blanks.

    Args:
        ctc_logits: (B, T, V); enc_lens: (B,) int64 valid frames.

    Returns:
        Per row, the token ids.
    """
    best = ctc_logits.argmax(dim=-1).cpu()
    hyps = []
    for row, n in zip(best, enc_lens.tolist()):
        collapsed = torch.unique_consecutive(row[:n])
        hyps.append([t for t in collapsed.tolist() if t != blank])
    return hyps


@torch.no_grad()
def decode(model, enc: torch.Tensor, enc_lens: torch.Tensor, prompt: torch.Tensor, eos_id: int,
           options: DecodeOptions, ctc_logits: torch.Tensor | None = None, blank_id: int = 0,
           force_lengths: torch.Tensor | None = None) -> list[list[int]]:
    """Decode one batch as ``options`` say: the one decoding entry point (evaluate, transcribe, bench-rtfx).

    Args:
        model: an :class:`AEDModel` in eval mode.
        enc: (B, T, D) encoder output after the projection; enc_lens: (B,) int64.
        prompt: (B, P) int64 decoder prompt.
        eos_id: end-of-text id.
        options: see :class:`DecodeOptions`.
        ctc_logits: (B, T, V) CTC head output; needed by 'joint', 'ctc' and ``ctc_length_ratio``.
        blank_id: CTC blank.
        force_lengths: (B,) int64, benchmarks only: greedy rows generate exactly this many tokens.

    Returns:
        Per row, token ids after the prompt, EOS excluded.

    Raises:
        ValueError: bad options, or a mode that needs CTC logits without them.
    """
    from speech_ed.models.beam import beam_search

    options.check()
    o = options
    if o.mode in ("joint", "ctc") and ctc_logits is None:
        raise ValueError(f"decoding mode {o.mode!r} needs CTC logits: the model has no CTC head; "
                         "use mode 'attention'")
    if force_lengths is not None and (o.mode != "attention" or o.beam_size != 1):
        raise ValueError("force_lengths (benchmarks) works with greedy attention decoding only")
    if o.mode == "ctc":
        return ctc_greedy_decode(ctc_logits, enc_lens, blank=blank_id)
    limits = max_new_tokens(enc_lens, o.max_len_ratio).to(enc.device)
    if o.ctc_length_ratio and ctc_logits is not None and force_lengths is None:
        ctc_lens = torch.tensor([len(h) for h in ctc_greedy_decode(ctc_logits, enc_lens, blank_id)],
                                device=enc.device)
        limits = torch.minimum(limits, torch.floor(ctc_lens * o.ctc_length_ratio).long() + 3)
    common = {"use_cache": o.use_cache, "limits": limits, "max_repeats": o.max_repeats,
              "repeat_ngram": o.repeat_ngram, "compact": o.compact, "compact_fraction": o.compact_fraction,
              "static_cache": o.static_cache, "cuda_graph": o.cuda_graph}
    if o.mode == "attention" and o.beam_size == 1:
        return greedy_decode(model, enc, enc_lens, prompt, eos_id, force_lengths=force_lengths, **common)
    joint = o.mode == "joint"
    pre_beam = o.pre_beam or max(4, math.ceil(1.5 * o.beam_size))
    return beam_search(model, enc, enc_lens, prompt, eos_id, beam_size=o.beam_size,
                       length_penalty=o.length_penalty, penalty_style=o.penalty_style,
                       ctc_logits=ctc_logits if joint else None, ctc_weight=o.ctc_weight if joint else 0.0,
                       pre_beam=pre_beam, blank_id=blank_id, **common)


DEFAULT_JOINT = {"mode": "joint"}
"""What ``eval.mode=auto`` means for a model with a CTC head (chosen on the embedded dev split: see
docs/DECODING.md); without a CTC head 'auto' is attention decoding."""


def decode_options(eval_cfg, has_ctc: bool) -> DecodeOptions:
    """The :class:`DecodeOptions` of an eval config (``speech_ed.config.EvalConfig``, or any object with
    :class:`DecodeOptions`' fields) for a model with (``has_ctc``) or without a CTC head.

    Raises:
        ValueError: a mode that needs the CTC head on a model without one.
    """
    mode = eval_cfg.mode
    if mode == "auto":
        mode = DEFAULT_JOINT["mode"] if has_ctc else "attention"
    if mode in ("joint", "ctc") and not has_ctc:
        raise ValueError(f"eval.mode={mode} needs a model with a CTC head (this one has none); use "
                         "eval.mode=attention or auto")
    names = {f.name for f in dataclasses.fields(DecodeOptions)}
    values = {k: getattr(eval_cfg, k) for k in names if hasattr(eval_cfg, k) and k != "mode"}
    options = DecodeOptions(mode=mode, **values)
    options.check()
    return options
