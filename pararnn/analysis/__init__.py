"""Model analysis: linear mode connectivity (LMC), layerwise linear feature connectivity
(LLFC, Zhou et al. 2023) and aligning networks by permutation (Git Re-Basin).

- :func:`interpolate`, :func:`loss_barrier` — the loss along θ_α = α θ_a + (1 − α) θ_b.
- :func:`llfc` — per layer, the cosine distance between the features of θ_α and the mix of
  the endpoints' features, against the endpoints' distance; :func:`weak_additivity`,
  :func:`commutativity` — the two conditions behind LLFC.
- :func:`weight_matching`, :func:`activation_matching`, :func:`permute` — align θ_b's
  hidden units with θ_a's; specs for MLPs (:func:`mlp_spec`), recurrent layers
  (:func:`recurrent_layer_spec`) and the language model (:func:`language_model_spec`).
- features functions for pararnn layers and models (:mod:`pararnn.analysis.features`).
"""

from .features import (language_model_features, language_model_forward, mlp_features, mlp_forward,
                       nnx_features_fn, recurrent_layer_features)
from .interpolation import Barrier, interpolate, loss_barrier
from .llfc import (COSINES, LLFC, Commutativity, LayerLLFC, WeakAdditivity, commutativity, cosine_distance,
                   global_cosine_distance, layer_llfc, llfc, weak_additivity)
from .matching import activation_matching, permute, weight_matching
from .paths import flatten, unflatten
from .spec import PermutationSpec, View
from .specs import language_model_spec, mlp_spec, recurrent_layer_spec

__all__ = [
    "interpolate", "loss_barrier", "Barrier", "llfc", "LLFC", "LayerLLFC", "layer_llfc", "cosine_distance",
    "global_cosine_distance", "COSINES",
    "weak_additivity", "WeakAdditivity", "commutativity", "Commutativity", "weight_matching",
    "activation_matching", "permute", "PermutationSpec", "View", "mlp_spec", "recurrent_layer_spec",
    "language_model_spec", "mlp_features", "mlp_forward", "recurrent_layer_features", "language_model_features",
    "language_model_forward", "nnx_features_fn", "flatten", "unflatten",
]
