"""Canary-style prompt format and the one function that counts a cut's decoder tokens.

Decoder sequence (what the model is trained on, length U)::

    [<|startoftranscript|>, <|src|>, <|task|>, <|tgt|>, <|pnc|> or <|nopnc|>] + text pieces + [<|endoftext|>]

The decoder input is the sequence without its last token; the targets are the sequence without its first
token, and only text pieces and end-of-text are scored. Bucket bins, the OOMptimizer, training and the padding
statistics all count tokens with :func:`count_decoder_tokens`, so their counts never disagree.

With a :class:`~speech_ed.data.tokenizer.CanaryTokenizer` (an imported NeMo model) the prompt is NeMo's
format, 'canary' (the layout above, with NeMo's token ids) or 'canary2'::

    [<|startofcontext|>, context..., <|startoftranscript|>, <|emo:...|>, <|src|>, <|tgt|>, <|pnc|>, <|itn|>,
     <|timestamp|>, <|diarize|>]

(no task token: translation is src != tgt), tokenized exactly as NeMo 3.0.0 does it.
"""

from __future__ import annotations

from dataclasses import dataclass

from speech_ed.data.text import normalize_text
from speech_ed.data.tokenizer import CANARY_BOCTX, SOT, Tokenizer, lang_token, task_token

PROMPT_LEN = 5
CANARY2_DEFAULTS = {"decodercontext": "", "emotion": "<|emo:undefined|>", "itn": "no", "timestamp": "no",
                    "diarize": "no"}
_TRUE = {"yes", "Yes", "true", "True", "1"}
_TASKS = {"asr": "transcribe", "transcribe": "transcribe", "ast": "translate", "translate": "translate",
          "s2t_translation": "translate"}


@dataclass
class Target:
    """What a cut asks the decoder to produce."""

    text: str
    source_lang: str
    target_lang: str
    task: str


def cut_target(cut, pnc: bool = False) -> Target:
    """The decoder target of a cut's first supervision.

    Transcription targets the supervision text; translation (``supervision.custom['task'] == 'translate'``)
    targets ``custom['translation']`` in ``custom['target_language']``. Without punctuation and casing
    (``pnc=False``) the text is normalised with :func:`speech_ed.data.text.normalize_text`.

    Raises:
        ValueError: the cut has no supervision, or a translation cut lacks its translation fields.
    """
    if not cut.supervisions:
        raise ValueError(f"cut {cut.id} has no supervision")
    sup = cut.supervisions[0]
    return target_of(cut.id, sup.text, sup.language, sup.custom, pnc)


def target_of(cut_id: str, text: str | None, language: str | None, custom: dict | None,
              pnc: bool = False) -> Target:
    """:func:`cut_target` on a supervision's fields (also used on raw manifest JSON, which skips building
    Lhotse objects when only lengths are needed)."""
    custom = custom or {}
    task = custom.get("task", "transcribe")
    src = language or ""
    if task == "translate":
        if "translation" not in custom or "target_language" not in custom:
            raise ValueError(f"cut {cut_id}: task 'translate' needs custom 'translation' and 'target_language'")
        text, tgt = custom["translation"], custom["target_language"]
    else:
        text, tgt = text or "", src
    return Target(text=text if pnc else normalize_text(text), source_lang=src, target_lang=tgt, task=task)


def build_prompt(tokenizer: Tokenizer, source_lang: str, target_lang: str, task: str = "transcribe",
                 pnc: bool = False, **slots) -> list[int]:
    """``[SOT, src, task, tgt, pnc]`` token ids (raises KeyError for an unknown language or task).

    With a Canary tokenizer, NeMo's prompt in its ``prompt_format``; ``slots`` (canary2: ``emotion``, ``itn``,
    ``timestamp``, ``diarize``, ``decodercontext``) override the model's prompt defaults."""
    fmt = getattr(tokenizer, "prompt_format", None)
    if fmt is not None:
        return tokenizer.encode_special(canary_prompt_text(fmt, source_lang, target_lang, task, pnc,
                                                           {**tokenizer.prompt_defaults, **slots}))
    return [tokenizer.sot_id, tokenizer.lang_id(source_lang), tokenizer.task_id(task),
            tokenizer.lang_id(target_lang), tokenizer.pnc_id if pnc else tokenizer.nopnc_id]


