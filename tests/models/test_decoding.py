"""Greedy (cached vs uncached), beam search (beam 1 == greedy), forced lengths, KV cache, CTC greedy; finished-row
compaction and the static (CUDA-graph) step give exactly what today's decoder gives; the repetition guard."""

import dataclasses
import itertools
import sys
from pathlib import Path

import pytest
import torch

from speech_ed.config import load_model_preset
from speech_ed.models import AEDModel, DecodeOptions, beam_search, ctc_greedy_decode, decode, greedy_decode
from speech_ed.models.attention import rel_shift
from speech_ed.models.decoding import _length_norm, max_new_tokens, repeat_blocked
from speech_ed.models.steppers import DynamicStepper, StaticStepper

sys.path.insert(0, str(Path(__file__).parent))
import decoding_baseline as baseline

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


def test_beam_search_returns_the_best_beam_when_the_decoder_positions_end_first(model_and_enc):
    """A row budget beyond the decoder's positions: the positions end the search, and every row still gets its
    best beam (it used to come back empty when no EOS had been emitted by then)."""
    model, enc, enc_lens = model_and_enc
    bias = torch.zeros(V)
    bias[EOS] = -100.0  # never end on its own
    model.decoder.output.register_forward_hook(lambda m, i, o: o + bias)
    try:
        cap = model.dims.max_decoder_positions - 3
        big = torch.full((4,), cap + 50)
        hyps = beam_search(model, enc, enc_lens, prompt(4), EOS, beam_size=2, limits=big)
        assert [len(h) for h in hyps] == [cap] * 4
    finally:
        model.decoder.output._forward_hooks.clear()


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


@pytest.fixture(scope="module")
def mixed_batch():
    """12 utterances of different lengths, so rows reach their token budgets (or EOS) at different steps."""
    torch.manual_seed(1)
    dims = dataclasses.replace(load_model_preset("tiny"), vocab_size=V, num_decoder_layers=2)
    model = AEDModel(dims).eval()
    lens = torch.randint(3000, 24000, (12,))
    audio = torch.randn(12, 24000) * (torch.arange(24000)[None] < lens[:, None])
    enc, enc_lens = model.encode(audio, lens)
    return model, enc, enc_lens


def mixed_prompt(b=12):
    """Different prompt tokens per row: a random model then stops its rows at different steps."""
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.ones(b, 1, dtype=torch.long), torch.randint(3, V, (b, 2), generator=g)], dim=1)


class CountSelects:
    """Counts DynamicStepper.select calls (proves the compacted path really ran)."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = DynamicStepper.select

        def select(stepper, index):
            self.calls.append(index.shape[0])
            return original(stepper, index)

        monkeypatch.setattr(DynamicStepper, "select", select)


def eos_bias(model, bias: float):
    """Raise EOS's logit by ``bias`` (rows stop earlier)."""
    add = torch.zeros(V)
    add[EOS] = bias
    return model.decoder.output.register_forward_hook(lambda m, i, o: o + add)


@pytest.mark.parametrize("bias", [0.0, 0.5])
@pytest.mark.parametrize("use_cache", [True, False])
def test_compacted_greedy_equals_todays_decoder(mixed_batch, bias, use_cache, monkeypatch):
    model, enc, enc_lens = mixed_batch
    counter = CountSelects(monkeypatch)
    hook = eos_bias(model, bias)
    try:
        ref = baseline.greedy_decode(model, enc, enc_lens, mixed_prompt(), EOS, max_len_ratio=2.0, use_cache=use_cache)
        full = greedy_decode(model, enc, enc_lens, mixed_prompt(), EOS, max_len_ratio=2.0, use_cache=use_cache,
                             compact=False)
        assert counter.calls == []
        got = greedy_decode(model, enc, enc_lens, mixed_prompt(), EOS, max_len_ratio=2.0, use_cache=use_cache)
    finally:
        hook.remove()
    assert got == ref and full == ref
    assert len(counter.calls) >= 2 and counter.calls[-1] < 12  # the batch really shrank, more than once
    assert len({len(h) for h in ref}) > 2  # rows ended at different steps


