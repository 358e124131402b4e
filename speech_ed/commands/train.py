"""``speech-ed train --config C.yaml [key=value ...]``: train a model (see speech_ed.training.train)."""

from speech_ed.config import load_config


def add_arguments(parser):
    parser.add_argument("--config", action="append", default=[], help="YAML config (repeatable, merged in order)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=100")


def main(args) -> int:
    cfg = load_config(args.config, args.overrides)
    from speech_ed.training.train import train

    train(cfg)
    return 0
