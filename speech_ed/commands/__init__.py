"""Sub-command modules of the `speech-ed` CLI (the top layer: they may import any package)."""
