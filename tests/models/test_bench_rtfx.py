"""``speech-ed bench-rtfx`` on the tiny preset: utterance loading, sorting, forced lengths and the JSON."""

import argparse
import json

import pytest

from speech_ed.commands import bench_rtfx as command
from speech_ed.evaluation import rtfx as bench_rtfx


def parse(*argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def settings(*argv):
    return command.settings_from_args(parse(*argv))


def test_batches_are_sorted_longest_first():
    utts = [bench_rtfx.Utterance(d, 1) for d in (3.0, 9.0, 1.0, 5.0, 7.0)]
    batches = bench_rtfx.make_batches(utts, 2)
    assert [[u.duration_s for u in b] for b in batches] == [[9.0, 7.0], [5.0, 3.0], [1.0]]


def test_tsv_durations_tokens_and_subset(tmp_path):
    tsv = tmp_path / "m.tsv"
    tsv.write_text("id\tduration_seconds\ttext\n" + "".join(f"u{i}\t{1.0 + i}\tA B\n" for i in range(10)))
    utts = bench_rtfx.load_utterances(settings("--presets", "t", "--cuts", str(tsv), "--tokens-per-second", "4"))
    assert [u.duration_s for u in utts] == [1.0 + i for i in range(10)]
    assert [u.num_tokens for u in utts] == [round(4 * (1.0 + i)) for i in range(10)]
    sub = bench_rtfx.load_utterances(settings("--presets", "tiny", "--cuts", str(tsv), "--num-utterances", "4"))
    assert len(sub) == 4 and len({u.duration_s for u in sub}) == 4
    fixed = bench_rtfx.load_utterances(settings("--presets", "t", "--cuts", str(tsv), "--fixed-output-tokens=7"))
    assert {u.num_tokens for u in fixed} == {7}
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\tseconds\nu0\t1.0\n")
    with pytest.raises(ValueError, match="bad.tsv:1: header .* lacks column"):
        bench_rtfx.load_utterances(settings("--presets", "tiny", "--cuts", str(bad)))


def test_audio_less_lhotse_cuts(tmp_path):
    from lhotse import CutSet, MonoCut, SupervisionSegment

    cuts = CutSet.from_cuts(
        MonoCut(f"c{i}", start=0.0, duration=d, channel=0,
                supervisions=[SupervisionSegment(f"s{i}", f"r{i}", 0.0, d, text="hello world")])
        for i, d in enumerate([2.0, 3.5])
    )
    path = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(path)
    utts = bench_rtfx.load_utterances(settings("--presets", "tiny", "--cuts", str(path)))
    assert [(u.duration_s, u.num_tokens, u.cut) for u in utts] == [(2.0, 10, None), (3.5, 18, None)]
    audio, lens = bench_rtfx.batch_audio(utts, 16000, seed=0)
    assert audio.shape == (2, 56000) and lens.tolist() == [32000, 56000]
    assert float(audio[0, 32000:].abs().sum()) == 0.0 and float(audio[0, :32000].abs().sum()) > 0


def test_main_writes_json_with_forced_lengths(tmp_path, capsys):
    out = tmp_path / "rtfx.json"
    args = parse("--presets", "tiny", "--batch-size", "3", "--num-utterances", "5", "--no-kv-cache",
                 "--json", str(out), "--set", "pos_enc=rel")
    assert command.main(args) == 0
    blob = json.loads(out.read_text())
    assert blob["device"] == "cpu" and blob["dtype"] == "bf16" and blob["batch_size"] == 3
    (r,) = blob["results"]
    expected_tokens = sum(u.num_tokens for u in bench_rtfx.load_utterances(command.settings_from_args(args)))
    assert r["preset"] == "tiny" and r["output_tokens"] == expected_tokens and r["utterances"] == 5
    assert r["vocab_size"] == 1024 and r["params"] > 0
    total = r["encoder_seconds"] + r["decoder_seconds"]
    assert r["rtfx"] == pytest.approx(r["audio_seconds"] / total)
    assert r["kv_cache_speedup"] == pytest.approx(r["decoder_seconds_no_cache"] / r["decoder_seconds"])
    assert "tiny" in capsys.readouterr().out


def test_bad_override_names_the_flag():
    with pytest.raises(ValueError, match="--set 'nope=1'"):
        command.main(parse("--presets", "tiny", "--num-utterances", "1", "--set", "nope=1"))
