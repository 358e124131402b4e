"""``speech-ed train-tokenizer --cuts train.jsonl.gz --out DIR --vocab-size N --languages en de``."""

from speech_ed.data.tokenizer import train_tokenizer_on_cuts


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
