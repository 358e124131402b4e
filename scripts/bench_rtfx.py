"""RTFx acceptance benchmark for issue 4: the Canary-1B shape (24+24) against Canary-1B-Flash's (32+4).

Usage::

    flock /tmp/speech_ed_cpu.lock .venv/bin/python scripts/bench_rtfx.py --out exp/bench/rtfx    # CPU, ~3 min
    .venv/bin/python scripts/bench_rtfx.py --out exp/bench/rtfx --device cuda \\
        --presets canary_1b canary_1b_flash --batch-size 128 --num-utterances 0

Runs ``speech-ed bench-rtfx`` twice:
  1. ``rtfx_main.json``: LibriSpeech test-clean lengths (../shared/data, a seeded subset), output lengths
     forced to 5 tokens per second (a 1024-piece English BPE), greedy on the KV cache, sorted batches,
     warm-up, best of --repeats passes.
  2. ``rtfx_kv100.json``: every output forced to 100 tokens, with and without the KV cache.
On the shared CPU machine run it under ``flock /tmp/speech_ed_cpu.lock`` (the lock for heavy jobs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speech_ed.cli import main as cli

TSV = Path(__file__).resolve().parents[1].parent / "shared/data/librispeech/test-clean.tsv"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="exp/bench/rtfx")
    p.add_argument("--presets", nargs="+", default=["twin_24x24", "twin_32x4"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-utterances", type=int, default=256, help="test-clean subset (0 = all 2620)")
    p.add_argument("--kv-utterances", type=int, default=16,
                   help="utterances (and batch size) of the 100-token run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cuts", default=str(TSV))
    a = p.parse_args()
    out = Path(a.out)
    common = ["--presets", *a.presets, "--device", a.device, "--dtype", a.dtype, "--cuts", a.cuts]
    rc = cli(["bench-rtfx", *common, "--batch-size", str(a.batch_size), "--num-utterances", str(a.num_utterances),
              "--repeats", str(a.repeats), "--json", str(out / "rtfx_main.json")])
    return rc or cli(["bench-rtfx", *common, "--batch-size", str(a.kv_utterances), "--num-utterances",
                      str(a.kv_utterances), "--fixed-output-tokens", "100", "--no-kv-cache",
                      "--json", str(out / "rtfx_kv100.json")])


if __name__ == "__main__":
    raise SystemExit(main())
