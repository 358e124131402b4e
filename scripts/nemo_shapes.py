"""The NeMo Canary model shapes scripts/nemo_parity.py and scripts/nemo_rtfx.py build (plain data, no imports).

Each shape: prompt format, tokenizer kind ('aggregate': NeMo's special-token SentencePiece plus one per
language, as canary-1b/-flash; 'unified': one SentencePiece holding the special tokens, as canary-1b-v2), and
the encoder/decoder sizes in NeMo's terms. The two ``tiny_*`` shapes are the committed fixtures
(tests/fixtures/nemo/); they differ in every option the importer maps (positions, subsampling, conv norm,
xscaling, projection, learned decoder positions, feature padding). ``flash180m`` is canary-180m-flash's shape
(17 x 512 encoder, 4 x 1024 decoder, 128 mels, 1152 special + 4 x 1024 language tokens = 5248) except for
``max_len``: 128 positions instead of the released 1024 (no parameters depend on it; it only caps a runaway
hypothesis); its weights stay random (one Adam step of 180 M parameters on 8 utterances takes over a minute
on the shared 2 cores), so its hypotheses run to that cap on both sides. Shapes with ``fit_steps`` take that
many Adam steps of NeMo's own forward on their audio, so greedy decoding yields the transcript and stops at
end-of-text, as a trained model does.

``strategy``: NeMo's decoding for ``transcribe``. 'beam' with beam_size 1 is what the released configs use; at
the position cap it emits one token more than NeMo's 'greedy' (GreedySequenceGenerator), which is what
speech_ed's greedy decoding matches token for token, so the shapes whose random weights run to the cap use
'greedy'; ``tiny_canary`` (fitted: it stops at end-of-text) keeps the released 'beam'.
"""

SHAPES = {
    "tiny_canary": {
        "prompt_format": "canary", "tokenizer": "aggregate", "languages": ["en", "es"], "lang_vocab": 128,
        "n_mels": 80, "num_utterances": 3, "fit_steps": 200,
        "encoder": {"dim": 64, "layers": 2, "heads": 4, "kernel": 9, "channels": 32, "subsampling": "dw_striding",
                    "factor": 8, "attention": "rel_pos", "xscaling": True, "conv_norm": "batch_norm"},
        "decoder": {"dim": 64, "layers": 2, "heads": 4, "max_len": 64},
        "prompt_slots": {"source_lang": "en", "target_lang": "en", "task": "asr", "pnc": "yes"},
    },
    "tiny_canary2": {
        "prompt_format": "canary2", "tokenizer": "unified", "languages": ["en", "es"], "lang_vocab": 200,
        "n_mels": 128, "num_utterances": 2, "pad_to": 16, "strategy": "greedy",
        "encoder": {"dim": 48, "layers": 2, "heads": 4, "kernel": 5, "channels": 16, "subsampling": "striding",
                    "factor": 4, "attention": "abs_pos", "xscaling": False, "conv_norm": "layer_norm"},
        "decoder": {"dim": 96, "layers": 1, "heads": 4, "max_len": 48, "learned": True},
        "prompt_slots": {"decodercontext": "", "emotion": "<|emo:undefined|>", "source_lang": "es",
                         "target_lang": "es", "pnc": "yes", "itn": "no", "timestamp": "no", "diarize": "no"},
    },
    "small_canary2": {
        "prompt_format": "canary2", "tokenizer": "aggregate", "languages": ["en", "de", "es", "it"],
        "lang_vocab": 256, "special_vocab": 1152, "n_mels": 128, "num_utterances": 4, "fit_steps": 150,
        "strategy": "greedy",
        "encoder": {"dim": 256, "layers": 4, "heads": 4, "kernel": 9, "channels": 64},
        "decoder": {"dim": 256, "layers": 2, "heads": 4, "max_len": 128},
        "prompt_slots": {"decodercontext": "", "emotion": "<|emo:undefined|>", "source_lang": "en",
                         "target_lang": "en", "pnc": "yes", "itn": "no", "timestamp": "no", "diarize": "no"},
    },
    "flash180m": {
        "prompt_format": "canary2", "tokenizer": "aggregate", "languages": ["en", "de", "es", "it"],
        "lang_vocab": 1024, "special_vocab": 1152, "n_mels": 128, "num_utterances": 4, "strategy": "greedy",
        "encoder": {"dim": 512, "layers": 17, "heads": 8, "kernel": 9, "channels": 256},
        "decoder": {"dim": 1024, "layers": 4, "heads": 8, "max_len": 128},
        "prompt_slots": {"decodercontext": "", "emotion": "<|emo:undefined|>", "source_lang": "en",
                         "target_lang": "en", "pnc": "yes", "itn": "no", "timestamp": "no", "diarize": "no"},
    },
}

# Fixed audio: (language, text) spoken by espeak-ng, all longer than NeMo transcribe's 1 s minimum.
UTTERANCES = [
    ("en", "The quick brown fox jumps over the lazy dog."),
    ("es", "El perro de San Roque no tiene rabo."),
    ("en", "A journey of a thousand miles begins with a single step."),
    ("de", "Der frühe Vogel fängt den Wurm."),
    ("it", "Chi va piano va sano e va lontano."),
]
