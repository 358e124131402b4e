"""Build NeMo Canary models with random weights and write their reference outputs (runs in a venv with NeMo).

Usage::

    python3 -m venv /work/nemo_venv && /work/nemo_venv/bin/pip install torch==2.13.0 \
        && /work/nemo_venv/bin/pip install 'nemo-toolkit[asr]==3.0.0'
    /work/nemo_venv/bin/python scripts/nemo_parity.py build --shapes tiny_canary tiny_canary2 --out tests/fixtures/nemo
    /work/nemo_venv/bin/python scripts/nemo_parity.py build --shapes small_canary2 --out exp/nemo_parity
    /work/nemo_venv/bin/python scripts/nemo_parity.py reference --nemo exported.nemo --shape tiny_canary \
        --audio tests/fixtures/nemo/tiny_canary/audio --out exp/nemo_parity/exported_reference.pt

Per shape it writes ``OUT/SHAPE/``: ``model.nemo`` (saved by NeMo's ``save_to`` and checked by ``restore_from``),
``audio/*.wav`` (espeak-ng speech, 16 kHz) and ``reference.pt``, NeMo's outputs for that audio:

* ``features`` (B, F, T) and ``feat_lens``: the preprocessor (log-mel) output of the padded batch;
* ``enc`` (B, T', D) and ``enc_lens``: encoder output after the encoder-decoder projection;
* ``tokens_in`` (B, U): a fixed prompt plus text tokens, and NeMo's teacher-forced decoder ``logits`` (the head
  before its log-softmax) and ``log_probs`` for it;
* ``greedy``: what ``model.transcribe`` returns (text and token ids) with the prompt in ``prompt_slots``.

Nothing here is imported by speech_ed; NeMo is never its dependency. Tokenizers are trained here on the Debian
fortune sentences (speech_ed.corpora.fortunes), with NeMo's own special-token builder for the aggregate tokenizer.
Parameters that NeMo initialises to constants (norms, biases, BatchNorm statistics, relative-position biases)
are perturbed, so a weight mapped to the wrong place cannot go unnoticed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import sentencepiece as spm
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # speech_ed.corpora.fortunes / corpora.espeak: plain Python, no NeMo

from nemo_shapes import SHAPES, UTTERANCES  # scripts/nemo_shapes.py

CANARY2_SPECIALS = [
    "<|startofcontext|>", "<|emo:undefined|>", "<|emo:neutral|>", "<|emo:happy|>", "<|emo:sad|>",
    "<|emo:angry|>", "<|itn|>", "<|noitn|>", "<|timestamp|>", "<|notimestamp|>", "<|diarize|>",
    "<|nodiarize|>", "<|unklang|>",
]


def sentences(lang: str, limit: int = 4000) -> list[str]:
    from speech_ed.corpora.fortunes import load_sentences

    kept, _ = load_sentences(lang)
    return kept[:limit]


def train_spm(texts: list[str], out_dir: Path, vocab_size: int, user_symbols: list[str] = ()) -> Path:
    """A BPE SentencePiece model in ``out_dir/tokenizer.model`` (NeMo's layout: <unk> 0, no bos/eos)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=proto, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, hard_vocab_limit=False,
        user_defined_symbols=list(user_symbols), num_threads=2, minloglevel=2,
        normalization_rule_name="identity",  # small files: the fixture is committed
    )
    (out_dir / "tokenizer.model").write_bytes(proto.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    (out_dir / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size())))
    return out_dir / "tokenizer.model"


def special_tokens(shape: dict) -> list[str]:
    langs = shape["languages"]
    tokens = ["translate", "transcribe", *langs]
    if shape["prompt_format"] == "canary2":
        tokens += CANARY2_SPECIALS
    pad_to = shape.get("special_vocab", 0)
    n = len(tokens) + 6  # CanaryTokenizer adds its 6 default tokens
    tokens += [f"<|spltoken{i}|>" for i in range(max(0, pad_to - n - 2))]  # +2: <unk>, '▁'
    return tokens


