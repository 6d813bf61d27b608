"""Models built on the recurrent layers: the language model and sampling."""

from .generate import generate
from .lm import LanguageModel, default_mlp_hidden

__all__ = ["LanguageModel", "generate", "default_mlp_hidden"]
