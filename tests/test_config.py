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
    (["data.sampler=bucket2d"], "data.bucket_bins"),
    (["data.sampler=bucket1d"], "data.bucket_bins"),
    (["data.sampler=sorted"], "data.sampler"),
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
