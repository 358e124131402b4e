"""Greedy (cached vs uncached), beam search (beam 1 == greedy), forced lengths, KV cache and CTC greedy."""

import dataclasses
import itertools

import pytest
import torch

from speech_ed.config import load_model_preset
from speech_ed.models import AEDModel, beam_search, ctc_greedy_decode, greedy_decode
from speech_ed.models.attention import rel_shift
from speech_ed.models.decoding import _length_norm, max_new_tokens

V, EOS = 40, 2


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
        one = slice(i, i + 1)
        alone = greedy_decode(model, enc[one, :t], enc_lens[one], prompt(1), EOS, max_len_ratio=2.0)
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
    beam = beam_search(model, enc, enc_lens, prompt(4), EOS, beam_size=1, max_len_ratio=2.0,
                       use_cache=use_cache)
    assert beam == greedy


class ToyModel:
    """A decoder whose next-token distribution depends only on the last token, so beam search's answer is
    known: after the prompt A 0.6 / B 0.4; after A: A 0.55 / B 0.45; after B: EOS 0.9 / A 0.1. Greedy follows
    A forever; beam 2 finds "B EOS" (p 0.36) and "A B EOS" (p 0.243)."""

    A, B = 3, 4

    def __init__(self):
        self.dims = dataclasses.replace(load_model_preset("tiny"), vocab_size=5)
        table = torch.full((5, 5), 1e-9)
        table[1, self.A], table[1, self.B] = 0.6, 0.4
        table[self.A, self.A], table[self.A, self.B] = 0.55, 0.45
        table[self.B, EOS], table[self.B, self.A] = 0.9, 0.1
        self.table = table.log()
        self.decoder = self

    def __call__(self, tokens, memory=None, memory_lens=None, cache=None):
        return self.table[tokens]  # (B, U, V)


@pytest.mark.parametrize("penalty_style", ["gnmt", "simple"])
def test_beam_search_finds_what_greedy_misses(penalty_style):
    toy = ToyModel()
    enc, enc_lens = torch.zeros(2, 4, 8), torch.tensor([4, 4])
    p = torch.ones(2, 1, dtype=torch.long)
    limit = int(max_new_tokens(enc_lens, 0.6)[0])
    assert greedy_decode(toy, enc, enc_lens, p, EOS, use_cache=False) == [[toy.A] * limit] * 2
    assert beam_search(toy, enc, enc_lens, p, EOS, beam_size=1, use_cache=False) == [[toy.A] * limit] * 2
    best = beam_search(toy, enc, enc_lens, p, EOS, beam_size=2, length_penalty=0.0,
                       penalty_style=penalty_style, use_cache=False)
    assert best == [[toy.B]] * 2
    with pytest.raises(ValueError, match="penalty_style"):
        beam_search(toy, enc, enc_lens, p, EOS, penalty_style="wrong", use_cache=False)


def brute_force_best(toy, limit, alpha, style):
    """The best length-normalised hypothesis over all A/B strings, by enumeration (same conventions)."""
    best = None
    for n in range(limit + 1):
        for seq in itertools.product([toy.A, toy.B], repeat=n):
            path = [1, *seq] + ([EOS] if n < limit else [])
            score = float(sum(toy.table[a, b] for a, b in zip(path, path[1:])))
            norm = _length_norm(score, len(path) - 1, alpha, style)
            if best is None or norm > best[0]:
                best = (norm, list(seq))
    return best[1]


@pytest.mark.parametrize("style", ["gnmt", "simple"])
@pytest.mark.parametrize("alpha", [0.0, 1.0, 4.0])
def test_beam_search_matches_exhaustive_search_on_toy(style, alpha):
    toy = ToyModel()
    enc, enc_lens = torch.zeros(1, 4, 8), torch.tensor([4])
    limit = int(max_new_tokens(enc_lens, 0.6)[0])
    expected = brute_force_best(toy, limit, alpha, style)
    got = beam_search(toy, enc, enc_lens, torch.ones(1, 1, dtype=torch.long), EOS, beam_size=4,
                      length_penalty=alpha, penalty_style=style, use_cache=False)
    assert got == [expected]
    if alpha == 4.0:
        assert len(expected) > 1  # the penalty really changes the answer (alpha 0 gives [B])


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
