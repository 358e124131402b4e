"""LibriSpeech 960 h: canary_180m_flash with 2D bucketing and OOMptimizer batch sizes, on GPUs.

Usage::

    make recipe RECIPE=librispeech DATA_DIR=/data/librispeech          # every stage
    speech-ed recipe librispeech --stop-stage 4 prepare.data_dir=/data/librispeech   # data, bins, batch sizes
    speech-ed recipe librispeech --stage 6 prepare.data_dir=/data/librispeech run=my_run   # evaluate only

Stages (each idempotent, skipped when its ``.done`` marker exists):
    0 download     find the parts under DATA_DIR; fetch missing ones with lhotse when the network allows
    1 manifests    lhotse's prepare_librispeech -> lazy cuts_{train,dev,test,<part>}.jsonl.gz
    2 tokenizer    SentencePiece on the training transcripts, Canary special tokens   -> <run>/tokenizer/
    3 bins         2D (duration, decoder tokens) bucket bins                         -> <run>/bucket_bins.yaml
    4 batch_sizes  OOMptimizer: cuda probe on a GPU, else simulate for oomptimize.target_gpu
    5 train        Lightning training (DDP on many GPUs / nodes: see recipes/slurm/README.md)
    6 evaluate     WER per dev/test part and RTFx                                    -> <run>/results.json

``DATA_DIR`` may hold the parts as OpenSLR's archives unpack (``DATA_DIR/LibriSpeech/<part>``) or directly
(``DATA_DIR/<part>``).
"""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

from speech_ed.atomic import atomic_write_text
from speech_ed.config import ConfigError, ExperimentConfig
from speech_ed.paths import RunPaths
from speech_ed.recipe import run_recipe

LANGUAGE = "en"
OPENSLR_URL = "https://www.openslr.org/resources/12"
PART_SIZES = {"train-clean-100": "6.3 GB", "train-clean-360": "23 GB", "train-other-500": "30 GB",
              "dev-clean": "337 MB", "dev-other": "314 MB", "test-clean": "346 MB", "test-other": "328 MB",
              "dev-clean-2": "126 MB", "train-clean-5": "332 MB"}


def all_parts(cfg: ExperimentConfig) -> list[str]:
    p = cfg.prepare
    return list(dict.fromkeys(p.train_parts + p.dev_parts + p.test_parts))


def find_corpus(data_dir: Path, parts: list[str]) -> Path:
    """Where the part folders are: ``data_dir/LibriSpeech`` (as the archives unpack) or ``data_dir``."""
    for root in (data_dir / "LibriSpeech", data_dir):
        if any((root / part).is_dir() for part in parts):
            return root
    return data_dir / "LibriSpeech"


def missing_parts(root: Path, parts: list[str]) -> list[str]:
    """Parts without a single ``<speaker>/<chapter>/*.trans.txt`` under ``root/<part>``."""
    return [part for part in parts if next((root / part).glob("*/*/*.trans.txt"), None) is None]


