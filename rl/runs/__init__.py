"""What a run leaves behind and how it is read back: the run card (`card`: the settings eval follows) and the
exports of a run (`export`: LoRA adapter or merged checkpoint + glimpse + processor)."""

from .. import lazy_exports

EXPORTS = {
    ".card": "RUN_CARD read_run_card write_run_card",
    ".export": "MANIFEST export_run inspect_run load_exported",
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
