"""Frozen copy of speech_ed/models/decoding.py before finished-row compaction and joint CTC decoding.

Reference for tests/models/test_decoding.py and scripts/bench_decode_compaction.py: the new decoders must give
exactly what these give. Do not edit (it is the baseline being compared against).
"""

from __future__ import annotations

import torch

from speech_ed.models.decoder import KVCache


def max_new_tokens(enc_lens: torch.Tensor, max_len_ratio: float) -> torch.Tensor:
    """(B,) int64 token budget per row: floor(max_len_ratio * enc_len) + 3 (ESPnet's maxlenratio)."""
    return torch.floor(enc_lens.float() * max_len_ratio).long() + 3


def _step_budget(model, prompt_len: int, limits: torch.Tensor) -> int:
    """Decoding steps: the largest row budget, capped so prompt + output fits the decoder's positions."""
    return max(0, min(int(limits.max()), model.dims.max_decoder_positions - prompt_len))


class _Stepper:
    """Feeds tokens to the decoder either on the KV cache or by recomputing the whole prefix."""

    def __init__(self, model, enc, enc_lens, prompt, max_len: int, use_cache: bool):
        self.decoder, self.enc, self.enc_lens = model.decoder, enc, enc_lens
        self.cache: KVCache | None = model.decoder.init_cache(enc, enc_lens, max_len) if use_cache else None
        self.tokens = prompt

    def first(self) -> torch.Tensor:
        """Logits (B, V) after the prompt, fed in one step."""
        return self.decoder(self.tokens, self.enc, self.enc_lens, self.cache)[:, -1]

    def next(self, new: torch.Tensor) -> torch.Tensor:
        """Append new (B,) tokens; return logits (B, V) for the following position."""
        self.tokens = torch.cat([self.tokens, new[:, None]], dim=1)
        if self.cache is not None:
            return self.decoder(new[:, None], cache=self.cache)[:, -1]
        return self.decoder(self.tokens, self.enc, self.enc_lens)[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        self.tokens = self.tokens[index]
        if self.cache is not None:
            self.cache.reorder(index)


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
) -> list[list[int]]:
    """Batched greedy decoding.

    Args:
        model: an :class:`AEDModel` (eval mode).
        enc: (B, T, D) from ``model.encode``; enc_lens: (B,) int64.
        prompt: (B, P) int64, same length for every row (fed in one step).
        eos_id: end-of-sequence id (removed from the output).
        max_len_ratio: each row generates at most floor(ratio * enc_len) + 3 tokens.
        use_cache: decode on the KV cache (True) or recompute the whole prefix every step (False).
        force_lengths: optional (B,) int64 (benchmarks): row b generates exactly force_lengths[b] tokens,
            ignoring EOS; overrides max_len_ratio.

    Returns:
        Per row, the generated token ids after the prompt, EOS excluded.
    """
    b, p = prompt.shape
    limits = max_new_tokens(enc_lens, max_len_ratio) if force_lengths is None else force_lengths.long()
    limits = limits.to(enc.device)
    steps = _step_budget(model, p, limits)
    stepper = _Stepper(model, enc, enc_lens, prompt, p + steps, use_cache)
    finished = limits <= 0
    out = []
    logits = stepper.first() if steps > 0 else None
    for step in range(steps):
        token = logits.argmax(dim=-1)
        if force_lengths is not None:
            token = torch.where(token == eos_id, logits.topk(2, dim=-1).indices[:, 1], token)
        token = token.masked_fill(finished, eos_id)
        out.append(token)
        finished = finished | (token == eos_id) | (step + 1 >= limits)
        if bool(finished.all()):
            break
        logits = stepper.next(token)
    if not out:
        return [[] for _ in range(b)]
    rows = torch.stack(out, dim=1).tolist()
    hyps = []
    for row, limit in zip(rows, limits.tolist()):
        row = row[:limit]
        if force_lengths is None and eos_id in row:
            row = row[: row.index(eos_id)]
        hyps.append(row)
    return hyps


def _length_norm(score: float, length: int, length_penalty: float, style: str) -> float:
    if style == "gnmt":
        return score / (((5.0 + length) / 6.0) ** length_penalty)
    return score / (max(length, 1) ** length_penalty)


