"""Experiment configuration: a dataclass schema, YAML files and ``key=value`` overrides merged with OmegaConf.

Merge order (later wins): schema defaults < ``conf/model/<model_preset>.yaml`` < each YAML file given <
command-line ``key=value`` overrides. Unknown keys, wrong types, values an enum (``Literal``) field does not
allow and impossible combinations raise :class:`ConfigError` naming the field, before any data is read.

Usage::

    cfg = load_config(["recipes/espeak_multilingual/config.yaml"], ["optim.lr=1e-3", "model_preset=tiny"])
    save_config(cfg, "exp/espeak_multilingual/run0/config.resolved.yaml")

Modules: ``schema`` (the dataclasses), ``load`` (presets, merging, saving), ``validate`` (the checks).
"""

from speech_ed.config.load import (
    CONF_DIR,
    MODEL_PRESET_DIR,
    config_to_yaml,
    list_model_presets,
    load_config,
    load_model_preset,
    save_config,
)
from speech_ed.config.schema import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    InputConfig,
    LossConfig,
    OomptimizeConfig,
    OptimConfig,
    PrepareConfig,
    TokenizerConfig,
    TrainerConfig,
)
from speech_ed.config.validate import ConfigError, validate_config

__all__ = [
    "CONF_DIR", "MODEL_PRESET_DIR", "ConfigError", "DataConfig", "EvalConfig", "ExperimentConfig", "InputConfig",
    "LossConfig", "OomptimizeConfig", "OptimConfig", "PrepareConfig", "TokenizerConfig", "TrainerConfig",
    "config_to_yaml", "list_model_presets", "load_config", "load_model_preset", "save_config", "validate_config",
]