def test_compacted_forced_lengths_equal_todays_decoder(mixed_batch, monkeypatch):
    model, enc, enc_lens = mixed_batch
    counter = CountSelects(monkeypatch)
    force = torch.tensor([9, 0, 4, 1, 30, 2, 2, 17, 5, 3, 11, 8])
    ref = baseline.greedy_decode(model, enc, enc_lens, mixed_prompt(), EOS, force_lengths=force)
    got = greedy_decode(model, enc, enc_lens, mixed_prompt(), EOS, force_lengths=force)
    assert got == ref and [len(h) for h in got] == force.tolist() and counter.calls


@pytest.mark.parametrize("bias", [0.0, 0.5])
@pytest.mark.parametrize("beam,alpha", [(3, 1.0), (2, 0.0)])
def test_compacted_beam_search_equals_todays_decoder(mixed_batch, bias, beam, alpha, monkeypatch):
    model, enc, enc_lens = mixed_batch
    counter = CountSelects(monkeypatch)
    hook = eos_bias(model, bias)
    try:
        ref = baseline.beam_search(model, enc, enc_lens, mixed_prompt(), EOS, beam_size=beam, length_penalty=alpha,
                                   max_len_ratio=1.0)
        got = beam_search(model, enc, enc_lens, mixed_prompt(), EOS, beam_size=beam, length_penalty=alpha,
                          max_len_ratio=1.0)
        full = beam_search(model, enc, enc_lens, mixed_prompt(), EOS, beam_size=beam, length_penalty=alpha,
                           max_len_ratio=1.0, compact=False)
    finally:
        hook.remove()
    assert got == ref and full == ref
    assert counter.calls and counter.calls[-1] < 12 * beam


@pytest.mark.parametrize("beam", [1, 3])
def test_static_step_equals_dynamic_cache(mixed_batch, beam, monkeypatch):
    """The fixed-shape step (what a CUDA graph replays) run eagerly on CPU gives the dynamic path's output."""
    model, enc, enc_lens = mixed_batch
    steps = []
    original = StaticStepper._step
    monkeypatch.setattr(StaticStepper, "_step", lambda self: steps.append(1) or original(self))
    dynamic = decode(model, enc, enc_lens, mixed_prompt(), EOS, DecodeOptions(beam_size=beam, max_len_ratio=1.0))
    static = decode(model, enc, enc_lens, mixed_prompt(), EOS,
                    DecodeOptions(beam_size=beam, max_len_ratio=1.0, static_cache=True))
    assert static == dynamic and len(steps) > 5


NEMO_STYLE = {"decoder_embed_scale": False, "decoder_pos_scale": "inv_sqrt_dim", "decoder_embed_norm": True,
              "output_bias": True}


