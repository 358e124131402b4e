"""Whether W&B must run offline: one rule for every place that starts a W&B run.

Offline when ``WANDB_MODE`` says so, or when there is no way to log in: no ``WANDB_API_KEY`` and no
``~/.netrc`` (where ``wandb login`` stores the key). An offline run is written under ``<dir>/wandb/`` and can
be uploaded later with ``wandb sync <dir>/wandb/offline-run-*``; no account is needed to write it.
"""

from __future__ import annotations

import os
from pathlib import Path


def wandb_offline() -> bool:
    """True when W&B must write offline (see the module docstring); never prompts, never uses the network."""
    return os.environ.get("WANDB_MODE") in ("offline", "dryrun") or not (
        os.environ.get("WANDB_API_KEY") or Path.home().joinpath(".netrc").is_file())


def wandb_mode() -> str:
    """``mode=`` for ``wandb.init``: 'offline' or 'online'."""
    return "offline" if wandb_offline() else "online"
