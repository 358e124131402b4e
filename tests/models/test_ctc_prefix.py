"""CTC prefix scores (closed form) against brute force and ctc_loss; joint CTC/attention decoding."""

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from speech_ed.config import load_model_preset
from speech_ed.models import AEDModel, DecodeOptions, decode
from speech_ed.models.ctc_prefix import CTCPrefixScorer, ctc_sequence_logprob

V, EOS = 40, 2


def collapse(path):
    out, prev = [], None
    for x in path:
        if x != prev and x != 0:
            out.append(x)
        prev = x
    return out


def brute_force_prefix(logp: torch.Tensor, prefix: list[int]) -> float:
    """log sum of P(path) over every frame alignment whose collapsed labels start with ``prefix``."""
    t, v = logp.shape
    total = -math.inf
    for path in itertools.product(range(v), repeat=t):
        if collapse(path)[: len(prefix)] == prefix:
            total = float(torch.logaddexp(torch.tensor(total), sum(logp[i, x] for i, x in enumerate(path))))
    return total


def extend_by(scorer, state, tokens):
    zero = torch.zeros(1, dtype=torch.long)
    for tok in tokens:
        cand = torch.tensor([[tok]])
        psi, r_n, r_b = scorer.extend(state, cand)
        state = scorer.advance(state, zero, zero, cand, psi, r_n, r_b)
    return state


@pytest.mark.parametrize("prefix", [[1], [1, 1], [2, 1], [3, 3, 1], [1, 2, 3]])
def test_prefix_score_equals_brute_force(prefix):
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 4) * 2
    lens = torch.tensor([6, 4])  # row 1 has 2 padded frames, which must not count
    scorer = CTCPrefixScorer(logits, lens)
    logp = torch.log_softmax(logits.double(), -1)
    for b in range(2):
        state = extend_by(scorer, scorer.initial_state(torch.tensor([b])), prefix[:-1])
        psi, _, _ = scorer.extend(state, torch.tensor([[prefix[-1]]]))
        assert float(psi[0, 0]) == pytest.approx(brute_force_prefix(logp[b, : lens[b]], prefix), abs=1e-5)


def test_end_score_equals_ctc_loss():
    torch.manual_seed(1)
    logits = torch.randn(3, 12, 7)
    lens = torch.tensor([12, 9, 5])
    seqs = [[1, 2, 2, 3], [4, 4], [6]]
    targets = torch.tensor([[1, 2, 2, 3], [4, 4, 0, 0], [6, 0, 0, 0]])
    expected = -F.ctc_loss(torch.log_softmax(logits, -1).transpose(0, 1), targets, lens, torch.tensor([4, 2, 1]),
                           reduction="none")
    torch.testing.assert_close(ctc_sequence_logprob(logits, lens, seqs).float(), expected, atol=1e-4, rtol=1e-5)
    # the blank can never be a label
    scorer = CTCPrefixScorer(logits, lens)
    psi, _, _ = scorer.extend(scorer.initial_state(torch.arange(3)), torch.tensor([[0, 1]] * 3))
    assert torch.isinf(psi[:, 0]).all() and torch.isfinite(psi[:, 1]).all()


@pytest.fixture(scope="module")
def model_and_enc():
    torch.manual_seed(2)
    dims = dataclasses.replace(load_model_preset("tiny"), vocab_size=V, num_decoder_layers=2)
    model = AEDModel(dims).eval()
    lens = torch.tensor([24000, 20000, 16000, 12000, 9000, 7000])
    audio = torch.randn(6, 24000) * (torch.arange(24000)[None] < lens[:, None])
    with torch.no_grad():
        enc, enc_lens, _ = model.encode_with_ctc(audio, lens)
    return model, enc, enc_lens


def peaked_ctc(enc_lens, t, seqs):
    """CTC logits that spell ``seqs[b]`` (each token over two frames, blanks between), near-deterministically."""
    logits = torch.full((len(seqs), t, V), -8.0)
    logits[:, :, 0] = 8.0
    for b, seq in enumerate(seqs):
        for j, tok in enumerate(seq):
            logits[b, 3 * j + 1 : 3 * j + 3, 0] = -8.0
            logits[b, 3 * j + 1 : 3 * j + 3, tok] = 8.0
    return logits


@pytest.mark.parametrize("beam", [1, 3])
def test_joint_decoding_follows_a_confident_ctc(model_and_enc, beam):
    """A random attention decoder plus a CTC head sure of the text: joint decoding outputs the CTC's text."""
    model, enc, enc_lens = model_and_enc
    seqs = [[5, 6, 7, 8], [9, 9, 10], [11, 12], [13], [14, 15, 16], [17, 18]]
    ctc = peaked_ctc(enc_lens, enc.shape[1], seqs)
    prompt = torch.ones(6, 1, dtype=torch.long)
    attention = decode(model, enc, enc_lens, prompt, EOS, DecodeOptions(beam_size=beam))
    assert attention != seqs
    joint = decode(model, enc, enc_lens, prompt, EOS,
                   DecodeOptions(mode="joint", beam_size=beam, ctc_weight=0.7, pre_beam=V), ctc_logits=ctc)
    assert joint == seqs


@pytest.mark.parametrize("beam", [1, 2, 4])
def test_joint_compaction_and_static_step_change_nothing(model_and_enc, beam):
    model, enc, enc_lens = model_and_enc
    ctc = peaked_ctc(enc_lens, enc.shape[1], [[5, 6, 7, 8], [9, 9, 10], [11, 12], [13], [14, 15, 16], [17, 18]])
    g = torch.Generator().manual_seed(0)
    prompt = torch.cat([torch.ones(6, 1, dtype=torch.long), torch.randint(3, V, (6, 2), generator=g)], 1)
    base = DecodeOptions(mode="joint", beam_size=beam, ctc_weight=0.3, max_len_ratio=1.0)
    ref = decode(model, enc, enc_lens, prompt, EOS, dataclasses.replace(base, compact=False), ctc_logits=ctc)
    assert decode(model, enc, enc_lens, prompt, EOS, base, ctc_logits=ctc) == ref
    static = dataclasses.replace(base, static_cache=True)
    assert decode(model, enc, enc_lens, prompt, EOS, static, ctc_logits=ctc) == ref
    assert len({len(h) for h in ref}) > 1
