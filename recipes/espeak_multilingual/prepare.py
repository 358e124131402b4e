"""Embedded multilingual recipe: espeak-ng speech from the Debian fortune databases, trained end to end on CPU.

Usage::

    make recipe                                  # every stage, default config
    speech-ed recipe espeak_multilingual --stage 3 run=my_run trainer.max_time_min=5

Stages (each idempotent, skipped when its ``.done`` marker exists):
    0 prepare    synthesise the corpus, write Lhotse manifests     -> <run>/manifests/
    1 tokenizer  SentencePiece with Canary special tokens          -> <run>/tokenizer/
    2 bins       2D (duration, decoder tokens) bucket bins         -> <run>/bucket_bins.yaml
    3 train      Lightning training, time-bounded                  -> <run>/model.pt, checkpoints/, logs/
    4 evaluate   greedy decoding of the test split, WER and RTFx   -> <run>/results.json, RESULTS.md
"""

from __future__ import annotations

from pathlib import Path

from speech_ed.config import ExperimentConfig
from speech_ed.paths import RunPaths
from speech_ed.recipe import run_recipe


def prepare(cfg: ExperimentConfig) -> None:
    from speech_ed.corpora.espeak import prepare_espeak_corpus

    p, paths = cfg.prepare, RunPaths.from_config(cfg)
    prepare_espeak_corpus(paths.manifest_dir, languages=tuple(p.languages), num_train=p.num_train,
                          num_dev=p.num_dev, num_test=p.num_test, num_workers=p.num_workers, seed=cfg.seed)


def tokenizer(cfg: ExperimentConfig) -> None:
    from speech_ed.data.tokenizer import train_tokenizer_on_cuts

    t, paths = cfg.tokenizer, RunPaths.from_config(cfg)
    train_tokenizer_on_cuts(paths.manifest("train"), paths.tokenizer_dir, t.vocab_size, t.languages, t.pnc,
                            t.model_type)


def bins(cfg: ExperimentConfig) -> None:
    if cfg.data.sampler not in ("2d", "1d"):  # 1d batches by the bins' duration groups
        print(f"data.sampler={cfg.data.sampler}: no bucket bins needed")
        return
    from speech_ed.data.bin_estimation import estimate_bins_for_run

    estimate_bins_for_run(cfg)


def train(cfg: ExperimentConfig) -> None:
    from speech_ed.training.train import train as train_model

    train_model(cfg)


def evaluate(cfg: ExperimentConfig) -> None:
    from speech_ed.evaluation.evaluate import evaluate_split

    evaluate_split(cfg)


STAGES = [("prepare", prepare), ("tokenizer", tokenizer), ("bins", bins), ("train", train), ("evaluate", evaluate)]


def main(argv: list[str] | None = None) -> int:
    return run_recipe(Path(__file__).with_name("config.yaml"), STAGES, argv)


if __name__ == "__main__":
    raise SystemExit(main())
