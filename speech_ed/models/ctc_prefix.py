"""CTC prefix scores for joint CTC/attention decoding, every frame at once.

Shapes: B utterances, N hypotheses (rows of the decoding batch, e.g. B x K beams), T encoder frames,
C candidate tokens per hypothesis, V vocabulary.

The prefix score of a token sequence h is the CTC probability of all label sequences that start with h
(Watanabe et al. 2017, "Hybrid CTC/attention architecture"). With ``x_t(c)`` the CTC log-probability of token
c at frame t and ``b`` the blank, a prefix g carries two forward variables per frame, ``r_n[t]`` (paths
ending in g's last token at t) and ``r_b[t]`` (ending in blank). Extending g by c::

    phi[t]    = logaddexp(r_b[t], r_n[t])   (r_b[t] alone when c repeats g's last token)
    r_n'(t)   = logaddexp(r_n'(t-1), phi[t-1]) + x_t(c)
    r_b'(t)   = logaddexp(r_n'(t-1), r_b'(t-1)) + x_t(b)
    psi(g+c)  = logsumexp_t phi[t-1] + x_t(c)        (phi[-1] = 0 for the empty prefix, else -inf)

and the probability that the sequence ends with g is ``logaddexp(r_n[T-1], r_b[T-1])``. Both recurrences are
first-order linear in probability space, so instead of a Python loop over T they are solved in closed form:
``r_n'(t) = X_t + logcumsumexp_s(phi[s-1] - X_{s-1})`` with ``X_t`` the cumulative sum of ``x_u(c)``, and the
same for ``r_b'`` with the blank's cumulative sum. Each decoding step is a handful of tensor operations on
(N, C, T), computed in float64 because the cumulative sums reach thousands of nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")
_FLOOR = -1.0e4  # log-probabilities are clamped here: -inf would give inf - inf in the closed forms


@dataclass
class CTCPrefixState:
    """Forward variables of N prefixes.

    Attributes:
        r_n, r_b: (N, T) float64 log forward variables (see the module docstring).
        psi: (N,) float64 prefix log-probabilities.
        last: (N,) int64 last token of each prefix (-1 for the empty prefix).
        start: (N,) float64 ``phi[-1]``: 0 for the empty prefix, -inf otherwise.
        utt: (N,) int64 utterance of each row (several beams share an utterance's CTC output).
    """

    r_n: torch.Tensor
    r_b: torch.Tensor
    psi: torch.Tensor
    last: torch.Tensor
    start: torch.Tensor
    utt: torch.Tensor

    def select(self, index: torch.Tensor) -> CTCPrefixState:
        """The rows ``index`` (M,) of this state (beam reordering, dropping finished rows)."""
        return CTCPrefixState(self.r_n[index], self.r_b[index], self.psi[index], self.last[index],
                              self.start[index], self.utt[index])


class CTCPrefixScorer:
    """Scores candidate extensions of many prefixes against one batch of CTC outputs.

    Args:
        ctc_logits: (B, T, V) CTC logits (any float dtype; log-softmax is taken here in float32).
        lens: (B,) int64 valid frames.
        blank: blank id.
    """

    def __init__(self, ctc_logits: torch.Tensor, lens: torch.Tensor, blank: int = 0):
        logp = torch.log_softmax(ctc_logits.float(), dim=-1).clamp(min=_FLOOR).double()
        t = logp.shape[1]
        self.blank, self.num_frames = blank, t
        self.lens = lens.to(logp.device).long()
        self.logp_vt = logp.transpose(1, 2).contiguous()  # (B, V, T): candidates gather (N, C, T) directly
        self.blank_cum = logp[:, :, blank].cumsum(dim=1)  # (B, T)
        frames = torch.arange(t, device=logp.device)
        self.valid = frames[None, :] < self.lens[:, None]  # (B, T)

    def initial_state(self, utt: torch.Tensor) -> CTCPrefixState:
        """The empty prefix for rows of utterances ``utt`` (N,): all paths are blanks so far."""
        n = utt.shape[0]
        dev = self.logp_vt.device
        return CTCPrefixState(
            r_n=torch.full((n, self.num_frames), NEG_INF, dtype=torch.float64, device=dev),
            r_b=self.blank_cum[utt].clone(), psi=torch.zeros(n, dtype=torch.float64, device=dev),
            last=torch.full((n,), -1, dtype=torch.long, device=dev),
            start=torch.zeros(n, dtype=torch.float64, device=dev), utt=utt.clone())

    def end_score(self, state: CTCPrefixState) -> torch.Tensor:
        """(N,) float64: log-probability that the whole CTC output is exactly each prefix."""
        idx = (self.lens[state.utt] - 1).clamp(min=0)[:, None]
        return torch.logaddexp(state.r_n.gather(1, idx), state.r_b.gather(1, idx))[:, 0]

    def extend(self, state: CTCPrefixState, cands: torch.Tensor):
        """Prefix scores of every candidate extension.

        Args:
            state: N prefixes.
            cands: (N, C) int64 candidate tokens (the blank scores -inf).

        Returns:
            ``(psi, r_n, r_b)``: (N, C) float64 prefix log-probabilities of ``prefix + candidate`` and their
            (N, C, T) forward variables (pass them to :meth:`advance` for the candidates kept).
        """
        x = self.logp_vt[state.utt[:, None], cands]  # (N, C, T)
        r_sum = torch.logaddexp(state.r_n, state.r_b)
        repeat = cands == state.last[:, None]  # (N, C): a repeated token must pass through a blank
        phi = torch.where(repeat[:, :, None], state.r_b[:, None, :], r_sum[:, None, :])  # (N, C, T)
        phi_prev = torch.cat([state.start[:, None, None].expand(-1, cands.shape[1], 1), phi[:, :, :-1]], 2)
        x_cum = x.cumsum(dim=2)
        x_cum_prev = x_cum - x
        r_n = x_cum + torch.logcumsumexp(phi_prev - x_cum_prev, dim=2)
        valid = self.valid[state.utt][:, None, :]
        psi = torch.logsumexp((phi_prev + x).masked_fill(~valid, NEG_INF), dim=2)
        b_cum = self.blank_cum[state.utt][:, None, :]  # (N, 1, T)
        acc = torch.logcumsumexp(r_n - b_cum, dim=2)
        r_b = torch.cat([torch.full_like(acc[:, :, :1], NEG_INF), b_cum[:, :, 1:] + acc[:, :, :-1]], dim=2)
        psi = psi.masked_fill(cands == self.blank, NEG_INF)
        return psi, r_n, r_b

    @staticmethod
    def advance(state: CTCPrefixState, rows: torch.Tensor, cols: torch.Tensor, cands: torch.Tensor,
                psi: torch.Tensor, r_n: torch.Tensor, r_b: torch.Tensor) -> CTCPrefixState:
        """The state of the kept extensions: candidate ``cols[i]`` of row ``rows[i]`` (M,), from :meth:`extend`."""
        return CTCPrefixState(r_n[rows, cols], r_b[rows, cols], psi[rows, cols], cands[rows, cols],
                              torch.full_like(state.start[rows], NEG_INF), state.utt[rows])


def ctc_sequence_logprob(ctc_logits: torch.Tensor, lens: torch.Tensor, tokens: list[list[int]],
                         blank: int = 0) -> torch.Tensor:
    """(B,) float64 CTC log-probability of whole token sequences, one per utterance (for tests and rescoring).

    Computed by feeding each sequence through :class:`CTCPrefixScorer` token by token and reading
    :meth:`CTCPrefixScorer.end_score`, so it agrees with ``torch.nn.functional.ctc_loss`` only if the scorer
    is right.
    """
    scorer = CTCPrefixScorer(ctc_logits, lens, blank)
    out = []
    for i, seq in enumerate(tokens):
        state = scorer.initial_state(torch.tensor([i], device=scorer.logp_vt.device))
        for tok in seq:
            cand = torch.tensor([[tok]], device=scorer.logp_vt.device)
            psi, r_n, r_b = scorer.extend(state, cand)
            zero = torch.zeros(1, dtype=torch.long, device=cand.device)
            state = scorer.advance(state, zero, zero, cand, psi, r_n, r_b)
        out.append(scorer.end_score(state)[0])
    return torch.stack(out)
