"""Models built on the recurrent layers: the language model, its sequence mixers
(recurrent, attention, Mamba2) and sampling."""

from .attention import AttentionMixer, KVCache
from .errors import MixerConfigError
from .generate import generate
from .lm import LanguageModel, default_mlp_hidden
from .mamba2 import Mamba2Mixer
from .mixers import MIXERS, make_mixer
from .recurrent_mixer import RecurrentMixer

__all__ = ["LanguageModel", "generate", "default_mlp_hidden", "MIXERS", "make_mixer", "MixerConfigError",
           "RecurrentMixer", "AttentionMixer", "Mamba2Mixer", "KVCache"]
