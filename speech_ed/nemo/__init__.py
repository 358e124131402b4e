"""NVIDIA NeMo Canary checkpoints (``.nemo``) as speech_ed models, without NeMo (docs/NEMO.md).

API::

    from speech_ed.nemo import load_nemo, import_nemo, export_nemo
    imported = load_nemo("canary-180m-flash.nemo")      # model (eval), dims, tokenizer, extra, notes
    import_nemo("canary.nemo", "model.pt")              # a model file every speech_ed command accepts
    export_nemo(model, dims, extra, "out.nemo")         # back to a .nemo that NeMo restores

``speech_ed.evaluation.model_io.load_model`` also accepts a ``.nemo`` path directly. Anything the importer
cannot map exactly is refused with a :class:`NemoFormatError` naming the config key or tensor.
"""

from speech_ed.nemo.archive import NemoFormatError, is_nemo_path, read_nemo, write_nemo
from speech_ed.nemo.convert import ImportedNemo, export_nemo, import_nemo, load_nemo

__all__ = ["ImportedNemo", "NemoFormatError", "export_nemo", "import_nemo", "is_nemo_path", "load_nemo",
           "read_nemo", "write_nemo"]
