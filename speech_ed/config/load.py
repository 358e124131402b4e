"""Loading: schema defaults < ``conf/model/<model_preset>.yaml`` < YAML files < ``key=value`` overrides."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from speech_ed.atomic import atomic_write_text
from speech_ed.config.schema import ExperimentConfig
from speech_ed.config.validate import ConfigError, validate_config
from speech_ed.models.dims import ModelDims
from speech_ed.sampling.strategies import RENAMED, STRATEGIES

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
MODEL_PRESET_DIR = CONF_DIR / "model"
RENAMED_VALUES = {"data.sampler": (RENAMED, "the batching strategies are " + ", ".join(STRATEGIES)
                                   + " (speech_ed/sampling/strategies.py)")}
"""Field -> ({old value: new value}, what to say): old values are refused with the new name."""


def list_model_presets() -> list[str]:
    return sorted(p.stem for p in MODEL_PRESET_DIR.glob("*.yaml"))


def load_model_preset(name: str) -> ModelDims:
    """Return the :class:`ModelDims` of ``conf/model/<name>.yaml`` (validated against the schema)."""
    path = MODEL_PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"model_preset={name!r}: no such preset; choose one of {list_model_presets()}")
    merged = _merge(OmegaConf.structured(ModelDims), [OmegaConf.load(path)], f"model preset {path}")
    return OmegaConf.to_object(merged)


def _merge(base: DictConfig, parts: list, what: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, *parts)
    except OmegaConfBaseException as e:  # unknown key, wrong type or a value the field's Literal lacks
        key = getattr(e, "full_key", None) or "?"
        renamed, why = RENAMED_VALUES.get(key, ({}, ""))
        value = getattr(e, "value", None)
        if isinstance(value, str) and value in renamed:
            raise ConfigError(f"{key}: {value!r} is now called {renamed[value]!r}; {why}") from None
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{what}: field {key!r}: {msg}") from None


def load_config(yaml_paths: list[str | os.PathLike] = (), overrides: list[str] = ()) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig`.

    Args:
        yaml_paths: YAML files merged in order.
        overrides: ``key=value`` strings (dotted keys), applied last.

    Raises:
        ConfigError: unknown key, wrong type or impossible combination, naming the field.
    """
    schema = OmegaConf.structured(ExperimentConfig)
    parts = []
    for p in yaml_paths:
        if not Path(p).is_file():
            raise ConfigError(f"config file {p} does not exist")
        parts.append(OmegaConf.load(p))
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form key=value")
    try:
        cli = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"overrides: {e}") from None
    first = _merge(schema, parts + [cli], "config")
    preset = load_model_preset(first.model_preset)
    merged = _merge(schema, [OmegaConf.create({"model": OmegaConf.structured(preset)})] + parts + [cli], "config")
    cfg: ExperimentConfig = OmegaConf.to_object(merged)
    validate_config(cfg)
    return cfg


def save_config(cfg: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the resolved config atomically (write, then rename)."""
    atomic_write_text(path, config_to_yaml(cfg))


def config_to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