def _flag(name: str, value) -> str:
    """NeMo's boolean slot: ``<|name|>`` for yes/true/1 (or the token itself), else ``<|noname|>``."""
    if isinstance(value, str) and value.startswith("<|"):
        return value
    on = value is True or (isinstance(value, str) and value in _TRUE | {name})
    return f"<|{name}|>" if on else f"<|no{name}|>"


def _special(value: str) -> str:
    return value if value.startswith("<|") else lang_token(value)


def canary_prompt_text(fmt: str, source_lang: str, target_lang: str, task: str, pnc, slots: dict) -> str:
    """NeMo's prompt template filled in ('canary' or 'canary2'), before tokenization."""
    src, tgt = _special(source_lang), _special(target_lang)
    if fmt == "canary":
        name = _TASKS.get(task.strip("<|>"))
        if name is None:
            raise KeyError(f"unknown task {task!r}; expected one of {sorted(_TASKS)}")
        return f"{SOT}{src}{task_token(name)}{tgt}{_flag('pnc', pnc)}"
    values = {**CANARY2_DEFAULTS, **slots}
    return (f"{CANARY_BOCTX}{values['decodercontext']}{SOT}{values['emotion']}{src}{tgt}{_flag('pnc', pnc)}"
            f"{_flag('itn', values['itn'])}{_flag('timestamp', values['timestamp'])}"
            f"{_flag('diarize', values['diarize'])}")


def _text_pieces(tokenizer: Tokenizer, targets: list[Target], num_threads: int = -1) -> list[list[int]]:
    """Text pieces of each target; a per-language (Canary aggregate) tokenizer uses the target language."""
    if getattr(tokenizer, "per_language", False):
        return [tokenizer.encode(t.text, t.target_lang) for t in targets]
    return tokenizer.encode_batch([t.text for t in targets], num_threads=num_threads)


def decoder_sequence(tokenizer: Tokenizer, target: Target, pnc: bool = False) -> list[int]:
    """Full decoder sequence (prompt + text + end-of-text) of a :class:`Target`."""
    return build_prompt(tokenizer, target.source_lang, target.target_lang, target.task, pnc) + \
        _text_pieces(tokenizer, [target])[0] + [tokenizer.eos_id]


def count_decoder_tokens(cut, tokenizer: Tokenizer, pnc: bool = False) -> int:
    """Length U of the cut's decoder sequence: prompt (5) + text pieces + end-of-text (1)."""
    return count_target_tokens([cut_target(cut, pnc)], tokenizer)[0]


def count_target_tokens(targets: list[Target], tokenizer: Tokenizer, num_threads: int = -1) -> list[int]:
    """Decoder-sequence lengths of many targets at once (one batched SentencePiece call).

    The only place the formula lives: :func:`count_decoder_tokens` calls it with one target.
    """
    pieces = _text_pieces(tokenizer, targets, num_threads)
    if getattr(tokenizer, "prompt_format", None) is None:
        return [PROMPT_LEN + len(p) + 1 for p in pieces]
    return [len(build_prompt(tokenizer, t.source_lang, t.target_lang, t.task)) + len(p) + 1
            for t, p in zip(targets, pieces)]


def describe_prompt_format(pnc: bool = False) -> dict:
    """What :func:`count_decoder_tokens` counted, for recording beside bins and batch sizes."""
    return {"format": "canary", "prompt": ["sot", "source_lang", "task", "target_lang", "pnc"],
            "prompt_len": PROMPT_LEN, "eos": True, "pnc": pnc}
