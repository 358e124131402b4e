"""Checks of a whole :class:`ExperimentConfig`, run before any data is read; each error names the field and the fix.

Enum fields are ``Literal`` types, checked from the type (:func:`check_literals`); the model's dimensions and
the decoding options are checked by the model's own checks (``models.aed.check_dims``, ``DecodeOptions.check``
via :func:`speech_ed.models.decoding.decode_options`); what is left here is what only the whole config knows.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

from speech_ed.config.schema import ExperimentConfig
from speech_ed.models.aed import check_dims
from speech_ed.sampling.strategies import WITH_BINS


class ConfigError(ValueError):
    """A configuration problem, reported before any data is read."""


def bad(field_name: str, why: str):
    raise ConfigError(f"{field_name}: {why}")


def literal_values(hint: Any) -> tuple | None:
    """The values a ``Literal[...]`` or ``Optional[Literal[...]]`` annotation allows (None when it is neither)."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        literals = [a for a in args if typing.get_origin(a) is Literal]
        if literals:
            return tuple(v for a in literals for v in typing.get_args(a)) + ((None,) if type(None) in args else ())
    return None


def check_literals(obj: Any, prefix: str = "") -> None:
    """Every ``Literal`` field of the dataclass ``obj`` (and of the dataclasses it holds) against its type.

    OmegaConf checks the same types while merging; this covers configs built in code.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), f"{prefix}{f.name}"
        allowed = literal_values(hints[f.name])
        if allowed is not None and value not in allowed:
            bad(name, f"must be one of {', '.join(repr(v) for v in allowed)}; got {value!r}")
        items = value if isinstance(value, list) else [value]
        for k, item in enumerate(items):
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                check_literals(item, f"{name}[{k}]." if isinstance(value, list) else f"{name}.")


def validate_config(cfg: ExperimentConfig) -> None:
    """Cross-field checks; each error names the field and the fix."""
    from speech_ed.models.decoding import decode_options

    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.trainer
    check_literals(cfg)
    try:  # vocab_size 0 means "from the tokenizer": every other dimension is the model's to check
        check_dims(dataclasses.replace(m, vocab_size=m.vocab_size or 1), prefix="model.")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.loss.ctc_weight > 0 and not m.ctc_head:
        bad("loss.ctc_weight", f"is {cfg.loss.ctc_weight} but model.ctc_head is false; set one of them")
    if not 0.0 <= cfg.loss.ctc_weight < 1.0:
        bad("loss.ctc_weight", f"must be in [0, 1), got {cfg.loss.ctc_weight}")
    missing = sorted(set(cfg.prepare.languages) - set(cfg.tokenizer.languages))
    if missing:
        bad("tokenizer.languages", f"lacks {missing}, which prepare.languages produces; add them")
    if not cfg.tokenizer.languages:
        bad("tokenizer.languages", "must list at least one language")
    _validate_inputs(cfg)
    if d.sampler in WITH_BINS and not d.bucket_bins:
        bad("data.bucket_bins", f"data.sampler={d.sampler} needs bucket bins; run `speech-ed estimate-bins` first")
    if d.bucket_batch_sizes and d.sampler != "2d":
        bad("data.bucket_batch_sizes", "per-bucket batch sizes need data.sampler=2d")
    if d.max_duration_s <= 0:
        bad("data.max_duration_s", f"must be positive, got {d.max_duration_s}")
    if d.max_duration_s < d.max_utterance_s and not d.bucket_batch_sizes:
        bad("data.max_duration_s", f"{d.max_duration_s} is below data.max_utterance_s={d.max_utterance_s}: "
            "the longest utterance would not fit in a batch")
    if d.quadratic_duration_s is not None and d.quadratic_duration_s <= 0:
        bad("data.quadratic_duration_s", "must be positive or null")
    if len(o.betas) != 2:
        bad("optim.betas", f"needs two values, got {list(o.betas)}")
    if o.lr <= 0:
        bad("optim.lr", f"must be positive, got {o.lr}")
    if t.max_steps <= 0:
        bad("trainer.max_steps", f"must be positive, got {t.max_steps}")
    if o.warmup_steps >= t.max_steps and t.max_time_min is None:
        bad("optim.warmup_steps", f"{o.warmup_steps} is not below trainer.max_steps={t.max_steps}")
    if t.max_bad_steps_in_a_row < 1:
        bad("trainer.max_bad_steps_in_a_row", f"must be >= 1, got {t.max_bad_steps_in_a_row}")
    if t.resume_from not in (None, "", "last") and not Path(t.resume_from).is_file():
        bad("trainer.resume_from", f"{t.resume_from} does not exist; give a checkpoint file, 'last' or null")
    try:  # eval.* as the decoder gets them, checked by DecodeOptions.check (mode 'auto' resolved)
        decode_options(cfg.eval, has_ctc=m.ctc_head)
    except ValueError as e:
        raise ConfigError(str(e) if str(e).startswith("eval.") else f"eval.{e}") from None
    if cfg.oomptimize.probe == "cpu" and cfg.oomptimize.memory_budget_gib is None:
        bad("oomptimize.memory_budget_gib", "oomptimize.probe=cpu needs a memory budget in GiB")
    if not 0.0 < cfg.oomptimize.memory_fraction <= 1.0:
        bad("oomptimize.memory_fraction", f"must be in (0, 1], got {cfg.oomptimize.memory_fraction}")


def _validate_inputs(cfg: ExperimentConfig) -> None:
    d = cfg.data
    if d.buffer_size is not None and d.buffer_size < 1:
        bad("data.buffer_size", f"must be >= 1 or null (automatic), got {d.buffer_size}")
    if d.cuts_per_epoch is not None and d.cuts_per_epoch < 1:
        bad("data.cuts_per_epoch", f"must be >= 1 or null (all cuts once), got {d.cuts_per_epoch}")
    if not d.inputs:
        return
    if d.sampler == "lhotse":
        bad("data.inputs", "several weighted inputs need a speech_ed sampler: data.sampler=2d, 1d or random")
    weighted = [i.weight is not None for i in d.inputs]
    if any(weighted) and not all(weighted):
        bad("data.inputs", "give a weight for every input or for none (none: each corpus once per epoch)")
    names = []
    for k, i in enumerate(d.inputs):
        where = f"data.inputs[{k}]"
        if not i.path:
            bad(f"{where}.path", "is empty; give a manifest file, Shar directory or NeMo manifest")
        if not Path(i.path).exists():
            bad(f"{where}.path", f"{i.path} does not exist")
        if i.weight is not None and not i.weight > 0:
            bad(f"{where}.weight", f"must be positive, got {i.weight}")
        for lang_field in ("language", "target_language"):
            lang = getattr(i, lang_field)
            if lang is not None and lang not in cfg.tokenizer.languages:
                bad(f"{where}.{lang_field}", f"{lang!r} is not in tokenizer.languages {list(cfg.tokenizer.languages)}")
        path = Path(i.path)
        names.append(i.name or (path.name if path.is_dir() else path.name.split(".")[0]))
    if len(set(names)) != len(names):
        bad("data.inputs", f"inputs need distinct names, got {names}; set data.inputs[k].name")