def build_tokenizer(shape: dict, work: Path) -> dict:
    """Tokenizer files and the ``model.tokenizer`` config for the shape."""
    from nemo.collections.common.tokenizers.canary_tokenizer import DEFAULT_TOKENS, CanaryTokenizer

    langs = shape["languages"]
    if shape["tokenizer"] == "aggregate":
        spl_dir = work / "tok_spl_tokens"
        CanaryTokenizer.build_special_tokenizer(special_tokens(shape), spl_dir, force_rebuild=True)
        cfg = {"dir": None, "type": "agg", "langs": {"spl_tokens": {"dir": str(spl_dir), "type": "bpe"}},
               "custom_tokenizer": {"_target_": "nemo.collections.common.tokenizers.canary_tokenizer."
                                                "CanaryTokenizer"}}
        for lang in langs:
            d = work / f"tok_{lang}"
            train_spm(sentences(lang), d, shape["lang_vocab"])
            cfg["langs"][lang] = {"dir": str(d), "type": "bpe"}
        return cfg
    # unified: one SentencePiece model holding the special tokens as user-defined symbols (canary-1b-v2 style)
    specials = list(dict.fromkeys(DEFAULT_TOKENS + [f"<|{t}|>" if not t.startswith("<|") else t
                                                    for t in special_tokens(shape)]))
    texts = [s for lang in langs for s in sentences(lang, 2000)]
    d = work / "tok_unified"
    train_spm(texts, d, shape["lang_vocab"], specials)
    return {"dir": str(d), "type": "bpe",
            "custom_tokenizer": {"_target_": "nemo.collections.common.tokenizers.canary_tokenizer."
                                             "CanaryBPETokenizer"}}


def model_config(shape: dict, tokenizer_cfg: dict) -> dict:
    enc, dec = shape["encoder"], shape["decoder"]
    pre = {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "sample_rate": 16000,
           "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01, "window": "hann",
           "features": shape["n_mels"], "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 1e-5,
           "pad_to": shape.get("pad_to", 0), "pad_value": 0.0}
    encoder = {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": shape["n_mels"],
               "feat_out": -1, "n_layers": enc["layers"], "d_model": enc["dim"],
               "subsampling": enc.get("subsampling", "dw_striding"), "subsampling_factor": enc.get("factor", 8),
               "subsampling_conv_channels": enc["channels"], "causal_downsampling": False,
               "ff_expansion_factor": 4, "self_attention_model": enc.get("attention", "rel_pos"),
               "n_heads": enc["heads"], "att_context_size": [-1, -1], "xscaling": enc.get("xscaling", False),
               "untie_biases": True, "pos_emb_max_len": 5000, "conv_kernel_size": enc["kernel"],
               "conv_norm_type": enc.get("conv_norm", "batch_norm"), "conv_context_size": None,
               "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1}
    decoder = {"_target_": "nemo.collections.asr.modules.transformer.get_nemo_transformer", "model_name": None,
               "pretrained": False, "encoder": None, "pre_ln_final_layer_norm": True,
               "config_dict": {"max_sequence_length": dec["max_len"], "num_token_types": 0,
                               "embedding_dropout": 0.1, "learn_positional_encodings": dec.get("learned", False),
                               "hidden_size": dec["dim"], "inner_size": 4 * dec["dim"], "num_layers": dec["layers"],
                               "num_attention_heads": dec["heads"], "ffn_dropout": 0.1, "attn_score_dropout": 0.1,
                               "attn_layer_dropout": 0.1, "hidden_act": "relu", "pre_ln": True,
                               "vocab_size": None}}
    return {
        "sample_rate": 16000, "prompt_format": shape["prompt_format"], "prompt_defaults": None,
        "model_defaults": {"asr_enc_hidden": enc["dim"], "lm_enc_hidden": dec["dim"], "lm_dec_hidden": dec["dim"]},
        "tokenizer": tokenizer_cfg, "preprocessor": pre,
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 2,
                         "time_masks": 10, "freq_width": 27, "time_width": 0.05},
        "encoder": encoder,
        "transf_encoder": {"_target_": "nemo.collections.asr.modules.transformer.transformer_encoders."
                                       "TransformerEncoder", "num_layers": 0, "hidden_size": dec["dim"],
                           "inner_size": 4 * dec["dim"], "num_attention_heads": 8, "ffn_dropout": 0.1,
                           "attn_score_dropout": 0.1, "attn_layer_dropout": 0.1, "mask_future": False,
                           "pre_ln": True, "pre_ln_final_layer_norm": True},
        "transf_decoder": decoder,
        "head": {"_target_": "nemo.collections.asr.parts.submodules.token_classifier.TokenClassifier",
                 "num_layers": 1, "activation": "relu", "log_softmax": True, "hidden_size": dec["dim"],
                 "num_classes": None, "dropout": 0.0, "use_transformer_init": True},
        "decoding": decoding_config(shape.get("strategy", "beam")),
        "loss": {"_target_": "nemo.collections.common.losses.smoothed_cross_entropy.SmoothedCrossEntropyLoss",
                 "label_smoothing": 0.0, "pad_id": None},
        "restore_timestamps_model": False,
    }


def decoding_config(strategy: str, beam_size: int = 1) -> dict:
    """NeMo's decoding section: 'beam' (the released Canary configs, beam_size 1) or 'greedy'
    (GreedySequenceGenerator); no length cap but the decoder's positions (max_generation_delta -1)."""
    if strategy == "greedy":
        return {"strategy": "greedy", "greedy": {"temperature": None, "max_generation_delta": -1, "n_samples": 1}}
    return {"strategy": "beam", "return_best_hypothesis": True,
            "beam": {"beam_size": beam_size, "len_pen": 0.0, "max_generation_delta": -1}}


