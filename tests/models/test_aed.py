"""AEDModel shapes, padding invariance, loss, overfitting and bf16 autocast on the tiny preset."""

import dataclasses

import pytest
import torch

from speech_ed.config import load_model_preset
from speech_ed.models import (
    AEDModel,
    beam_search,
    compute_loss,
    count_parameters,
    ctc_greedy_decode,
    greedy_decode,
)

V = 40


def tiny_dims(**kw):
    dims = load_model_preset("tiny")
    return dataclasses.replace(dims, vocab_size=V, **kw)


def batch(lengths, u=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = torch.randn(n, generator=g) * 0.1
    tokens = torch.randint(3, V, (len(lengths), u), generator=g)
    return audio, torch.tensor(lengths), tokens


@pytest.mark.parametrize(
    "kind,factor,pos", [("conv2d", 8, "abs"), ("dw_striding", 8, "rel"), ("conv2d", 4, "rel")]
)
def test_forward_shapes(kind, factor, pos):
    torch.manual_seed(0)
    model = AEDModel(tiny_dims(subsampling=kind, subsampling_factor=factor, pos_enc=pos))
    audio, lens, tokens = batch([16000, 9000, 3210])
    out = model(audio, lens, tokens)
    frames = 16000 // 160 + 1
    for _ in range({8: 3, 4: 2}[factor]):
        frames = (frames - 1) // 2 + 1
    assert out["logits"].shape == (3, 6, V)
    assert out["ctc_logits"].shape == (3, frames, V)
    assert out["enc"].shape == (3, frames, 64)
    assert out["enc_lens"].dtype == torch.int64 and int(out["enc_lens"][0]) == frames
    assert out["enc_lens"].tolist() == sorted(out["enc_lens"].tolist(), reverse=True)
    enc, enc_lens = model.encode(audio, lens)
    assert enc.shape == out["enc"].shape and torch.equal(enc_lens, out["enc_lens"])


def test_projection_and_no_ctc_head():
    model = AEDModel(tiny_dims(decoder_dim=96, num_decoder_heads=4, ctc_head=False)).eval()
    audio, lens, tokens = batch([8000, 4000])
    out = model(audio, lens, tokens)
    assert out["ctc_logits"] is None
    assert out["enc"].shape[-1] == 96 and out["logits"].shape == (2, 6, V)
    with pytest.raises(ValueError, match="CTC head"):
        compute_loss(out, tokens, tokens, torch.tensor([6, 6]), ctc_weight=0.3)
    loss, parts = compute_loss(out, tokens, ctc_weight=0.0)
    assert parts["ctc"] == 0.0 and loss.item() > 0


def test_bad_dims_name_the_field():
    with pytest.raises(ValueError, match="vocab_size"):
        AEDModel(dataclasses.replace(load_model_preset("tiny"), vocab_size=0))
    with pytest.raises(ValueError, match="pos_enc"):
        AEDModel(tiny_dims(pos_enc="xyz"))


@pytest.mark.parametrize("pos", ["abs", "rel"])
def test_padding_invariance(pos):
    """An utterance's outputs do not change when the batch adds a longer, padded neighbour."""
    torch.manual_seed(0)
    model = AEDModel(tiny_dims(pos_enc=pos)).eval()
    audio, lens, tokens = batch([7777, 20000, 12345], u=8)
    single = model(audio[:1, :7777], lens[:1], tokens[:1, :5])
    tok_padded = tokens.clone()
    tok_padded[0, 5:] = 0
    full = model(audio, lens, tok_padded)
    t = int(single["enc_lens"][0])
    assert int(full["enc_lens"][0]) == t and full["enc"].shape[1] > t
    torch.testing.assert_close(full["enc"][0, :t], single["enc"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full["ctc_logits"][0, :t], single["ctc_logits"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full["logits"][0, :5], single["logits"][0], atol=1e-4, rtol=1e-4)


def test_loss_definition():
    """Loss is (1-w) * CE_sum / B + w * CTC_sum / B; -100 positions are not scored."""
    torch.manual_seed(0)
    model = AEDModel(tiny_dims())
    audio, lens, tokens = batch([8000, 6000])
    out = model(audio, lens, tokens)
    targets = tokens.clone()
    targets[1, 3:] = -100
    ctc_t, ctc_l = tokens[:, :4], torch.tensor([4, 2])
    loss, parts = compute_loss(out, targets, ctc_t, ctc_l, label_smoothing=0.0, ctc_weight=0.25)
    logp = torch.log_softmax(out["logits"].float(), -1)
    scored = targets != -100
    ce = -logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0][scored].sum()
    ctc = torch.nn.functional.ctc_loss(
        torch.log_softmax(out["ctc_logits"].float(), -1).transpose(0, 1), ctc_t, out["enc_lens"], ctc_l,
        reduction="sum", zero_infinity=True)
    torch.testing.assert_close(loss, 0.75 * ce / 2 + 0.25 * ctc / 2)
    assert parts["att"] == pytest.approx(float(ce.detach() / scored.sum()), rel=1e-5)
    assert parts["ctc"] == pytest.approx(float(ctc.detach() / 6), rel=1e-5)


def test_spec_augment_only_in_training_and_seeded():
    model = AEDModel(tiny_dims(time_masks=3, time_mask_ratio=0.2))
    audio, lens, _ = batch([16000, 10000])
    feats, feat_lens = model.frontend(audio, lens)
    torch.manual_seed(1)
    a = model.spec_augment(feats, feat_lens)
    torch.manual_seed(1)
    b = model.spec_augment(feats, feat_lens)
    assert torch.equal(a, b) and not torch.equal(a, feats)
    model.eval()
    e1 = model.encode(audio, lens)[0]
    e2 = model.encode(audio, lens)[0]
    assert torch.equal(e1, e2)


def test_frontend_normalised_over_valid_frames():
    model = AEDModel(tiny_dims())
    audio, lens, _ = batch([16000, 8000])
    feats, feat_lens = model.frontend(audio, lens)
    assert feat_lens.tolist() == [101, 51] and feats.shape == (2, 101, 80)
    valid = feats[1, :51]
    torch.testing.assert_close(valid.mean(0), torch.zeros(80), atol=1e-4, rtol=0)
    assert torch.all(feats[1, 51:] == 0)


def test_bf16_autocast_forward_backward():
    torch.manual_seed(0)
    model = AEDModel(tiny_dims(pos_enc="rel", subsampling="dw_striding"))
    audio, lens, tokens = batch([16000, 9000])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(audio, lens, tokens)
        loss, _ = compute_loss(out, tokens, tokens, torch.tensor([6, 6]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_overfit_a_few_utterances_to_zero_error():
    """A tiny model memorises 3 utterances: loss falls; greedy, beam and CTC decoding give the targets."""
    torch.manual_seed(0)
    model = AEDModel(tiny_dims(spec_augment=False))
    audio, lens, _ = batch([12000, 9000, 10500])
    text = [[5, 9, 14, 22, 7], [30, 11, 11, 4], [8, 8, 8, 17, 3]]
    sos, eos = 1, 2
    u = 6
    tokens_in = torch.zeros(3, u, dtype=torch.long)
    targets = torch.full((3, u), -100)
    ctc_t = torch.zeros(3, 5, dtype=torch.long)
    for i, t in enumerate(text):
        tokens_in[i, : len(t) + 1] = torch.tensor([sos] + t)
        targets[i, : len(t) + 1] = torch.tensor(t + [eos])
        ctc_t[i, : len(t)] = torch.tensor(t)
    ctc_l = torch.tensor([len(t) for t in text])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        loss, _ = compute_loss(model(audio, lens, tokens_in), targets, ctc_t, ctc_l, label_smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    enc, enc_lens = model.encode(audio, lens)
    prompt = torch.full((3, 1), sos)
    assert greedy_decode(model, enc, enc_lens, prompt, eos, max_len_ratio=1.0) == text
    assert beam_search(model, enc, enc_lens, prompt, eos, beam_size=3, max_len_ratio=1.0) == text
    out = model(audio, lens, tokens_in)
    assert ctc_greedy_decode(out["ctc_logits"], out["enc_lens"]) == text


def test_count_parameters_counts_tied_once():
    untied = AEDModel(tiny_dims())
    tied = AEDModel(tiny_dims(tie_embeddings=True))
    assert count_parameters(untied) - count_parameters(tied) == V * 64


def test_shape_errors_at_module_boundaries():
    model = AEDModel(tiny_dims()).eval()
    audio, lens, tokens = batch([8000, 6000])
    with pytest.raises(ValueError, match="audio must be"):
        model(audio[0], lens, tokens)
    with pytest.raises(ValueError, match="audio_lens"):
        model.encode(audio, lens[:1])
    with pytest.raises(ValueError, match="tokens_in"):
        model(audio, lens, tokens[:1])
    out = model(audio, lens, tokens)
    with pytest.raises(ValueError, match="targets"):
        compute_loss(out, tokens[:, :3], ctc_weight=0.0)
    with pytest.raises(ValueError, match="memory"):
        model.decoder(tokens, out["enc"][:1], out["enc_lens"][:1])


@pytest.mark.parametrize("pos", ["abs", "rel"])
def test_sdpa_matches_matmul_attention(pos):
    """attention_impl='sdpa' (used on CUDA by 'auto') computes the same function as the matmul path."""
    torch.manual_seed(0)
    ref = AEDModel(tiny_dims(pos_enc=pos, attention_impl="matmul")).eval()
    fused = AEDModel(tiny_dims(pos_enc=pos, attention_impl="sdpa")).eval()
    fused.load_state_dict(ref.state_dict())
    audio, lens, tokens = batch([16000, 7000])
    a, b = ref(audio, lens, tokens), fused(audio, lens, tokens)
    for key in ("enc", "logits"):
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)


def test_bf16_cast_model_encodes():
    """A model cast to bf16 (inference) still runs its log-mel frontend in fp32."""
    model = AEDModel(tiny_dims()).eval().to(torch.bfloat16)
    audio, lens, tokens = batch([8000, 6000])
    with torch.no_grad():
        enc, enc_lens = model.encode(audio, lens)
        hyps = greedy_decode(model, enc, enc_lens, tokens[:, :1], eos_id=2)
    assert enc.dtype == torch.bfloat16 and len(hyps) == 2
