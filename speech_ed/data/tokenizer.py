"""SentencePiece tokenizer with Canary-style special tokens.

Ids 0 and 1 are ``<pad>`` (also the CTC blank) and ``<unk>``. Control tokens follow: start-of-transcript,
end-of-text, the task tokens, the punctuation switches and one token per language. Control tokens are never
produced by encoding text, so a transcript that literally contains ``<|en|>`` stays text.

A tokenizer is a folder: ``tokenizer.model`` (SentencePiece) and ``tokenizer.json`` (languages, vocabulary size,
how it was trained).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

PAD, UNK = "<pad>", "<unk>"
SOT, EOT = "<|startoftranscript|>", "<|endoftext|>"
TASKS = ("transcribe", "translate")
PNC, NOPNC = "<|pnc|>", "<|nopnc|>"


def lang_token(lang: str) -> str:
    return f"<|{lang}|>"


def task_token(task: str) -> str:
    return f"<|{task}|>"


def control_tokens(languages: Iterable[str]) -> list[str]:
    return [SOT, EOT, *(task_token(t) for t in TASKS), PNC, NOPNC, *(lang_token(x) for x in languages)]


class Tokenizer:
    """A trained SentencePiece model plus the ids of the special tokens."""

    pad_id = 0
    unk_id = 1

    def __init__(self, model_path: str | os.PathLike):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"tokenizer model {self.model_path} does not exist; train one with "
                                    "`speech-ed train-tokenizer` (recipe stage 'tokenizer')")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        meta_path = self.model_path.with_suffix(".json")
        self.meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.languages: list[str] = list(self.meta.get("languages", []))
        self.sot_id = self._id(SOT)
        self.eos_id = self._id(EOT)
        self.pnc_id, self.nopnc_id = self._id(PNC), self._id(NOPNC)

    def _id(self, piece: str) -> int:
        i = self.sp.piece_to_id(piece)
        if i == self.unk_id:
            raise ValueError(f"tokenizer {self.model_path} has no special token {piece}")
        return i

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer | CanaryTokenizer:
        """Load from a ``tokenizer.model`` file or the folder holding it. A ``tokenizer.json`` of kind 'canary'
        (written by :meth:`CanaryTokenizer.save` or an imported .nemo model) gives a :class:`CanaryTokenizer`."""
        path = Path(path)
        model = path / "tokenizer.model" if path.is_dir() else path
        meta_path = model.with_suffix(".json")
        if meta_path.is_file() and model.is_file():
            meta = json.loads(meta_path.read_text())
            if isinstance(meta, dict) and meta.get("kind") == "canary":
                return CanaryTokenizer.from_meta(meta)
        return cls(model)

    @classmethod
    def train(cls, texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int, languages: Iterable[str],
              model_type: str = "bpe") -> Tokenizer:
        """Train on ``texts`` and write ``out_dir/tokenizer.{model,json}`` atomically.

        ``vocab_size`` counts every piece, special tokens included. With too little text SentencePiece stops
        below it (the real size is in ``tokenizer.json``).
        """
        languages = sorted(set(languages))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise ValueError("no non-empty transcripts to train the tokenizer on")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece=PAD, unk_piece=UNK,
            control_symbols=control_tokens(languages), hard_vocab_limit=False, num_threads=2,
            minloglevel=2,
        )
        from speech_ed.atomic import atomic_write_binary, atomic_write_text

        sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
        meta = {"languages": languages, "vocab_size": sp.get_piece_size(), "requested_vocab_size": vocab_size,
                "model_type": model_type, "num_training_texts": len(texts)}
        atomic_write_text(out_dir / "tokenizer.json", json.dumps(meta, indent=1))
        # the model last: its presence means 'complete'
        atomic_write_binary(out_dir / "tokenizer.model", lambda f: f.write(model.getvalue()))
        return cls(out_dir / "tokenizer.model")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Text pieces only (no special tokens)."""
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int = -1) -> list[list[int]]:
        """Text pieces of many texts in one SentencePiece call (``num_threads`` -1: all cores)."""
        if len(texts) == 1:  # the batched call costs ~3x a single encode for one text (per-cut counting)
            return [self.sp.encode(texts[0])]
        return self.sp.encode(texts, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens and padding are skipped."""
        return self.sp.decode([i for i in ids if not self.sp.is_control(i) and i != self.pad_id])

    def lang_id(self, lang: str) -> int:
        i = self.sp.piece_to_id(lang_token(lang))
        if i == self.unk_id:
            raise KeyError(f"language {lang!r} has no token in {self.model_path} (it knows {self.languages})")
        return i

    def has_language(self, lang: str) -> bool:
        return self.sp.piece_to_id(lang_token(lang)) != self.unk_id

    def task_id(self, task: str) -> int:
        if task not in TASKS:
            raise KeyError(f"unknown task {task!r}; expected one of {TASKS}")
        return self._id(task_token(task))

    def token_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)


# ---------------------------------------------------------------------------------------------------------------
# NeMo Canary tokenizers, rebuilt from the SentencePiece files of a .nemo archive (speech_ed.nemo). No NeMo import.

CANARY_SPECIAL = "spl_tokens"
CANARY_PAD, CANARY_BOCTX = "<pad>", "<|startofcontext|>"
_CANARY2_LANGS = {"en": "en-US", "es": "es-ES", "fr": "fr-FR", "de": "de-DE"}


class CanaryTokenizer:
    """The tokenizer of a NeMo Canary model, with the interface of :class:`Tokenizer`.

    Two layouts, as NeMo 3.0.0 builds them:

    * aggregate (canary-1b, -1b-flash, -180m-flash): a special-token SentencePiece (``spl_tokens``) and one
      SentencePiece per language, their ids concatenated in order (each model's ids offset by the sizes of the
      models before it). Text is encoded with its language's model; prompt tokens are looked up in
      ``spl_tokens`` one by one.
    * unified (canary-1b-v2): one SentencePiece holding the special tokens as user-defined symbols; text and
      prompts alike are encoded by it (so a prompt may start with the word-boundary piece, as in NeMo).

    :meth:`decode` returns exactly NeMo's text: the pieces joined with '▁' as a space (aggregate, so a leading
    space stays and special tokens are kept as text) or SentencePiece's decode (unified).

    Args:
        models: ordered ``{name: serialized SentencePiece model}``; aggregate: ``spl_tokens`` and languages,
            unified: one entry.
        prompt_format: 'canary' or 'canary2'.
        prompt_defaults: default slot values (NeMo's ``prompt_defaults`` user turn), e.g. ``{"pnc": "yes"}``.
    """

    pad_id: int
    unk_id = 0

    def __init__(self, models: dict[str, bytes], prompt_format: str = "canary", prompt_defaults: dict | None = None):
        if prompt_format not in ("canary", "canary2"):
            raise ValueError(f"prompt_format must be 'canary' or 'canary2', got {prompt_format!r}")
        self.models = dict(models)
        self.prompt_format, self.prompt_defaults = prompt_format, dict(prompt_defaults or {})
        self.aggregate = CANARY_SPECIAL in self.models
        if not self.aggregate and len(self.models) != 1:
            raise ValueError(f"a Canary tokenizer is 'spl_tokens' + languages or one unified model, got "
                             f"{list(self.models)}")
        self.sps = {k: spm.SentencePieceProcessor(model_proto=v) for k, v in self.models.items()}
        self.offsets, offset = {}, 0
        for name, sp in self.sps.items():
            self.offsets[name] = offset
            offset += sp.get_piece_size()
        self._vocab_size = offset
        specials_sp = self.sps[CANARY_SPECIAL] if self.aggregate else next(iter(self.sps.values()))
        self.special = {specials_sp.id_to_piece(i): i for i in range(specials_sp.get_piece_size())
                        if _is_special(specials_sp.id_to_piece(i))}
        if self.aggregate:
            self.languages = [k for k in self.models if k != CANARY_SPECIAL]
        else:
            self.languages = [p[2:-2] for p in self.special if _is_language_token(p)]
        self.meta = {"kind": "canary", "languages": self.languages, "vocab_size": self._vocab_size,
                     "prompt_format": prompt_format}
        self.pad_id, self.eos_id = self.special_id(CANARY_PAD), self.special_id(EOT)
        self.sot_id, self.pnc_id, self.nopnc_id = self.special_id(SOT), self.special_id(PNC), self.special_id(NOPNC)
        self.per_language = self.aggregate

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def special_id(self, token: str) -> int:
        """Id of a special token such as ``<|en|>`` (KeyError naming it when the vocabulary lacks it)."""
        if token not in self.special:
            raise KeyError(f"this Canary tokenizer has no special token {token}")
        return self.special[token]

    def _text_model(self, lang: str | None) -> str:
        if not self.aggregate:
            return next(iter(self.models))
        lang = lang or self.languages[0]
        if lang not in self.sps and _CANARY2_LANGS.get(lang) in self.sps:  # NeMo maps canary-1 codes too
            lang = _CANARY2_LANGS[lang]
        if lang not in self.sps or lang == CANARY_SPECIAL:
            raise KeyError(f"language {lang!r} has no text tokenizer (it knows {self.languages})")
        return lang

    def encode(self, text: str, lang: str | None = None) -> list[int]:
        """Text pieces of ``text`` in language ``lang`` (default: the first language)."""
        name = self._text_model(lang)
        return [i + self.offsets[name] for i in self.sps[name].encode(text)]

    def encode_batch(self, texts: list[str], num_threads: int = -1, langs: list[str] | None = None) -> list[list[int]]:
        return [self.encode(t, lang) for t, lang in zip(texts, langs or [None] * len(texts))]

    def encode_special(self, prompt: str) -> list[int]:
        """Ids of a prompt string made of special tokens, as NeMo tokenizes it: looked up one by one
        (aggregate; a canary2 decoder context is encoded with the target language's model) or encoded by the
        SentencePiece model (unified)."""
        if not self.aggregate:
            return self.sps[next(iter(self.sps))].encode(prompt)
        ids = []
        if prompt.startswith(CANARY_BOCTX):
            ids.append(self.special_id(CANARY_BOCTX))
            prompt = prompt[len(CANARY_BOCTX):]
            end = prompt.find(SOT)
            if end > 0:  # NeMo takes the target language from the 5th special token: <|tgt|>
                ids += self.encode(prompt[:end], prompt[end:].split("<|")[4].replace("|>", ""))
                prompt = prompt[end:]
        while prompt:
            end = prompt.find(">") + 1
            if end == 0:
                raise ValueError(f"prompt text {prompt!r} is not a sequence of special tokens")
            ids.append(self.special_id(prompt[:end]))
            prompt = prompt[end:]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """NeMo's text of ``ids`` (ids past the tokenizer's vocabulary, from the padded output layer, skipped)."""
        ids = [int(i) for i in ids if 0 <= int(i) < self._vocab_size]
        if not self.aggregate:
            return next(iter(self.sps.values())).decode(ids)
        return "".join(self.token_to_piece(i) for i in ids).replace("\u2581", " ")

    def token_to_piece(self, i: int) -> str:
        for name in reversed(self.offsets):
            if i >= self.offsets[name]:
                return self.sps[name].id_to_piece(i - self.offsets[name])
        raise IndexError(i)

    def lang_id(self, lang: str) -> int:
        token = lang_token(lang)
        if token not in self.special:
            raise KeyError(f"language {lang!r} has no token in this Canary tokenizer (it knows {self.languages})")
        return self.special[token]

    def has_language(self, lang: str) -> bool:
        return lang_token(lang) in self.special

    def task_id(self, task: str) -> int:
        if task not in TASKS:
            raise KeyError(f"unknown task {task!r}; expected one of {TASKS}")
        return self.special_id(task_token(task))

    def to_meta(self) -> dict:
        """JSON-able description (models base64-encoded), for ``tokenizer.json`` and model files."""
        import base64

        return {**self.meta, "prompt_defaults": self.prompt_defaults,
                "models": {k: base64.b64encode(v).decode("ascii") for k, v in self.models.items()}}

    @classmethod
    def from_meta(cls, meta: dict) -> CanaryTokenizer:
        import base64

        if "models" not in meta:
            raise ValueError("Canary tokenizer metadata has no 'models'; re-import the .nemo checkpoint")
        models = {k: base64.b64decode(v) for k, v in meta["models"].items()}
        return cls(models, meta.get("prompt_format", "canary"), meta.get("prompt_defaults"))

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/tokenizer.{json,model}`` (the model file: the special-token or unified model), which
        :meth:`Tokenizer.load` reads back as this tokenizer. Returns the model path."""
        from speech_ed.atomic import atomic_write_binary, atomic_write_text

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model = next(iter(self.models.values()))
        atomic_write_text(out_dir / "tokenizer.json", json.dumps(self.to_meta()))
        atomic_write_binary(out_dir / "tokenizer.model", lambda f: f.write(model))  # last: 'complete' marker
        return out_dir / "tokenizer.model"


def _is_special(piece: str) -> bool:
    return (piece.startswith("<|") and piece.endswith("|>")) or piece == CANARY_PAD


def _is_language_token(piece: str) -> bool:
    """``<|en|>``, ``<|en-US|>``: an ISO 639-1 code, optionally with a region."""
    import re

    return re.fullmatch(r"<\|[a-z]{2}(-[A-Z]{2})?\|>", piece) is not None


def train_tokenizer_on_cuts(cuts_path: str | os.PathLike, out_dir: str | os.PathLike, vocab_size: int,
                            languages: Iterable[str], pnc: bool = False, model_type: str = "bpe") -> Tokenizer:
    """Train on the decoder targets of the cuts (audio-less cuts are fine); cuts without text are counted.

    ``speech-ed train-tokenizer`` and every recipe's tokenizer stage call this.
    """
    from lhotse import CutSet

    from speech_ed.data.prompt import cut_target  # prompt builds on this module

    texts, no_text = [], 0
    for cut in CutSet.from_file(cuts_path):
        try:
            text = cut_target(cut, pnc).text
        except ValueError:
            text = ""
        if text.strip():
            texts.append(text)
        else:
            no_text += 1
    if no_text:
        print(f"train-tokenizer: {no_text} cuts without text were not used")
    tok = Tokenizer.train(texts, out_dir, vocab_size, languages, model_type)
    print(f"train-tokenizer: {tok.vocab_size} pieces from {len(texts)} transcripts -> {tok.model_path}")
    return tok
