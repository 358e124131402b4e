"""Greedy (cached vs uncached), beam search (beam 1 == greedy), forced lengths, KV cache and CTC greedy."""

import dataclasses

import pytest
import torch

from speech_ed.config import load_model_preset
from speech_ed.models import AEDModel, beam_search, ctc_greedy_decode, greedy_decode
from speech_ed.models.attention import rel_shift
from speech_ed.models.decoding import max_new_tokens

V, EOS = 40, 2
EOS_BOOST = 2.5


@pytest.fixture(scope="module", params=["sinusoidal", "learned"])
def model_and_enc(request):
    torch.manual_seed(0)
    dims = dataclasses.replace(load_model_preset("tiny"), vocab_size=V, num_decoder_layers=2,
                               decoder_pos=request.param, pos_enc="rel")
    model = AEDModel(dims).eval()
    lens = torch.tensor([24000, 16000, 7000, 3000])
    audio = torch.randn(4, 24000) * (torch.arange(24000)[None] < lens[:, None])
    enc, enc_lens = model.encode(audio, lens)
    return model, enc, enc_lens


def prompt(b):
    return torch.tensor([[1, 7, 8]]).repeat(b, 1)


def test_greedy_cache_matches_no_cache(model_and_enc):
    model, enc, enc_lens = model_and_enc
    a = greedy_decode(model, enc, enc_lens, prompt(4), EOS, max_len_ratio=2.0, use_cache=True)
    b = greedy_decode(model, enc, enc_lens, prompt(4), EOS, max_len_ratio=2.0, use_cache=False)
    assert a == b
    limits = max_new_tokens(enc_lens, 2.0).tolist()
    assert all(len(h) <= n for h, n in zip(a, limits)) and all(EOS not in h for h in a)
    assert sum(len(h) for h in a) > 0


def test_greedy_rows_match_single_utterance_decoding(model_and_enc):
    """Batching with finished-row masking gives each row what it gets alone."""
    model, enc, enc_lens = model_and_enc
    batched = greedy_decode(model, enc, enc_lens, prompt(4), EOS, max_len_ratio=2.0)
    for i in range(4):
        t = int(enc_lens[i])
        alone = greedy_decode(model, enc[i : i + 1, :t], enc_lens[i : i + 1], prompt(1), EOS, max_len_ratio=2.0)
        assert alone[0] == batched[i]


def test_greedy_stops_at_eos(model_and_enc):
    """With EOS made the best token after the prompt's first step, every hypothesis is empty."""
    model, enc, enc_lens = model_and_enc
    bias = torch.zeros(V)
    bias[EOS] = 100.0
    model.decoder.output.register_forward_hook(lambda m, i, o: o + bias)
    try:
        assert greedy_decode(model, enc, enc_lens, prompt(4), EOS) == [[], [], [], []]
        assert beam_search(model, enc, enc_lens, prompt(4), EOS, beam_size=3) == [[], [], [], []]
    finally:
        model.decoder.output._forward_hooks.clear()


def test_forced_lengths(model_and_enc):
    model, enc, enc_lens = model_and_enc
    force = torch.tensor([9, 0, 4, 1])
    hyps = greedy_decode(model, enc, enc_lens, prompt(4), EOS, force_lengths=force)
    assert [len(h) for h in hyps] == force.tolist() and all(EOS not in h for h in hyps)
    again = greedy_decode(model, enc, enc_lens, prompt(4), EOS, force_lengths=force, use_cache=False)
    assert hyps == again


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_one_equals_greedy(model_and_enc, use_cache):
    model, enc, enc_lens = model_and_enc
    greedy = greedy_decode(model, enc, enc_lens, prompt(4), EOS, max_len_ratio=2.0)
    beam = beam_search(model, enc, enc_lens, prompt(4), EOS, beam_size=1, max_len_ratio=2.0, use_cache=use_cache)
    assert beam == greedy


@torch.no_grad()
def sequence_logprob(model, enc, enc_lens, i, hyp, eos_terminated=True):
    toks = prompt(1)[0].tolist() + hyp
    t = int(enc_lens[i])
    logits = model.decoder(torch.tensor([toks]), enc[i : i + 1, :t], enc_lens[i : i + 1])
    logp = torch.log_softmax(logits[0].float(), -1)
    targets = hyp + ([EOS] if eos_terminated else [])
    start = len(toks) - len(hyp) - 1
    return float(sum(logp[start + j, tok] for j, tok in enumerate(targets)))


def test_beam_search_scores_at_least_greedy(model_and_enc):
    """With no length penalty, beam 4 finds a hypothesis at least as likely as greedy's (both end in EOS)."""
    model, enc, enc_lens = model_and_enc
    bias = torch.zeros(V)
    bias[EOS] = EOS_BOOST  # a random model rarely ends; make EOS a contender so hypotheses terminate
    model.decoder.output.register_forward_hook(lambda m, i, o: o + bias)
    try:
        greedy = greedy_decode(model, enc, enc_lens, prompt(4), EOS, max_len_ratio=8.0)
        beam = beam_search(model, enc, enc_lens, prompt(4), EOS, beam_size=4, length_penalty=0.0,
                           max_len_ratio=8.0)
        uncached = beam_search(model, enc, enc_lens, prompt(4), EOS, beam_size=4, length_penalty=0.0,
                               max_len_ratio=8.0, use_cache=False)
        assert beam == uncached
        limits = max_new_tokens(enc_lens, 8.0).tolist()
        compared = better = 0
        for i in range(4):
            if len(greedy[i]) < limits[i] and len(beam[i]) < limits[i]:
                g = sequence_logprob(model, enc, enc_lens, i, greedy[i])
                b = sequence_logprob(model, enc, enc_lens, i, beam[i])
                assert b >= g - 1e-4
                compared += 1
                better += b > g + 1e-4
    finally:
        model.decoder.output._forward_hooks.clear()
    assert compared >= 2


def test_ctc_greedy_collapses_repeats_and_blanks():
    ids = [[0, 3, 3, 0, 3, 5, 5, 0, 0, 7], [4, 4, 0, 4, 9, 9, 9, 9, 9, 9]]
    logits = torch.nn.functional.one_hot(torch.tensor(ids), 10).float()
    assert ctc_greedy_decode(logits, torch.tensor([10, 4])) == [[3, 3, 5, 7], [4, 4]]
    assert ctc_greedy_decode(logits, torch.tensor([1, 0])) == [[], []]


def test_rel_shift_matches_explicit_indexing():
    t = 5
    x = torch.randn(2, 3, t, 2 * t - 1)  # column j = relative position (t - 1) - j
    expected = torch.empty(2, 3, t, t)
    for i in range(t):
        for j in range(t):
            expected[:, :, i, j] = x[:, :, i, (t - 1) - (i - j)]
    torch.testing.assert_close(rel_shift(x), expected)


def test_kv_cache_logits_match_full_pass(model_and_enc):
    """Feeding tokens one by one on the cache gives the same logits as one full teacher-forced pass."""
    model, enc, enc_lens = model_and_enc
    tokens = torch.randint(3, V, (4, 7))
    full = model.decoder(tokens, enc, enc_lens)
    cache = model.decoder.init_cache(enc, enc_lens, max_len=7)
    steps = [model.decoder(tokens[:, :3], cache=cache)]
    steps += [model.decoder(tokens[:, j : j + 1], cache=cache) for j in range(3, 7)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 7
    with pytest.raises(ValueError, match="max_decoder_positions"):
        model.decoder.init_cache(enc, enc_lens, max_len=10_000)
