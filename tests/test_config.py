import pytest

from speech_ed.config import ConfigError, list_model_presets, load_config, load_model_preset, save_config


def test_defaults_and_overrides_merge():
    cfg = load_config([], ["model_preset=tiny", "optim.lr=0.01", "data.max_duration_s=120"])
    assert cfg.model.encoder_dim == load_model_preset("tiny").encoder_dim
    assert cfg.optim.lr == 0.01 and cfg.data.max_duration_s == 120


@pytest.mark.parametrize("overrides, field", [
    (["optimm.lr=1"], "optimm"),
    (["model.not_a_dim=3"], "model.not_a_dim"),
    (["optim.lr=fast"], "optim.lr"),
    (["data.sampler=2d"], "data.bucket_bins"),
    (["data.sampler=1d"], "data.bucket_bins"),
    (["data.sampler=sorted"], "data.sampler"),
    (["data.sampler=bucket2d"], "data.sampler"),
    (["loss.ctc_weight=0.3", "model.ctc_head=false"], "loss.ctc_weight"),
    (["model.encoder_dim=100", "model.num_encoder_heads=3"], "model.encoder_dim"),
    (["data.max_duration_s=10", "data.max_utterance_s=30"], "data.max_duration_s"),
    (["prepare.languages=[fr]"], "tokenizer.languages"),
    (["model_preset=huge"], "model_preset"),
    (["data.bucket_batch_sizes=x.yaml"], "data.bucket_batch_sizes"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as e:
        load_config([], overrides)
    assert field in str(e.value)


def test_yaml_unknown_key_and_missing_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trainer:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match="trainer.max_stepz"):
        load_config([p])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "nope.yaml"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config([], ["run=abc", "model_preset=tiny"])
    save_config(cfg, tmp_path / "config.resolved.yaml")
    again = load_config([tmp_path / "config.resolved.yaml"])
    assert again == cfg


def test_every_shipped_yaml_loads():
    from pathlib import Path

    for name in list_model_presets():
        assert load_model_preset(name).encoder_dim > 0
    for recipe_cfg in Path(__file__).parents[1].glob("recipes/*/config.yaml"):
        load_config([recipe_cfg])


def test_every_recipe_has_its_four_files():
    from pathlib import Path

    recipes = [p for p in (Path(__file__).parents[1] / "recipes").iterdir() if p.is_dir() and p.name != "slurm"]
    assert recipes
    for r in recipes:
        for f in ("README.md", "prepare.py", "config.yaml", "RESULTS.md"):
            assert (r / f).is_file(), f"{r.name} lacks {f}"


def test_old_strategy_names_are_refused_with_the_new_one():
    for old, new in (("bucket2d", "2d"), ("bucket1d", "1d"), ("dynamic", "lhotse")):
        with pytest.raises(ConfigError, match=f"data.sampler: '{old}' is now called '{new}'"):
            load_config([], [f"data.sampler={old}"])


def test_enum_errors_name_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"data.sampler.*'random', '1d', '2d', 'lhotse'"):
        load_config([], ["data.sampler=sorted"])
    with pytest.raises(ConfigError, match=r"trainer.logger.*'csv', 'wandb'"):
        load_config([], ["trainer.logger=tensorboard"])


def test_configs_built_in_code_are_checked_from_the_types_too():
    import dataclasses

    from speech_ed.config import validate_config

    cfg = load_config([], [])
    with pytest.raises(ConfigError, match=r"data.sampler: must be one of 'random', '1d', '2d', 'lhotse'; got 'x'"):
        validate_config(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sampler="x")))
    with pytest.raises(ConfigError, match=r"eval.mode: must be one of 'auto', 'attention', 'joint', 'ctc'"):
        validate_config(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, mode="greedy")))


def test_eval_config_is_the_decoder_options_with_its_own_defaults():
    import dataclasses

    from speech_ed.config import EvalConfig
    from speech_ed.models.decoding import DecodeOptions

    ev, opts = EvalConfig(), DecodeOptions()
    assert {f.name for f in dataclasses.fields(DecodeOptions)} <= {f.name for f in dataclasses.fields(EvalConfig)}
    differ = {f.name for f in dataclasses.fields(DecodeOptions) if getattr(ev, f.name) != getattr(opts, f.name)}
    assert differ == {"mode", "beam_size"} and (ev.mode, ev.beam_size, ev.batch_size, ev.split) == ("auto", 4, 64, "test")