def server_reachable(host: str = "www.openslr.org", port: int = 443, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the download server opens within ``timeout_s``."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def missing_data_message(data_dir: Path, missing: list[str], why: str) -> str:
    """What to download, from where, and where to put it."""
    archives = "\n".join(f"    {OPENSLR_URL}/{part}.tar.gz  ({PART_SIZES.get(part, '?')})"
                         for part in missing)
    return (f"LibriSpeech parts not found under {data_dir}: {', '.join(missing)}.\n"
            f"Nothing was downloaded: {why}.\n"
            f"Download these archives (https://www.openslr.org/12):\n{archives}\n"
            f"and unpack each into {data_dir}:\n"
            f"    tar -xzf <part>.tar.gz -C {data_dir}\n"
            f"which gives {data_dir}/LibriSpeech/<part>/<speaker>/<chapter>/*.flac and *.trans.txt. "
            f"Then re-run:\n"
            f"    make recipe RECIPE=librispeech DATA_DIR={data_dir}")


def download(cfg: ExperimentConfig) -> None:
    parts = all_parts(cfg)
    data_dir = Path(cfg.prepare.data_dir).resolve()
    missing = missing_parts(find_corpus(data_dir, parts), parts)
    if not missing:
        print(f"LibriSpeech: all {len(parts)} parts found in {find_corpus(data_dir, parts)}")
        return
    if not cfg.prepare.download:
        raise SystemExit(missing_data_message(data_dir, missing, "prepare.download is false"))
    if not server_reachable():
        why = "www.openslr.org is not reachable (no network)"
        raise SystemExit(missing_data_message(data_dir, missing, why))
    from lhotse.recipes.librispeech import download_librispeech

    print(f"LibriSpeech: downloading {missing} into {data_dir} (lhotse)", flush=True)
    download_librispeech(data_dir, dataset_parts=missing)
    still = missing_parts(find_corpus(data_dir, parts), parts)
    if still:
        raise SystemExit(missing_data_message(data_dir, still, "the download did not produce them"))


def _write_cuts(cuts, path: Path) -> None:
    tmp = path.with_name(path.name.replace(".jsonl.gz", ".partial.jsonl.gz"))
    cuts.to_file(tmp)
    os.replace(tmp, path)


def manifests(cfg: ExperimentConfig) -> None:
    """lhotse's recordings/supervisions per part, then lazy (jsonl.gz) cuts per part and per split.

    ``cuts_train.jsonl.gz`` joins the training parts in one shuffled order (a lazy manifest streams in file
    order, and LibriSpeech's is by speaker); ``cuts_dev`` and ``cuts_test`` join the dev and test parts.
    Transcripts whose flac is missing are dropped by lhotse; they are counted here, per part.
    """
    from lhotse import CutSet, SupervisionSet
    from lhotse.recipes.librispeech import prepare_librispeech
    from lhotse.utils import fastcopy

    p, paths = cfg.prepare, RunPaths.from_config(cfg)
    out = paths.manifest_dir
    parts = all_parts(cfg)
    root = find_corpus(Path(p.data_dir).resolve(), parts)
    prepared = prepare_librispeech(root, dataset_parts=parts, output_dir=out / "lhotse",
                                   num_jobs=p.num_workers)
    stats, by_part = {}, {}
    for part in parts:
        supervisions = SupervisionSet.from_segments(
            fastcopy(s, language=LANGUAGE) for s in prepared[part]["supervisions"])  # lhotse says "English"
        cuts = CutSet.from_manifests(recordings=prepared[part]["recordings"], supervisions=supervisions)
        _write_cuts(cuts, paths.manifest(part))
        by_part[part] = cuts
        lines = sum(1 for f in (root / part).glob("*/*/*.trans.txt") for line in f.read_text().splitlines()
                    if line.strip())
        stats[part] = {"transcripts": lines, "cuts": len(cuts), "missing_audio": lines - len(cuts),
                       "hours": round(sum(c.duration for c in cuts) / 3600, 3)}
        print(f"manifests: {part}: {len(cuts)} cuts, {stats[part]['hours']} h, "
              f"{stats[part]['missing_audio']} transcripts without audio", flush=True)
    train = [c for part in p.train_parts for c in by_part[part]]
    random.Random(cfg.seed).shuffle(train)
    _write_cuts(CutSet.from_cuts(train), paths.manifest("train"))
    for split, split_parts in (("dev", p.dev_parts), ("test", p.test_parts)):
        joined = CutSet.from_cuts(c for part in split_parts for c in by_part[part])
        _write_cuts(joined, paths.manifest(split))
    stats_text = json.dumps({"corpus": str(root), "parts": stats}, indent=1) + "\n"
    atomic_write_text(out / "prepare_stats.json", stats_text)


def tokenizer(cfg: ExperimentConfig) -> None:
    from speech_ed.data.tokenizer import train_tokenizer_on_cuts

    t, paths = cfg.tokenizer, RunPaths.from_config(cfg)
    train_tokenizer_on_cuts(paths.manifest("train"), paths.tokenizer_dir, t.vocab_size, t.languages, t.pnc,
                            t.model_type)


def bins(cfg: ExperimentConfig) -> None:
    from speech_ed.data.bin_estimation import estimate_bins_for_run

    estimate_bins_for_run(cfg)


def batch_sizes(cfg: ExperimentConfig) -> None:
    """``speech-ed oomptimize`` for ``data.bucket_batch_sizes``: cuda on a GPU, else simulate a target GPU."""
    from speech_ed.oomptimizer.runner import oomptimize_for_run

    oomptimize_for_run(cfg)


def train(cfg: ExperimentConfig) -> None:
    from speech_ed.training.train import train as train_model

    train_model(cfg)


def is_rank_zero() -> bool:
    """False in the extra processes of a multi-GPU launch (Lightning, torchrun or srun set these)."""
    names = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in names)


def evaluate(cfg: ExperimentConfig) -> None:
    if not is_rank_zero():
        print("evaluate: not rank 0, skipped")
        return
    from speech_ed.evaluation.sets import evaluate_sets

    parts = cfg.prepare.dev_parts + cfg.prepare.test_parts
    sets = {part: RunPaths.from_config(cfg).manifest(part) for part in parts}
    evaluate_sets(cfg, sets)


def check(cfg: ExperimentConfig) -> None:
    """Recipe-specific checks, before any data is read; each error names the field."""
    from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH

    from speech_ed.oomptimizer.probes import GPU_MEMORY_GIB

    p = cfg.prepare
    if not p.data_dir:
        raise ConfigError("prepare.data_dir: empty; give DATA_DIR=/path (make) or prepare.data_dir=/path")
    for name in ("train_parts", "dev_parts", "test_parts"):
        unknown = [x for x in getattr(p, name) if x not in LIBRISPEECH + MINI_LIBRISPEECH]
        if unknown:
            raise ConfigError(f"prepare.{name}: {unknown} are not LibriSpeech parts "
                              f"{list(LIBRISPEECH + MINI_LIBRISPEECH)}")
    if not p.train_parts or not p.test_parts:
        raise ConfigError("prepare.train_parts and prepare.test_parts must each name at least one part")
    if LANGUAGE not in cfg.tokenizer.languages:
        raise ConfigError(f"tokenizer.languages: must include {LANGUAGE!r} (LibriSpeech is English)")
    if cfg.data.sampler != "2d":
        raise ConfigError("data.sampler: this recipe's bins and batch-size stages need '2d'")
    if cfg.oomptimize.target_gpu not in GPU_MEMORY_GIB:
        raise ConfigError(f"oomptimize.target_gpu: {cfg.oomptimize.target_gpu!r} is not one of "
                          f"{sorted(GPU_MEMORY_GIB)}")


STAGES = [("download", download), ("manifests", manifests), ("tokenizer", tokenizer), ("bins", bins),
          ("batch_sizes", batch_sizes), ("train", train), ("evaluate", evaluate)]


def main(argv: list[str] | None = None) -> int:
    return run_recipe(Path(__file__).with_name("config.yaml"), STAGES, argv, check=check)


if __name__ == "__main__":
    raise SystemExit(main())
