"""Pick the family for a config: the only place that knows which families exist."""

from transformers import PretrainedConfig

from engine.models.base import ModelFamily
from engine.models.bloom import BLOOM
from engine.models.falcon import FALCON
from engine.models.gemma3 import GEMMA3
from engine.models.llama import LLAMA_LIKE_FAMILIES
from engine.models.mixtral import MIXTRAL

_FAMILIES: dict[str, ModelFamily] = {
    model_type: family
    for family in (*LLAMA_LIKE_FAMILIES, MIXTRAL, FALCON, BLOOM, GEMMA3)
    for model_type in family.model_types
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture has no family module yet."""


def supported_model_types() -> list[str]:
    return sorted(_FAMILIES)


def check_supported(model_type: object) -> None:
    """Refuse a model type without a family module, naming the supported ones (before any conversion work)."""
    if model_type not in _FAMILIES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        )


def get_family(config: PretrainedConfig) -> ModelFamily:
    model_type = getattr(config, "model_type", None)
    check_supported(model_type)
    return _FAMILIES[model_type]
