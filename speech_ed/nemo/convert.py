"""Import a NeMo Canary ``.nemo`` checkpoint as an :class:`~speech_ed.models.aed.AEDModel`, and export it back.

The import reads the archive (:mod:`speech_ed.nemo.archive`), maps the config (:mod:`speech_ed.nemo.config_map`)
and the weights (:mod:`speech_ed.nemo.weights`), rebuilds the tokenizer
(:class:`~speech_ed.data.tokenizer.CanaryTokenizer`) and checks that what our model computes itself (window,
mel filters, decoder positions, tied output weight) equals NeMo's stored copies. The model file it writes is an
ordinary speech_ed ``model.pt`` whose extras also carry the NeMo config, so :func:`export_nemo` can write a
``.nemo`` that NeMo 3.0.0 restores.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from speech_ed.data.tokenizer import CANARY_SPECIAL, CanaryTokenizer
from speech_ed.models.dims import ModelDims
from speech_ed.nemo.archive import NemoArchive, NemoFormatError, read_nemo, write_nemo
from speech_ed.nemo.config_map import dims_from_config
from speech_ed.nemo.weights import check_computed, to_nemo, to_ours


@dataclass
class ImportedNemo:
    """A .nemo checkpoint as a speech_ed model.

    Attributes:
        model: the :class:`AEDModel` in eval mode; dims: its :class:`ModelDims`.
        tokenizer: the rebuilt Canary tokenizer.
        extra: the model file extras (tokenizer, NeMo config and unused tensors, notes).
        notes: training-only differences the mapping found (inference is exact).
        checked: max abs difference of each computed tensor from NeMo's stored copy.
    """

    model: object
    dims: ModelDims
    tokenizer: CanaryTokenizer
    extra: dict
    notes: list[str] = field(default_factory=list)
    checked: dict = field(default_factory=dict)


def tokenizer_from_archive(archive: NemoArchive, prompt_format: str, prompt_defaults: dict) -> CanaryTokenizer:
    """The Canary tokenizer the config's ``tokenizer`` section describes, from the archive's files."""
    cfg = archive.config.get("tokenizer") or {}
    kind = str(cfg.get("type", "")).lower()
    custom = str((cfg.get("custom_tokenizer") or {}).get("_target_", ""))
    if kind == "agg":
        if custom and not custom.endswith("CanaryTokenizer"):
            raise NemoFormatError(f"tokenizer.custom_tokenizer._target_={custom!r}: only CanaryTokenizer")
        langs = cfg.get("langs") or {}
        if CANARY_SPECIAL not in langs:
            raise NemoFormatError(f"tokenizer.langs has no {CANARY_SPECIAL} (the Canary special-token model)")
        models = {}
        for lang, sub in langs.items():
            if str(sub.get("type", "bpe")).lower() != "bpe":
                raise NemoFormatError(f"tokenizer.langs.{lang}.type={sub.get('type')!r}: only SentencePiece (bpe)")
            models[lang] = archive.artifact(sub.get("model_path"), f"tokenizer.langs.{lang}.model_path")
    elif kind == "bpe":
        if custom and not custom.endswith("CanaryBPETokenizer"):
            raise NemoFormatError(f"tokenizer.custom_tokenizer._target_={custom!r}: a unified Canary tokenizer "
                                  "needs CanaryBPETokenizer")
        models = {"unified": archive.artifact(cfg.get("model_path"), "tokenizer.model_path")}
    else:
        raise NemoFormatError(f"tokenizer.type={cfg.get('type')!r}: only 'agg' and 'bpe' (SentencePiece)")
    try:
        return CanaryTokenizer(models, prompt_format, prompt_defaults)
    except KeyError as e:
        raise NemoFormatError(f"tokenizer: {e.args[0]} (a Canary tokenizer needs <pad>, <|startoftranscript|>, "
                              "<|endoftext|>, <|pnc|> and <|nopnc|>)") from None


def load_nemo(path: str | os.PathLike) -> ImportedNemo:
    """Build our model from a .nemo archive (or its extracted folder); nothing from NeMo is imported.

    Raises:
        NemoFormatError: something in the archive cannot be mapped (the message names the key).
    """
    from speech_ed.models.aed import AEDModel

    archive = read_nemo(path)
    emb = archive.state_dict.get("transf_decoder._embedding.token_embedding.weight")
    if emb is None:
        raise NemoFormatError("weights: transf_decoder._embedding.token_embedding.weight is missing")
    mapped = dims_from_config(archive.config, vocab_size=int(emb.shape[0]))
    tokenizer = tokenizer_from_archive(archive, mapped.prompt_format, mapped.prompt_defaults)
    if tokenizer.vocab_size > mapped.dims.vocab_size:
        raise NemoFormatError(f"tokenizer has {tokenizer.vocab_size} tokens but the decoder only "
                              f"{mapped.dims.vocab_size} outputs")
    state, unused = to_ours(archive.state_dict, mapped.dims, mapped.use_bias)
    model = AEDModel(mapped.dims)
    model.load_state_dict(state, strict=True)
    model.eval()
    checked = check_computed(model, archive.state_dict, mapped.dims)
    notes = list(mapped.notes)
    if unused:
        notes.append(f"kept aside (inference never reads them): {sorted(unused)}")
    extra = {"tokenizer_model": next(iter(tokenizer.models.values())), "tokenizer_meta": tokenizer.to_meta(),
             "nemo": {"config": archive.config, "unused": unused, "use_bias": mapped.use_bias, "notes": notes,
                      "source": str(path)}}
    return ImportedNemo(model=model, dims=mapped.dims, tokenizer=tokenizer, extra=extra, notes=notes,
                        checked=checked)


def import_nemo(path: str | os.PathLike, out: str | os.PathLike,
                tokenizer_dir: str | os.PathLike | None = None) -> ImportedNemo:
    """:func:`load_nemo`, then write ``out`` (a speech_ed model file) and optionally the tokenizer folder."""
    from speech_ed.models.checkpoint import save_model_file

    imported = load_nemo(path)
    save_model_file(out, imported.model, imported.dims, imported.extra)
    if tokenizer_dir is not None:
        imported.tokenizer.save(tokenizer_dir)
    return imported


def _tokenizer_files(config: dict, tokenizer: CanaryTokenizer) -> tuple[dict, dict[str, bytes]]:
    """The tokenizer config section pointing at archive members, and those members."""
    cfg = copy.deepcopy(config.get("tokenizer") or {})
    files = {}

    def add(prefix: str, name: str) -> dict:
        """The members NeMo's restore looks for (model, vocab.txt, tokenizer.vocab: with all three named, it
        never joins the tokenizer ``dir``, which is null here) for one SentencePiece model."""
        sp = tokenizer.sps[name]
        pieces = range(sp.get_piece_size())
        files[f"{prefix}tokenizer.model"] = tokenizer.models[name]
        files[f"{prefix}vocab.txt"] = "".join(sp.id_to_piece(i) + "\n" for i in pieces).encode()
        files[f"{prefix}tokenizer.vocab"] = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in pieces).encode()
        return {"dir": None, "model_path": f"nemo:{prefix}tokenizer.model", "vocab_path": f"nemo:{prefix}vocab.txt",
                "spe_tokenizer_vocab": f"nemo:{prefix}tokenizer.vocab"}

    if tokenizer.aggregate:
        langs = {}
        for lang in tokenizer.models:
            sub = dict((cfg.get("langs") or {}).get(lang) or {"type": "bpe"})
            langs[lang] = {**sub, **add(f"{lang}_", lang)}
        cfg["langs"] = langs
    else:
        cfg.update(add("", next(iter(tokenizer.models))))
    return cfg, files


def export_nemo(model, dims: ModelDims, extra: dict, out: str | os.PathLike) -> Path:
    """Write a .nemo archive of a model imported by :func:`load_nemo` (possibly fine-tuned since).

    Raises:
        ValueError: the model file was not imported from a .nemo (its architecture has no NeMo config).
    """
    nemo = extra.get("nemo")
    if not nemo or "config" not in nemo:
        raise ValueError("only models imported from a .nemo checkpoint can be exported (no NeMo config in the file)")
    tokenizer = CanaryTokenizer.from_meta(extra["tokenizer_meta"])
    config = copy.deepcopy(nemo["config"])
    config["tokenizer"], files = _tokenizer_files(config, tokenizer)
    state = to_nemo(model, dims, nemo.get("unused", {}), nemo.get("use_bias", True))
    write_nemo(out, config, state, files)
    return Path(out)


def dims_summary(dims: ModelDims) -> str:
    """One line describing the imported shape."""
    d = dataclasses.asdict(dims)
    return (f"encoder {d['num_encoder_layers']} x {d['encoder_dim']} ({d['pos_enc']} positions, {d['subsampling']} "
            f"{d['subsampling_factor']}x, conv norm {d['conv_norm']}), decoder {d['num_decoder_layers']} x "
            f"{d['decoder_dim']}, vocab {d['vocab_size']}, {d['n_mels']} mels")
