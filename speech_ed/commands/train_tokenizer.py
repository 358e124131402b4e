"""``speech-ed train-tokenizer --cuts train.jsonl.gz --out DIR --vocab-size N --languages en de``."""

from lhotse import CutSet

from speech_ed.data.prompt import cut_target
from speech_ed.data.tokenizer import Tokenizer


def train_tokenizer_on_cuts(cuts_path, out_dir, vocab_size: int, languages, pnc: bool = False,
                            model_type: str = "bpe") -> Tokenizer:
    """Train on the decoder targets of the cuts (audio-less cuts are fine); cuts without text are counted."""
    texts, no_text = [], 0
    for cut in CutSet.from_file(cuts_path):
        try:
            text = cut_target(cut, pnc).text
        except ValueError:
            text = ""
        if text.strip():
            texts.append(text)
        else:
            no_text += 1
    if no_text:
        print(f"train-tokenizer: {no_text} cuts without text were not used")
    tok = Tokenizer.train(texts, out_dir, vocab_size, languages, model_type)
    print(f"train-tokenizer: {tok.vocab_size} pieces from {len(texts)} transcripts -> {tok.model_path}")
    return tok


def add_arguments(parser):
    parser.add_argument("--cuts", required=True, help="Lhotse cuts (jsonl.gz) whose transcripts train it")
    parser.add_argument("--out", required=True, help="output folder (tokenizer.model, tokenizer.json)")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--languages", nargs="+", required=True, help="languages that get a prompt token")
    parser.add_argument("--pnc", action="store_true", help="train on punctuated, cased text")
    parser.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])


def main(args) -> int:
    train_tokenizer_on_cuts(args.cuts, args.out, args.vocab_size, args.languages, args.pnc, args.model_type)
    return 0