@torch.no_grad()
def perturb_constants(model, generator: torch.Generator) -> int:
    """Give every parameter or statistic that starts as a constant random values; returns how many."""
    n = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point() or t.numel() == 0 or "preprocessor" in name:
            continue
        flat = t.flatten()
        if bool((flat == flat[0]).all()):
            noise = torch.randn(t.shape, generator=generator) * 0.1
            t.copy_(t.abs() + noise.abs() + 0.5 if name.endswith("running_var") else t + noise)
            n += 1
    return n


def synthesize(utterances: list[tuple[str, str]], out_dir: Path) -> list[Path]:
    from speech_ed.corpora.espeak import EspeakCommand, resample_to_16k

    out_dir.mkdir(parents=True, exist_ok=True)
    engine, paths = EspeakCommand(), []
    for i, (lang, text) in enumerate(utterances):
        samples = resample_to_16k(engine.synthesize(text, lang, 160, 50), engine.sample_rate)
        path = out_dir / f"utt{i}_{lang}.wav"
        sf.write(path, samples, 16000, subtype="PCM_16")
        paths.append(path)
    return paths


def read_batch(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    waves = [torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in paths]
    lens = torch.tensor([w.numel() for w in waves])
    audio = torch.zeros(len(waves), int(lens.max()))
    for i, w in enumerate(waves):
        audio[i, : w.numel()] = w
    return audio, lens


def fit(model, paths: list[Path], texts: list[str], shape: dict, steps: int, lr: float = 3e-3) -> list[float]:
    """A few Adam steps of NeMo's own forward on the fixture audio, so that greedy decoding yields text and
    end-of-text rather than one token repeated to the last position. Returns the loss per step."""
    if steps <= 0:
        return []
    audio, lens = read_batch(paths)
    prompt = model.prompt.encode_dialog([{"role": "user", "slots": dict(shape["prompt_slots"])}])["context_ids"]
    lang = shape["prompt_slots"]["target_lang"]
    agg = shape["tokenizer"] == "aggregate"
    seqs = [prompt.tolist() + (model.tokenizer.text_to_ids(t, lang) if agg else model.tokenizer.text_to_ids(t))
            + [model.tokenizer.eos] for t in texts]
    width = max(len(s) for s in seqs)
    if width > shape["decoder"]["max_len"]:
        raise ValueError(f"a fit sequence has {width} tokens, more than the decoder's {shape['decoder']['max_len']}")
    pad = model.tokenizer.pad
    batch = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    inp, tgt = batch[:, :-1], batch[:, 1:].masked_fill(batch[:, 1:] == pad, -100)
    inp_lens = torch.tensor([len(s) - 1 for s in seqs])
    spec_augment, model.spec_augmentation = model.spec_augmentation, None
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        log_probs, *_ = model.forward(input_signal=audio, input_signal_length=lens, transcript=inp,
                                      transcript_length=inp_lens)
        loss = torch.nn.functional.nll_loss(log_probs.transpose(1, 2), tgt, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if len(losses) % 25 == 0:
            print(f"  fit step {len(losses)}/{steps}: loss {losses[-1]:.3f}", flush=True)
    model.spec_augmentation = spec_augment
    return losses


@torch.no_grad()
def references(model, paths: list[Path], shape: dict) -> dict:
    """NeMo's outputs for the audio in ``paths`` (see the module docstring)."""
    model.eval()
    audio, lens = read_batch(paths)
    feats, feat_lens = model.preprocessor(input_signal=audio, length=lens)
    _, enc_lens, enc, enc_mask = model.forward(input_signal=audio, input_signal_length=lens)
    slots = shape["prompt_slots"]
    prompt = model.prompt.encode_dialog([{"role": "user", "slots": dict(slots)}])["context_ids"]
    lang = slots["target_lang"]
    text = UTTERANCES[0][1]
    is_agg = shape["tokenizer"] == "aggregate"
    text_ids = model.tokenizer.text_to_ids(text, lang) if is_agg else model.tokenizer.text_to_ids(text)
    tokens_in = torch.tensor(prompt.tolist() + text_ids)[None].repeat(len(paths), 1)
    tok_lens = torch.full((len(paths),), tokens_in.shape[1])
    dec_mask = (torch.arange(tokens_in.shape[1])[None] < tok_lens[:, None]).long()
    dec_states = model.transf_decoder(input_ids=tokens_in, decoder_mask=dec_mask, encoder_embeddings=enc,
                                      encoder_mask=enc_mask)
    log_probs = model.log_softmax(hidden_states=dec_states)
    with model.log_softmax.with_log_softmax_enabled(False):
        logits = model.log_softmax(hidden_states=dec_states)
    hyps = model.transcribe([str(p) for p in paths], batch_size=len(paths), return_hypotheses=True,
                            verbose=False, **slots)
    greedy = [{"text": h.text, "ids": [int(i) for i in h.y_sequence]} for h in hyps]
    return {"features": feats, "feat_lens": feat_lens, "enc": enc, "enc_lens": enc_lens, "prompt": prompt,
            "tokens_in": tokens_in, "logits": logits, "log_probs": log_probs, "greedy": greedy,
            "prompt_slots": dict(slots), "files": [p.name for p in paths]}


def plain(obj):
    """Tensors, numbers, strings, lists and dicts only (NeMo's typed outputs would need NeMo to unpickle), so
    the references load with ``torch.load(weights_only=True)``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone().as_subclass(torch.Tensor)
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    for kind in (bool, int, float, str):  # exact types: torch.__version__ is a str subclass
        if isinstance(obj, kind):
            return kind(obj) if kind is not str else f"{obj}"
    if obj is None:
        return None
    raise TypeError(f"reference value of type {type(obj)} is not plain data")


def build_shape(name: str, out_root: Path, seed: int = 0, utterances: list[tuple[str, str]] | None = None) -> Path:
    from nemo.collections.asr.models import EncDecMultiTaskModel
    from omegaconf import OmegaConf

    shape = SHAPES[name]
    start = time.time()
    out = out_root / name
    work = out_root / f".{name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.manual_seed(seed)
    cfg = OmegaConf.create(model_config(shape, build_tokenizer(shape, work)))
    model = EncDecMultiTaskModel(cfg=cfg).eval()
    perturbed = perturb_constants(model, torch.Generator().manual_seed(seed + 1))
    out.mkdir(parents=True, exist_ok=True)
    if utterances is None:
        utterances = [u for u in UTTERANCES if u[0] in shape["languages"]][: shape["num_utterances"]]
    paths = synthesize(utterances, out / "audio")
    losses = fit(model, paths, [t for _, t in utterances], shape, shape.get("fit_steps", 0),
                 shape.get("fit_lr", 3e-3))
    print(f"{name}: built and fitted in {time.time() - start:.0f} s")
    model.eval()
    model.save_to(str(out / "model.nemo"))
    restored = EncDecMultiTaskModel.restore_from(str(out / "model.nemo"), map_location="cpu").eval()
    refs = references(restored, paths, shape)
    refs.update(shape=name, seed=seed, perturbed_tensors=perturbed, fit_losses=losses,
                nemo_version=__import__("nemo").__version__, torch_version=torch.__version__,
                num_parameters=sum(p.numel() for p in restored.parameters()))
    torch.save(plain(refs), out / "reference.pt")
    shutil.rmtree(work, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    fitted = f", fit {len(losses)} steps loss {losses[0]:.2f} -> {losses[-1]:.3f}" if losses else ""
    print(f"{name}: {refs['num_parameters']:,} parameters{fitted}, {len(paths)} utterances, "
          f"{size / 2**20:.2f} MiB in {out} ({time.time() - start:.0f} s)")
    for g in refs["greedy"]:
        print(f"  greedy: {len(g['ids'])} tokens {g['text'][:60]!r}")
    return out


def reference_for(nemo_path: Path, shape_name: str, audio_dir: Path, out: Path) -> None:
    """NeMo's outputs for any .nemo (e.g. one exported by ``speech-ed import-nemo --export``)."""
    from nemo.collections.asr.models import EncDecMultiTaskModel

    model = EncDecMultiTaskModel.restore_from(str(nemo_path), map_location="cpu").eval()
    refs = references(model, sorted(audio_dir.glob("*.wav")), SHAPES[shape_name])
    refs.update(shape=shape_name, nemo_version=__import__("nemo").__version__, torch_version=torch.__version__)
    torch.save(plain(refs), out)
    print(f"{nemo_path}: restored by NeMo, references in {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build models, save .nemo files and NeMo's reference outputs")
    build.add_argument("--shapes", nargs="+", default=["tiny_canary", "tiny_canary2"], choices=sorted(SHAPES))
    build.add_argument("--out", type=Path, default=REPO / "exp" / "nemo_parity")
    build.add_argument("--seed", type=int, default=0)
    ref = sub.add_parser("reference", help="NeMo's reference outputs for an existing .nemo")
    ref.add_argument("--nemo", type=Path, required=True)
    ref.add_argument("--shape", required=True, choices=sorted(SHAPES), help="whose prompt and text to use")
    ref.add_argument("--audio", type=Path, required=True, help="folder of .wav files")
    ref.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.command == "reference":
        reference_for(args.nemo, args.shape, args.audio, args.out)
        return 0
    manifest_path = args.out / "shapes.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in args.shapes:
        out = build_shape(name, args.out, args.seed)
        manifest[name] = str(out.relative_to(args.out))
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
