"""Bad input in a batch is skipped and counted, never a crash and never silent."""

from lhotse import CutSet

from speech_ed.data.datamodule import CountingFilter
from speech_ed.data.dataset import AEDDataset
from tests.conftest import make_cut


def test_dataset_skips_and_counts(tmp_path, tokenizer):
    good = make_cut(tmp_path, "good", "hola que tal", "es")
    missing = make_cut(tmp_path, "missing", "hola", "es", write=False)
    corrupt = make_cut(tmp_path, "corrupt", "hola", "es")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF....garbage")
    empty = make_cut(tmp_path, "empty", "  ", "es")
    french = make_cut(tmp_path, "french", "bonjour", "fr")
    batch = AEDDataset(tokenizer)[CutSet.from_cuts([good, missing, corrupt, empty, french])]
    assert batch["cut_ids"] == ["good"]
    assert batch["skipped"] == {"unreadable_audio": 2, "empty_transcript": 1, "unknown_language": 1}
    assert batch["audio"].shape[0] == 1


def test_all_skipped_batch_is_empty_not_a_crash(tmp_path, tokenizer):
    batch = AEDDataset(tokenizer)[CutSet.from_cuts([make_cut(tmp_path, "x", "", "es")])]
    assert batch["audio"].shape[0] == 0 and batch["skipped"] == {"empty_transcript": 1}


def test_counting_filter_counts_each_cut_once(tmp_path, tokenizer):
    cuts = CutSet.from_cuts([make_cut(tmp_path, "a", "hola", "es"), make_cut(tmp_path, "b", "hola", "xx"),
                             make_cut(tmp_path, "c", "hola", "es", duration=0.1)])
    f = CountingFilter(tokenizer, min_duration_s=0.2, max_duration_s=30)
    for _ in range(2):  # two epochs
        assert [c.id for c in cuts.filter(f)] == ["a"]
    assert f.counts == {"too_short": 1, "unknown_language": 1}
