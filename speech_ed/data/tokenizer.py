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
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

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
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load from a ``tokenizer.model`` file or the folder holding it."""
        path = Path(path)
        return cls(path / "tokenizer.model" if path.is_dir() else path)

    @classmethod
    def train(cls, texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int, languages: Iterable[str],
              model_type: str = "bpe") -> "Tokenizer":
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
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            (Path(tmp) / "tokenizer.model").write_bytes(model.getvalue())
            sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
            meta = {"languages": languages, "vocab_size": sp.get_piece_size(), "requested_vocab_size": vocab_size,
                    "model_type": model_type, "num_training_texts": len(texts)}
            (Path(tmp) / "tokenizer.json").write_text(json.dumps(meta, indent=1))
            for name in ("tokenizer.json", "tokenizer.model"):  # model last: its presence means 'complete'
                shutil.move(str(Path(tmp) / name), str(out_dir / f".{name}.tmp"))
                os.replace(out_dir / f".{name}.tmp", out_dir / name)
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
