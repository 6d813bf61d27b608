"""Backprop-free learning rules: Align-zero and Align-ada (Boopathy & Fiete, 2022) with
feedback alignment (FA), direct feedback alignment (DFA), readout-only and backprop
baselines, for feedforward stacks and Elman RNNs solved by :func:`pararnn.solve`.

    stack = pararnn.align.mlp(64, [512, 512], 10)          # NTK parameterisation
    params0 = stack.init(jax.random.key(0))
    g = pararnn.align.pseudo_grads("align_zero", stack, params, params0, (x, y), loss_fn)

See :mod:`pararnn.align.stack` for how layer structure is declared and how each rule is
computed.
"""

from .layers import ACTIVATIONS, Conv2D, Dense, feedback_swap
from .recurrent import AlignElmanCell, RNNLayer
from .rules import RULES, alignment, feedback_weights, output_error, pseudo_grads, stack_of
from .stack import LayerStack, conv_net, mlp, rnn
from .tasks import LOSS_CONVENTIONS, add_task, mse_loss, onehot_targets, synthetic_images

__all__ = [
    "pseudo_grads", "RULES", "alignment", "feedback_weights", "output_error", "stack_of",
    "LayerStack", "mlp", "conv_net", "rnn", "Dense", "Conv2D", "RNNLayer", "AlignElmanCell",
    "ACTIVATIONS", "feedback_swap", "synthetic_images", "add_task", "onehot_targets", "mse_loss",
    "LOSS_CONVENTIONS",
]
