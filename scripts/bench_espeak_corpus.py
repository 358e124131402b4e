"""Corpus benchmark: clean sentence counts per language and espeak-ng synthesis throughput.

Usage::

    flock /tmp/speech_ed_cpu.lock .venv/bin/python scripts/bench_espeak_corpus.py --out exp/bench_corpus
    ... --per-language 8300   # the recipe's default size (8000 train + 100 dev + 200 test per language)

Measures, on the same utterances (es + it, ``--per-language`` each, split 90/5/5):
  1. ``load_sentences`` for en, de, es, it: kept sentences, time, what each filter removed;
  2. ``prepare_espeak_corpus`` with backend ``library`` (libespeak-ng in-process) and ``command`` (one
     ``espeak-ng`` process per utterance): synthesis utt/s and wall time of the whole call;
  3. the earlier recipe's pipeline, ``espeak-ng --stdout | sox`` to a 16 kHz wav per utterance, in a Pool;
  4. how close the polyphase resampler is to sox's ``rate`` on 20 utterances (SNR of the difference, whole
     band and below 7 kHz).

Prints a table and writes ``<out>/bench_corpus.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from speech_ed.corpora import espeak as ec  # noqa: E402
from speech_ed.corpora.fortunes import LANGUAGES, load_sentences  # noqa: E402


def espeak_sox(u: ec.Utterance) -> bool:
    """The earlier recipe's per-utterance pipeline: espeak-ng --stdout | sox -> 16 kHz mono 16-bit wav."""
    Path(u.path).parent.mkdir(parents=True, exist_ok=True)
    espeak_cmd = ["espeak-ng", "-v", u.voice, "-s", str(u.speed), "-p", str(u.pitch), "--stdout"]
    espeak = subprocess.Popen(espeak_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    sox = subprocess.Popen(["sox", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", u.path],
                           stdin=espeak.stdout, stderr=subprocess.DEVNULL)
    espeak.stdout.close()
    espeak.stdin.write(u.text.encode() + b"\n")
    espeak.stdin.close()
    return espeak.wait() == 0 and sox.wait() == 0


def resampler_snr_db(utterances: list[ec.Utterance], tmp: Path) -> dict[str, float]:
    """SNR (dB) of polyphase-resampled audio against sox's rate effect (same 22.05 kHz espeak-ng input), over
    the whole band and below 7 kHz (the filters differ mostly in their transition band, 7-8 kHz)."""
    engine, power = ec.EspeakCommand(), np.zeros((2, 2))  # [full, <7 kHz] x [signal, difference]
    for u in utterances:
        raw = engine.synthesize(u.text, u.voice, u.speed, u.pitch)
        ours = ec.resample_to_16k(raw, engine.sample_rate).astype(np.float64)
        sf.write(tmp / "in.wav", raw, engine.sample_rate, subtype="PCM_16")
        subprocess.run(["sox", "-D", "-V1", str(tmp / "in.wav"), "-r", "16000", str(tmp / "sox.wav")],
                       check=True)
        ref = sf.read(tmp / "sox.wav", dtype="int16")[0].astype(np.float64)
        n = min(len(ref), len(ours))
        spectra = [np.abs(np.fft.rfft(x)) ** 2 for x in (ref[:n], ref[:n] - ours[:n])]
        low = np.fft.rfftfreq(n, 1 / ec.SAMPLE_RATE) < 7000
        power += [[s.sum() for s in spectra], [s[low].sum() for s in spectra]]
    return {"full_band": round(float(10 * np.log10(power[0, 0] / power[0, 1])), 1),
            "below_7khz": round(float(10 * np.log10(power[1, 0] / power[1, 1])), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="exp/bench_corpus")
    parser.add_argument("--per-language", type=int, default=1000)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": f"{platform.processor() or platform.machine()}, {mp.cpu_count()} cores",
                 "per_language": args.per_language, "num_workers": args.num_workers, "sentences": {}}

    print(f"{'lang':<6}{'kept':>8}{'entries':>9}{'seconds':>9}")
    for lang in LANGUAGES:
        t0 = time.perf_counter()
        sentences, counts = load_sentences(lang)
        res["sentences"][lang] = {"kept": len(sentences), "seconds": round(time.perf_counter() - t0, 2),
                                  "counts": counts}
        print(f"{lang:<6}{len(sentences):>8}{counts['entries']:>9}{res['sentences'][lang]['seconds']:>9}")

    num_dev = num_test = args.per_language // 20
    num_train = args.per_language - num_dev - num_test
    sizes = dict(languages=("es", "it"), num_train=num_train, num_dev=num_dev, num_test=num_test)
    rows = []
    for backend in ("library", "command"):
        run_dir = out / backend
        (run_dir / "prepare_stats.json").unlink(missing_ok=True)  # always regenerate
        t0 = time.perf_counter()
        ec.prepare_espeak_corpus(run_dir, num_workers=args.num_workers, backend=backend, **sizes)
        wall = time.perf_counter() - t0
        stats = json.loads((run_dir / "prepare_stats.json").read_text())
        n = sum(r["planned"] for langs in stats["splits"].values() for r in langs.values())
        hours = sum(r["hours"] for langs in stats["splits"].values() for r in langs.values())
        rows.append({"pipeline": f"prepare_espeak_corpus backend={backend}", "utterances": n,
                     "synthesis_s": stats["synthesis_seconds"], "utt_per_s": stats["utterances_per_second"],
                     "call_wall_s": round(wall, 1), "audio_hours": round(hours, 2)})

    utterances, _ = ec.plan_utterances(out / "espeak_sox", **sizes, seed=0)
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(args.num_workers) as pool:
        ok = sum(pool.imap_unordered(espeak_sox, utterances, chunksize=8))
    seconds = time.perf_counter() - t0
    rows.append({"pipeline": "espeak-ng | sox per utterance (earlier recipe)", "utterances": len(utterances),
                 "synthesis_s": round(seconds, 2), "utt_per_s": round(len(utterances) / seconds, 1),
                 "call_wall_s": None, "audio_hours": None, "ok": ok})
    res["throughput"] = rows
    res["resampler_snr_vs_sox_db"] = resampler_snr_db(utterances[:20], out)

    print(f"\n{'pipeline':<50}{'utts':>7}{'synth s':>9}{'utt/s':>8}{'call s':>8}{'hours':>7}")
    for r in rows:
        print(f"{r['pipeline']:<50}{r['utterances']:>7}{r['synthesis_s']:>9}{r['utt_per_s']:>8}"
              f"{str(r['call_wall_s'] or '-'):>8}{str(r['audio_hours'] or '-'):>7}")
    print(f"\npolyphase resampler vs sox rate, SNR in dB: {res['resampler_snr_vs_sox_db']}")
    (out / "bench_corpus.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out / 'bench_corpus.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