@pytest.mark.parametrize("variant", ["default", "nemo_style"])
def test_static_step_logits_match_cache_step(mixed_batch, variant):
    model, enc, enc_lens = mixed_batch
    if variant == "nemo_style":  # the decoder's embedding options (when this checkout has them)
        from speech_ed.models.dims import ModelDims

        if not all(hasattr(ModelDims, k) for k in NEMO_STYLE):
            pytest.skip("ModelDims has no NeMo-style decoder options")
        torch.manual_seed(4)
        model = AEDModel(dataclasses.replace(model.dims, **NEMO_STYLE)).eval()
    tokens = torch.randint(3, V, (12, 6))
    dyn = DynamicStepper(model, enc, enc_lens, tokens[:, :3], 8, use_cache=True)
    sta = StaticStepper(model, enc, enc_lens, tokens[:, :3], 8)
    torch.testing.assert_close(sta.first(), dyn.first())
    for j in range(3, 6):
        torch.testing.assert_close(sta.next(tokens[:, j]), dyn.next(tokens[:, j]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="CUDA"):
        StaticStepper(model, enc, enc_lens, tokens[:, :3], 8, cuda_graph=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("beam", [1, 3])
def test_cuda_graph_decoding_equals_eager(mixed_batch, beam):
    model, enc, enc_lens = mixed_batch
    model = model.to("cuda")
    enc, enc_lens, p = enc.cuda(), enc_lens.cuda(), mixed_prompt().cuda()
    try:
        eager = decode(model, enc, enc_lens, p, EOS, DecodeOptions(beam_size=beam, cuda_graph=False))
        graph = decode(model, enc, enc_lens, p, EOS, DecodeOptions(beam_size=beam, cuda_graph=True))
    finally:
        model.to("cpu")
    assert graph == eager


def test_repeat_blocked_finds_looping_ngrams():
    hist = torch.tensor([[5, 6, 7, 6, 7], [1, 1, 1, 2, 3], [4, 4, 4, 4, 4]])
    cands = torch.tensor([[6, 7], [1, 3], [4, 5]])
    # row 0: "6 7 6 7" + 6 starts a third copy of (6 7); row 2: a sixth 4
    assert repeat_blocked(hist, cands, max_repeats=2, ngram=3).tolist() == [[True, False], [False, False],
                                                                           [True, False]]
    assert repeat_blocked(hist, cands, max_repeats=5, ngram=3).tolist() == [[False, False]] * 2 + [[True, False]]


def test_repetition_guard_stops_the_toy_loop():
    """The toy decoder prefers A forever; with the guard a third A in a row is blocked (B, then EOS, follow)."""
    toy = ToyModel()
    enc, enc_lens = torch.zeros(2, 20, 8), torch.tensor([20, 20])
    p = torch.ones(2, 1, dtype=torch.long)
    assert greedy_decode(toy, enc, enc_lens, p, EOS, use_cache=False) == [[toy.A] * 15] * 2
    guarded = decode(toy, enc, enc_lens, p, EOS, DecodeOptions(max_repeats=2, use_cache=False))
    assert guarded == [[toy.A, toy.A, toy.B]] * 2
    beam = decode(toy, enc, enc_lens, p, EOS, DecodeOptions(beam_size=2, max_repeats=1, use_cache=False,
                                                            length_penalty=0.0))
    assert beam == [[toy.B]] * 2


def test_decode_entry_point_modes_and_errors(mixed_batch):
    model, enc, enc_lens = mixed_batch
    ctc = torch.randn(12, enc.shape[1], V)
    assert decode(model, enc, enc_lens, mixed_prompt(), EOS, DecodeOptions(mode="ctc"), ctc_logits=ctc) == \
        ctc_greedy_decode(ctc, enc_lens)
    with pytest.raises(ValueError, match="CTC head"):
        decode(model, enc, enc_lens, mixed_prompt(), EOS, DecodeOptions(mode="joint"))
    with pytest.raises(ValueError, match="force_lengths"):
        decode(model, enc, enc_lens, mixed_prompt(), EOS, DecodeOptions(beam_size=2),
               force_lengths=torch.ones(12, dtype=torch.long))
    with pytest.raises(ValueError, match="mode"):
        decode(model, enc, enc_lens, mixed_prompt(), EOS, DecodeOptions(mode="nope"))
    # length guard: at most floor(ratio x CTC best-path length) + 3 tokens
    ctc_lens = [len(h) for h in ctc_greedy_decode(ctc, enc_lens)]
    capped = decode(model, enc, enc_lens, mixed_prompt(), EOS, DecodeOptions(ctc_length_ratio=0.5, max_len_ratio=2.0),
                    ctc_logits=ctc)
    free = decode(model, enc, enc_lens, mixed_prompt(), EOS, DecodeOptions(max_len_ratio=2.0), ctc_logits=ctc)
    assert all(len(h) <= int(n * 0.5) + 3 for h, n in zip(capped, ctc_lens))
    assert sum(map(len, capped)) < sum(map(len, free))
