import torch

from speech_ed.data.dataset import IGNORE_INDEX, AEDDataset, collate, padding_ratios, split_decoder_io
from speech_ed.data.prompt import PROMPT_LEN, build_prompt, count_decoder_tokens, cut_target
from speech_ed.data.text import normalize_text
from speech_ed.data.tokenizer import Tokenizer


def test_special_tokens_are_distinct_and_never_from_text(tokenizer):
    ids = {tokenizer.pad_id, tokenizer.unk_id, tokenizer.sot_id, tokenizer.eos_id, tokenizer.pnc_id,
           tokenizer.nopnc_id, tokenizer.task_id("transcribe"), tokenizer.task_id("translate"),
           tokenizer.lang_id("es"), tokenizer.lang_id("it"), tokenizer.lang_id("en")}
    assert len(ids) == 11
    assert not set(tokenizer.encode("<|es|> <|endoftext|> hola")) & (ids - {tokenizer.unk_id})
    assert tokenizer.decode(tokenizer.encode("hola que tal") + [tokenizer.eos_id, 0]) == "hola que tal"


def test_tokenizer_reload_and_unknown_language(tokenizer):
    again = Tokenizer.load(tokenizer.model_path.parent)
    assert again.vocab_size == tokenizer.vocab_size and again.languages == ["en", "es", "it"]
    assert not tokenizer.has_language("fr")


def test_prompt_layout(tokenizer):
    p = build_prompt(tokenizer, "es", "it", "translate", pnc=True)
    assert p == [tokenizer.sot_id, tokenizer.lang_id("es"), tokenizer.task_id("translate"),
                 tokenizer.lang_id("it"), tokenizer.pnc_id]
    assert len(p) == PROMPT_LEN


def test_token_count_agrees_with_collated_batch(tokenizer, small_cuts):
    batch = AEDDataset(tokenizer)[small_cuts]
    counts = [count_decoder_tokens(c, tokenizer) for c in small_cuts]
    assert batch["token_lens"].tolist() == counts
    for row, n in zip(batch["tokens"], counts):
        assert row[n - 1].item() == tokenizer.eos_id and (row[n:] == tokenizer.pad_id).all()
    assert (batch["ctc_target_lens"] == batch["token_lens"] - PROMPT_LEN - 1).all()


def test_translation_target(small_cuts):
    cut = next(iter(small_cuts))
    cut.supervisions[0].custom = {"task": "translate", "target_language": "it", "translation": "Ciao, Mondo!"}
    t = cut_target(cut)
    assert (t.text, t.source_lang, t.target_lang, t.task) == ("ciao mondo", "es", "it", "translate")
    assert cut_target(cut, pnc=True).text == "Ciao, Mondo!"


def test_padding_ratios_equal_hand_count():
    waves = [torch.ones(3), torch.ones(5)]
    seqs = [[2, 9, 4, 9, 7, 20, 3], [2, 9, 4, 9, 7, 20, 21, 22, 23, 3]]
    batch = collate(waves, seqs)
    in_pad, out_pad = padding_ratios(batch)
    assert in_pad == 2 / 10      # 2 padded samples of 2 x 5
    assert out_pad == 3 / 20     # 3 padded tokens of 2 x 10


def test_targets_score_only_text_and_eos():
    tokens = torch.tensor([[2, 9, 4, 9, 7, 20, 3, 0], [2, 9, 4, 9, 7, 20, 21, 3]])
    tokens_in, targets = split_decoder_io(tokens, torch.tensor([7, 8]))
    assert tokens_in.tolist() == tokens[:, :-1].tolist()
    assert targets[0].tolist() == [IGNORE_INDEX] * 4 + [20, 3, IGNORE_INDEX]
    assert targets[1].tolist() == [IGNORE_INDEX] * 4 + [20, 21, 3]


def test_normalize_text():
    assert normalize_text("L'amico -- dice: «Don't!» Über-alles.") == "l'amico dice don't über alles"
    assert normalize_text("  ¿Qué   tal?  ") == "qué tal"
