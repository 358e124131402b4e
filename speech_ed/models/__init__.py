"""Canary-style attention encoder-decoder models in plain torch (no Lightning, no Lhotse).

API (shapes: B batch, S samples, T encoder frames, U tokens, V vocab, Dd decoder width):
    model = AEDModel(dims)                      # dims: ModelDims with vocab_size > 0
    out = model(audio, audio_lens, tokens_in)   # (B,S) f32, (B,) i64, (B,U) i64 pad 0
        # out["logits"] (B,U,V), out["ctc_logits"] (B,T,V) | None, out["enc"] (B,T,Dd), out["enc_lens"] (B,)
    enc, enc_lens = model.encode(audio, audio_lens)
    loss, parts = compute_loss(out, targets, ctc_targets, ctc_target_lens, label_smoothing=0.1,
                               ctc_weight=0.3)
        # targets -100 = not scored; ctc_targets padded with 0 (= blank); parts {"att", "ctc"} per token
    hyps = greedy_decode(model, enc, enc_lens, prompt, eos_id, max_len_ratio=0.6, use_cache=True)
    hyps = beam_search(model, enc, enc_lens, prompt, eos_id, beam_size=4, length_penalty=1.0)
    hyps = ctc_greedy_decode(out["ctc_logits"], enc_lens, blank=0)   # list[list[int]]
    hyps = decode(model, enc, enc_lens, prompt, eos_id, DecodeOptions(mode="joint", beam_size=4),
                  ctc_logits=ctc_logits)                 # the one entry point evaluation uses
    count_parameters(model) -> int ; build presets with speech_ed.config.load_model_preset(name)
"""

from speech_ed.models.aed import AEDModel, compute_loss, count_parameters
from speech_ed.models.beam import beam_search
from speech_ed.models.decoding import DecodeOptions, ctc_greedy_decode, decode, greedy_decode
from speech_ed.models.dims import ModelDims

__all__ = [
    "AEDModel", "DecodeOptions", "ModelDims", "beam_search", "compute_loss", "count_parameters",
    "ctc_greedy_decode", "decode", "greedy_decode",
]
