"""Synthetic VQA tasks whose answer lives in a small region: generators (`glimpse`, `shapes`), the shared drawing
(`drawing`), writing to disk (`writer`) and the built-in sets (`builtin`). The command line is `glimpserl data synth`."""

from ... import lazy_exports

EXPORTS = {
    ".builtin": "BUILTIN_SETS SynthArguments",
    ".drawing": "SynthObject SynthSample parse_image_size",
    ".writer": "TASKS builtin_split cached_synth write_synth",
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
