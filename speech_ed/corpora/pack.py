"""Pack part of a prepared run into one folder under a size cap, to train on a machine that cannot make the corpus.

Usage::

    speech-ed pack-run --run-dir exp/espeak_multilingual/cal1 --out gpu_kit/cal1 --max-mib 48

The lent GPU machine receives at most 64 MiB of ignored files and has no espeak-ng, so the embedded corpus cannot
be sent or made there. This writes ``<out>/`` with

* ``audio/{dev,train}/<cut id>.flac`` (or ``.ogg``): every dev cut (up to ``--dev-cuts``), then training cuts in
  a seeded random order until the files would pass ``--max-mib``. 16-bit FLAC is lossless for the corpus's
  16-bit WAVs (about 0.65 h of the embedded corpus in 48 MiB); Ogg Vorbis is lossy and packs about 3x more;
* ``manifests/cuts_{dev,train}.jsonl.gz``: the same cuts, each recording pointing to its FLAC by a path relative to
  the folder the command runs from (use paths below the repository root and run the study from there);
* ``tokenizer/`` and ``bucket_bins.yaml`` copied from the run (bins and tokenizer of the full corpus);
* ``pack.json``: cut counts, hours, MiB, and the overrides that point a config at the pack.

A cut whose audio cannot be read is skipped and counted, not packed.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import shutil
from pathlib import Path

import soundfile as sf

from speech_ed.atomic import atomic_write_binary, atomic_write_json

MIB = 2**20


FORMATS = {"flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}  # suffix -> soundfile format, subtype


def _encoded(cut, fmt: str) -> bytes:
    audio = cut.load_audio()  # (channels, samples) float32
    buf = io.BytesIO()
    sf.write(buf, audio[0], cut.sampling_rate, format=FORMATS[fmt][0], subtype=FORMATS[fmt][1])
    return buf.getvalue()


def _relocated(cut, path: Path) -> dict:
    """The cut's manifest entry with its recording read from ``path`` (one channel, same length)."""
    d = cut.to_dict()
    d["recording"]["sources"] = [{"type": "file", "channels": [0], "source": str(path)}]
    d["recording"]["channel_ids"] = [0]
    d["channel"] = 0
    return d


def _write_manifest(path: Path, entries: list[dict]) -> None:
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode()
    atomic_write_binary(path, lambda f: f.write(gzip.compress(text, mtime=0)))


def pack_run(run_dir: Path, out: Path, max_mib: float, dev_cuts: int = 100, seed: int = 0, fmt: str = "flac",
             log=print) -> dict:
    """Write the pack (see the module docstring); returns what ``pack.json`` holds.

    Raises:
        FileNotFoundError: the run lacks manifests, tokenizer or bins; ValueError: the dev cuts alone pass the cap.
    """
    from lhotse import CutSet

    from speech_ed.paths import RunPaths

    run_dir, out = Path(run_dir), Path(out)
    run, packed = RunPaths.in_folder(run_dir), RunPaths.in_folder(out)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    need = [run.manifest("train"), run.manifest("dev"), run.tokenizer_model, run.bucket_bins]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a prepared run; missing {missing} (run the recipe's stages up "
                                "to 'bins' first)")
    budget, used = max_mib * MIB, 0
    stats = {"skipped_unreadable": 0}
    entries: dict[str, list[dict]] = {"dev": [], "train": []}
    for split in ("dev", "train"):
        cuts = list(CutSet.from_file(run.manifest(split)))
        if split == "dev":
            cuts = cuts[:dev_cuts] if dev_cuts > 0 else cuts
        else:
            random.Random(seed).shuffle(cuts)
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
        for i, cut in enumerate(cuts):
            try:
                data = _encoded(cut, fmt)
            except Exception as e:  # noqa: BLE001 - any unreadable file is counted, not fatal
                stats["skipped_unreadable"] += 1
                log(f"skipped {cut.id}: {type(e).__name__}: {str(e)[:120]}")
                continue
            if used + len(data) > budget:
                if split == "dev":
                    raise ValueError(f"the {len(entries['dev']) + 1} first dev cuts alone pass --max-mib {max_mib}; "
                                     "raise it or lower --dev-cuts")
                break
            path = out / "audio" / split / f"{cut.id}.{fmt}"
            atomic_write_binary(path, lambda f, data=data: f.write(data))
            used += len(data)
            entries[split].append(_relocated(cut, path))
            if (i + 1) % 500 == 0:
                log(f"{split}: {i + 1} cuts read, {used / MIB:.1f} MiB packed")
    for split, rows in entries.items():
        _write_manifest(packed.manifest(split), rows)
    packed.tokenizer_dir.mkdir(exist_ok=True)
    for f in run.tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copyfile(f, packed.tokenizer_dir / f.name)
    shutil.copyfile(run.bucket_bins, packed.bucket_bins)
    hours = {s: round(sum(e["duration"] for e in rows) / 3600, 3) for s, rows in entries.items()}
    info = {"run_dir": str(run_dir), "cuts": {s: len(rows) for s, rows in entries.items()}, "hours": hours,
            "audio_mib": round(used / MIB, 2), "format": fmt, "max_mib": max_mib, "seed": seed, **stats,
            "overrides": [f"data.manifest_dir={packed.manifest_dir}", f"tokenizer.path={packed.tokenizer_model}",
                          f"data.bucket_bins={packed.bucket_bins}"]}
    atomic_write_json(out / "pack.json", info)
    log(f"packed {info['cuts']['train']} train cuts ({hours['train']} h) and {info['cuts']['dev']} dev cuts "
        f"({hours['dev']} h) into {out}: {info['audio_mib']} MiB of {fmt}; {stats['skipped_unreadable']} "
        f"unreadable skipped. Point a config at it with: {' '.join(info['overrides'])}")
    return info


def add_arguments(parser) -> None:
    parser.add_argument("--run-dir", required=True, help="a prepared run (manifests, tokenizer, bucket_bins.yaml)")
    parser.add_argument("--out", required=True, help="folder to write, a relative path below where it will be used")
    parser.add_argument("--max-mib", type=float, default=48.0, help="cap on the audio written (MiB)")
    parser.add_argument("--format", default="flac", choices=sorted(FORMATS),
                        help="flac (lossless, ~20 kB per second of the embedded corpus) or ogg (Vorbis, ~6 kB/s)")
    parser.add_argument("--dev-cuts", type=int, default=100, help="dev cuts packed first (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="order in which training cuts are packed")


def main(args) -> int:
    try:
        pack_run(Path(args.run_dir), Path(args.out), args.max_mib, args.dev_cuts, args.seed, args.format)
    except (FileNotFoundError, ValueError) as e:
        print(f"pack-run: {e}")
        return 1
    return 0
