"""Every stage of the embedded recipe on a handful of generated utterances (espeak-ng needed)."""

import json
import shutil

import pytest

from speech_ed.recipe import load_recipe


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make install)")
def test_embedded_recipe_runs_every_stage(tmp_path, capsys):
    recipe = load_recipe("espeak_multilingual")
    args = [f"exp_dir={tmp_path}", "run=e2e", "model_preset=tiny", "prepare.num_train=12", "prepare.num_dev=2",
            "prepare.num_test=3", "tokenizer.vocab_size=80", "data.num_buckets=2", "data.num_sub_buckets=2",
            "data.num_workers=0", "trainer.max_steps=3", "trainer.max_time_min=null", "optim.warmup_steps=1",
            "trainer.checkpoint_every_n_steps=2"]
    assert recipe.main(args) == 0
    run = tmp_path / "espeak_multilingual" / "e2e"
    for name in ("manifests/cuts_train.jsonl.gz", "tokenizer/tokenizer.model", "bucket_bins.yaml",
                 "config.resolved.yaml", "model.pt", "train_stats.json", "results.json", "RESULTS.md"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["num_utterances"] == 6 and set(results["wer"]["per_language"]) == {"es", "it"}
    assert json.loads((run / "train_stats.json").read_text())["global_step"] == 3
    # a second run skips every finished stage
    capsys.readouterr()
    assert recipe.main(args) == 0
    assert capsys.readouterr().out.count("already done") == 5
