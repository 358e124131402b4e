"""Batched beam search on the KV cache, attention-only or joint with CTC prefix scores.

Shapes: B batch, n utterances still decoded, K beam size, V vocabulary, C = pre-beam candidates per beam,
T encoder frames. Use it through :func:`speech_ed.models.decoding.decode`.
"""

from __future__ import annotations

import torch

from speech_ed.models.ctc_prefix import CTCPrefixScorer
from speech_ed.models.decoding import (
    _block_repeats,
    _length_norm,
    _should_compact,
    _stepper,
    max_new_tokens,
    step_budget,
)


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
    limits: torch.Tensor | None = None,
    ctc_logits: torch.Tensor | None = None,
    ctc_weight: float = 0.0,
    pre_beam: int = 4,
    blank_id: int = 0,
    max_repeats: int = 0,
    repeat_ngram: int = 4,
    compact: bool = True,
    compact_fraction: float = 0.1,
    static_cache: bool = False,
    cuda_graph: bool = False,
) -> list[list[int]]:
    """Batched beam search (all B x K beams advance together).

    Each step ranks the K alive beams' continuations; candidates ending in EOS (all of them once the row's
    token budget is reached) that rank above the K-th kept continuation join the row's finished list (the
    best K are kept), and the best K other continuations stay alive. A row is done when it has K finished
    hypotheses and the worst of them scores at least the best alive beam, or at its budget; decoding stops
    when every row is done. Scores are length-normalised: ``score / ((5 + L) / 6) ** length_penalty`` (GNMT,
    ``penalty_style='gnmt'``) or ``score / L ** length_penalty`` (``'simple'``), L = generated tokens
    including EOS. The answer is the best finished hypothesis. ``beam_size=1`` gives the greedy result.

    With ``ctc_logits`` and ``ctc_weight`` w > 0 a step's score is ``(1 - w) log p_att + w (log psi(g + c) -
    log psi(g))``, psi the CTC prefix probability, over each beam's ``pre_beam`` best attention tokens; EOS gets
    the CTC probability that the output is exactly the prefix.

    Args:
        model, enc, enc_lens, prompt, eos_id, max_len_ratio, use_cache, limits, max_repeats, repeat_ngram,
            compact, compact_fraction, static_cache, cuda_graph: as in
            :func:`speech_ed.models.decoding.greedy_decode`.
        beam_size: K.
        length_penalty: exponent alpha (0 = raw score).
        penalty_style: 'gnmt' or 'simple'.
        ctc_logits: (B, T, V) CTC head output (joint decoding), or None.
        ctc_weight: w in [0, 1).
        pre_beam: attention candidates per beam scored by CTC.
        blank_id: CTC blank.

    Returns:
        Per row, the best hypothesis' tokens after the prompt, EOS excluded.
    """
    if penalty_style not in ("gnmt", "simple"):
        raise ValueError(f"penalty_style must be 'gnmt' or 'simple', got {penalty_style!r}")
    b, p = prompt.shape
    k = beam_size
    dev = enc.device
    limits = (max_new_tokens(enc_lens, max_len_ratio) if limits is None else limits).to(dev)
    steps = step_budget(model, p, limits)
    if steps == 0:
        return [[] for _ in range(b)]
    flat = torch.arange(b, device=dev).repeat_interleave(k)  # beam row -> utterance
    stepper = _stepper(model, enc[flat], enc_lens[flat], prompt[flat], p + steps, use_cache, static_cache,
                       cuda_graph)
    joint = ctc_logits is not None and ctc_weight > 0
    if joint:
        scorer = CTCPrefixScorer(ctc_logits, enc_lens, blank_id)
        state = scorer.initial_state(flat)
    rows = list(range(b))  # utterance of each local row (rows shrink when finished ones are dropped)
    row_limits = [min(n, steps) for n in limits.tolist()]  # the decoder's positions may cap a row's budget
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # identical beams at the start: keep only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    history = torch.zeros(b * k, 0, dtype=torch.long, device=dev)
    logits = stepper.first()
    for step in range(steps):
        n = len(rows)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (n*K, V)
        if max_repeats:
            logp = _block_repeats(logp, history, max_repeats, repeat_ngram)
        if joint:
            att, cand = logp.topk(min(pre_beam, logp.shape[-1]), dim=-1)  # (n*K, C)
            psi, r_n, r_b = scorer.extend(state, cand)
            ctc = torch.where(cand == eos_id, scorer.end_score(state)[:, None], psi) - state.psi[:, None]
            ctc = torch.nan_to_num(ctc, nan=float("-inf"))  # -inf - -inf on dead beams
            step_scores = (1.0 - ctc_weight) * att + ctc_weight * ctc.float()
        else:
            step_scores = logp
        width = step_scores.shape[-1]
        cand_all = (scores[:, :, None] + step_scores.view(n, k, width)).view(n, k * width)
        top_scores, top_idx = cand_all.topk(min(2 * k, k * width), dim=-1)  # (n, 2K)
        parent, col = top_idx // width, top_idx % width
        token = cand.view(n, k, width)[torch.arange(n, device=dev)[:, None], parent, col] if joint else col
        new_scores = torch.full((n, k), float("-inf"), device=dev)
        new_parent = torch.zeros(n, k, dtype=torch.long, device=dev)
        new_col = torch.zeros(n, k, dtype=torch.long, device=dev)
        new_token = torch.full((n, k), eos_id, dtype=torch.long, device=dev)
        ts, tp, tc, tt = top_scores.tolist(), parent.tolist(), col.tolist(), token.tolist()
        hist = history.tolist()
        for i, utt in enumerate(rows):
            if done[utt]:
                continue
            at_limit = step + 1 >= row_limits[utt]
            alive = 0
            for s, par, c, tok in zip(ts[i], tp[i], tc[i], tt[i]):
                if s == float("-inf"):
                    break
                if tok == eos_id or at_limit:
                    seq = hist[i * k + par] + ([] if tok == eos_id else [tok])
                    finished[utt].append((_length_norm(s, step + 1, length_penalty, penalty_style), seq))
                else:
                    new_scores[i, alive], new_parent[i, alive], new_token[i, alive] = s, par, tok
                    new_col[i, alive] = c
                    alive += 1
                    if alive == k:  # lower-ranked candidates (EOS ones included) are dropped
                        break
            finished[utt] = sorted(finished[utt], key=lambda x: -x[0])[:k]
            if at_limit or alive == 0:
                done[utt] = True
            elif len(finished[utt]) >= k:
                # Done when the worst kept hypothesis beats the best alive beam normalised at its current
                # length (exact for length_penalty 0, where scores only fall; the usual heuristic otherwise).
                best_alive = _length_norm(float(new_scores[i, 0]), step + 1, length_penalty, penalty_style)
                done[utt] = finished[utt][-1][0] >= best_alive
        if all(done[utt] for utt in rows):
            break
        index = torch.arange(n, device=dev)[:, None] * k + new_parent  # (n, K) beam each new beam extends
        row_done = torch.tensor([done[utt] for utt in rows], device=dev)
        if compact and stepper.can_select and _should_compact(row_done, compact_fraction):
            keep = (~row_done).nonzero()[:, 0]
            index, new_scores, new_token, new_col = index[keep], new_scores[keep], new_token[keep], new_col[keep]
            rows, row_done = [rows[i] for i in keep.tolist()], row_done[keep]
            stepper.select(index.view(-1))
        else:
            stepper.reorder(index.view(-1))
        history = torch.cat([history[index.view(-1)], new_token.view(-1, 1)], dim=1)
        if joint:
            state = scorer.advance(state, index.view(-1), new_col.view(-1), cand, psi, r_n, r_b)
        scores = new_scores.masked_fill(row_done[:, None], float("-inf"))
        logits = stepper.next(new_token.view(-1))
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]
