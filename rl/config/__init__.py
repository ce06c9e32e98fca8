"""Run configuration: the stage configs (`stages`), the glimpse's recipe keys (`glimpse`), recipe parsing
(`recipe`) and everything checked when a recipe is parsed (`checks`)."""

from .. import lazy_exports

EXPORTS = {
    ".stages": "ModelArguments VIPTrainingConfig GlimpseGRPOConfig VLMSFTConfig",
    ".recipe": "STAGES parse_recipe read_recipe stage_classes",
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
