"""VQA data: `DataConfig` (settings), `load_vqa` (read + validate every row), `conversation_dataset` (TRL's
conversational samples), `collate.GlimpseCollator` (batches), and the synthetic tasks (`synth/`)."""

from .. import lazy_exports

EXPORTS = {
    ".settings": "DataConfig",
    ".loading": "CANONICAL_FEATURES DataReport load_vqa",
    ".conversation": "load_rgb to_conversation conversation_dataset check_prompt_fits image_token_id",
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
