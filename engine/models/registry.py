"""Pick the family for a config: the only place that knows which families exist."""

from transformers import PretrainedConfig

from engine.models.base import ModelFamily
from engine.models.llama import LLAMA_LIKE_FAMILIES

_FAMILIES: dict[str, ModelFamily] = {
    model_type: family for family in LLAMA_LIKE_FAMILIES for model_type in family.model_types
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture has no family module yet."""


def supported_model_types() -> list[str]:
    return sorted(_FAMILIES)


def get_family(config: PretrainedConfig) -> ModelFamily:
    model_type = getattr(config, "model_type", None)
    if model_type not in _FAMILIES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        )
    return _FAMILIES[model_type]
