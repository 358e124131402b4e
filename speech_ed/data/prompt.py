"""Canary-style prompt format and the one function that counts a cut's decoder tokens.

Decoder sequence (what the model is trained on, length U)::

    [<|startoftranscript|>, <|src|>, <|task|>, <|tgt|>, <|pnc|> or <|nopnc|>] + text pieces + [<|endoftext|>]

The decoder input is the sequence without its last token; the targets are the sequence without its first
token, and only text pieces and end-of-text are scored. Bucket bins, the OOMptimizer, training and the padding
statistics all count tokens with :func:`count_decoder_tokens`, so their counts never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from speech_ed.data.text import normalize_text
from speech_ed.data.tokenizer import Tokenizer

PROMPT_LEN = 5


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
                 pnc: bool = False) -> list[int]:
    """``[SOT, src, task, tgt, pnc]`` token ids (raises KeyError for an unknown language or task)."""
    return [tokenizer.sot_id, tokenizer.lang_id(source_lang), tokenizer.task_id(task),
            tokenizer.lang_id(target_lang), tokenizer.pnc_id if pnc else tokenizer.nopnc_id]


def decoder_sequence(tokenizer: Tokenizer, target: Target, pnc: bool = False) -> list[int]:
    """Full decoder sequence (prompt + text + end-of-text) of a :class:`Target`."""
    return build_prompt(tokenizer, target.source_lang, target.target_lang, target.task, pnc) + \
        tokenizer.encode(target.text) + [tokenizer.eos_id]


def count_decoder_tokens(cut, tokenizer: Tokenizer, pnc: bool = False) -> int:
    """Length U of the cut's decoder sequence: prompt (5) + text pieces + end-of-text (1)."""
    return count_target_tokens([cut_target(cut, pnc)], tokenizer)[0]


def count_target_tokens(targets: list[Target], tokenizer: Tokenizer, num_threads: int = -1) -> list[int]:
    """Decoder-sequence lengths of many targets at once (one batched SentencePiece call).

    The only place the formula lives: :func:`count_decoder_tokens` calls it with one target.
    """
    pieces = tokenizer.encode_batch([t.text for t in targets], num_threads=num_threads)
    return [PROMPT_LEN + len(p) + 1 for p in pieces]


def describe_prompt_format(pnc: bool = False) -> dict:
    """What :func:`count_decoder_tokens` counted, for recording beside bins and batch sizes."""
    return {"format": "canary", "prompt": ["sot", "source_lang", "task", "target_lang", "pnc"],
            "prompt_len": PROMPT_LEN, "eos": True, "pnc": pnc}
