"""Corpus factories: the embedded espeak-ng corpus from Debian fortunes, a fake LibriSpeech layout, and pack-run."""