@torch.no_grad()
def beam_search(
    model,
    enc: torch.Tensor,
    enc_lens: torch.Tensor,
    prompt: torch.Tensor,
    eos_id: int,
    beam_size: int = 4,
    length_penalty: float = 1.0,
    penalty_style: str = "gnmt",
    max_len_ratio: float = 0.6,
    use_cache: bool = True,
) -> list[list[int]]:
    """Batched beam search on the KV cache (all B x K beams advance together).

    Each step ranks the K alive beams' continuations; candidates ending in EOS (all of them once the row's
    token budget is reached) that rank above the K-th kept continuation join the row's finished list (the
    best K are kept), and the best K other continuations stay alive. A row is done when it has K finished
    hypotheses and the worst of them scores at least the best alive beam, or at its budget; decoding stops
    when every row is done. Scores are length-normalised log-probabilities: ``score / ((5 + L) / 6) **
    length_penalty`` (GNMT, ``penalty_style='gnmt'``) or ``score / L ** length_penalty`` (``'simple'``), L =
    generated tokens including EOS. The answer is the best finished hypothesis. ``beam_size=1`` gives the
    greedy result.

    Args:
        model, enc, enc_lens, prompt, eos_id, max_len_ratio, use_cache: as in :func:`greedy_decode`.
        beam_size: K.
        length_penalty: exponent alpha (0 = raw log-probability).
        penalty_style: 'gnmt' or 'simple'.

    Returns:
        Per row, the best hypothesis' tokens after the prompt, EOS excluded.
    """
    if penalty_style not in ("gnmt", "simple"):
        raise ValueError(f"penalty_style must be 'gnmt' or 'simple', got {penalty_style!r}")
    b, p = prompt.shape
    k = beam_size
    limits = max_new_tokens(enc_lens, max_len_ratio).to(enc.device)
    steps = _step_budget(model, p, limits)
    if steps == 0:
        return [[] for _ in range(b)]
    flat = torch.arange(b, device=enc.device).repeat_interleave(k)  # beam row -> utterance
    stepper = _Stepper(model, enc[flat], enc_lens[flat], prompt[flat], p + steps, use_cache)
    scores = torch.full((b, k), float("-inf"), device=enc.device)
    scores[:, 0] = 0.0  # identical beams at the start: keep only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    history = torch.zeros(b * k, 0, dtype=torch.long, device=enc.device)
    logits = stepper.first()
    for step in range(steps):
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
        v = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(b, k, v)).view(b, k * v)
        top_scores, top_idx = cand.topk(min(2 * k, k * v), dim=-1)  # (B, 2K)
        parent, token = top_idx // v, top_idx % v
        new_scores = torch.full((b, k), float("-inf"), device=enc.device)
        new_parent = torch.zeros(b, k, dtype=torch.long, device=enc.device)
        new_token = torch.full((b, k), eos_id, dtype=torch.long, device=enc.device)
        ts, tp, tt = top_scores.tolist(), parent.tolist(), token.tolist()
        hist = history.tolist()
        for i in range(b):
            if done[i]:
                continue
            at_limit = step + 1 >= int(limits[i])
            alive = 0
            for s, par, tok in zip(ts[i], tp[i], tt[i]):
                if s == float("-inf"):
                    break
                if tok == eos_id or at_limit:
                    seq = hist[i * k + par] + ([] if tok == eos_id else [tok])
                    finished[i].append((_length_norm(s, step + 1, length_penalty, penalty_style), seq))
                else:
                    new_scores[i, alive], new_parent[i, alive], new_token[i, alive] = s, par, tok
                    alive += 1
                    if alive == k:  # lower-ranked candidates (EOS ones included) are dropped
                        break
            finished[i] = sorted(finished[i], key=lambda x: -x[0])[:k]
            if at_limit or alive == 0:
                done[i] = True
            elif len(finished[i]) >= k:
                # Done when the worst kept hypothesis beats the best alive beam normalised at its current
                # length (exact for length_penalty 0, where scores only fall; the usual heuristic otherwise).
                best_alive = _length_norm(float(new_scores[i, 0]), step + 1, length_penalty, penalty_style)
                done[i] = finished[i][-1][0] >= best_alive
        if all(done):
            break
        index = (torch.arange(b, device=enc.device)[:, None] * k + new_parent).view(-1)
        history = torch.cat([history[index], new_token.view(-1, 1)], dim=1)
        scores = new_scores.masked_fill(torch.tensor(done, device=enc.device)[:, None], float("-inf"))
        stepper.reorder(index)
        logits = stepper.next(new_token.view(-1))
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]


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
