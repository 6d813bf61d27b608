"""Training paths the end-to-end tests leave out: gradient accumulation, the evaluation pass
and where FSDP puts the parameters and optimiser state; and the dry run's byte counts.

References are independent of the trainer: one step over the whole batch for
``optim.grad_accum``, the cross-entropy of the trained model over the whole held-out split
computed here for evaluation, and the sharding rule written out here (largest axis the
``fsdp`` mesh axis divides) for placement."""

import json
import math
import os

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import pararnn.train.trainer as trainer_module
from pararnn.train.config import load_config
from pararnn.train.data import load_data
from pararnn.train.restore import load_trained
from train_helpers import SMALL

FSDP = 2


@pytest.fixture(autouse=True, scope="module")
def standard_promotion():
    # optax's AdamW mixes Python floats and int32 step counts (see tests/test_train.py)
    with jax.numpy_dtype_promotion("standard"):
        yield


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def config(*extra):
    # smaller still than SMALL (one layer of width 16, 16-token sequences): compile time
    return load_config("tiny", SMALL + ["model.n_layers=1", "model.d_model=16", "data.seq_len=16", "train.steps=2",
                                        "mesh.devices=2", f"mesh.fsdp={FSDP}"] + list(extra))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 2-step run on a 2-device (fsdp 2) mesh with optim.grad_accum=2, evaluated
    after its last step on the whole held-out split (16 sequences), recording where the state
    lives after every step."""
    data = load_data(config().data)
    n, n_eval, batch = len(data.train) + len(data.eval), 16, 8
    cfg = config("optim.grad_accum=2", "train.eval_every=2", f"data.eval_fraction={n_eval / n!r}",
                 f"data.eval_batches={n_eval // batch}")
    placements = []
    real_make_steps = trainer_module.make_steps

    def recording_make_steps(*args, **kwargs):
        train_step, eval_step = real_make_steps(*args, **kwargs)

        def step(state, batch):
            state, out = train_step(state, batch)
            placements.append({part: [(a.shape, a.sharding, a.addressable_shards[0].data.shape)
                                      for a in jax.tree_util.tree_leaves(state[part])]
                               for part in ("params", "opt_state")})
            return state, out
        return step, eval_step

    workdir = str(tmp_path_factory.mktemp("run"))
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer_module, "make_steps", recording_make_steps)
    try:
        trainer_module.train(cfg, workdir)
    finally:
        mp.undo()
    return {"cfg": cfg, "workdir": workdir, "placements": placements, "n_eval": n_eval}


def cross_entropy(logits, targets):
    """Per-token −log softmax(logits)[target] and logsumexp, float64 NumPy."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    return lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0], lse


def test_grad_accum_averages_the_micro_batch_gradients(run):
    """Step 1 with grad_accum = 2 (two micro-batches of 4) must log the loss and gradient norm
    of one step on the whole batch of 8, computed here with jax.grad on one device from the
    same initial model and batch."""
    from flax import nnx
    from pararnn.train.data import get_batch
    cfg = run["cfg"]
    data = load_data(cfg.data)
    batch = get_batch(data.train, 0, cfg.data.batch_size, seed=cfg.data.seed)
    graphdef, _ = trainer_module.abstract_params(cfg, cfg.model.vocab_size)
    # the trainer's initial parameters (same seed), built in one compiled program
    params = jax.jit(lambda: nnx.split(trainer_module.build_model(cfg, cfg.model.vocab_size,
                                                                  nnx.Rngs(cfg.train.seed)),
                                       nnx.Param)[1])()
    z = cfg.optim.z_loss

    def loss(params):
        logits = nnx.merge(graphdef, params)(jnp.asarray(batch["inputs"])).astype(jnp.float32)
        lse = jax.nn.logsumexp(logits, -1)
        target = jnp.take_along_axis(logits, jnp.asarray(batch["targets"])[..., None], -1)[..., 0]
        return jnp.mean(lse - target) + z * jnp.mean(lse ** 2), jnp.mean(lse - target)

    (_, ce), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    grad_norm = float(np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree_util.tree_leaves(grads))))
    logged = metrics(run["workdir"])[1]
    # float32, 2 devices and 2 micro-batches vs one device and one batch: measured 0 (loss) and
    # 1.3e-8 (grad_norm) relative. Summing the micro-batch gradients instead of averaging them
    # doubles grad_norm.
    np.testing.assert_allclose(logged["loss"], float(ce), rtol=1e-5)
    np.testing.assert_allclose(logged["grad_norm"], grad_norm, rtol=1e-5)


def test_eval_loss_is_the_cross_entropy_over_the_held_out_split(run):
    """The trainer evaluates 2 batches of 8 of the 16 held-out sequences (one shuffled epoch):
    their mean is the mean over all held-out tokens, computed here from the saved model."""
    cfg, model, step = load_trained(run["workdir"])
    assert step == 2
    held_out = load_data(cfg.data).eval
    assert len(held_out) == run["n_eval"] and held_out.mask.all()
    logits = np.asarray(jax.jit(lambda m, t: m(t))(model, jnp.asarray(held_out.inputs)), np.float64)
    ce, _ = cross_entropy(logits, held_out.targets)
    record = metrics(run["workdir"])[2]
    # float32 logits, sharded vs one device: measured 4e-8 relative
    np.testing.assert_allclose(record["eval_loss"], ce.mean(), rtol=1e-5)
    accuracy = (logits.argmax(-1) == held_out.targets).mean()
    assert abs(record["eval_accuracy"] - accuracy) <= 1 / held_out.targets.size  # at most one near-tie
    assert "eval_loss" not in metrics(run["workdir"])[1]  # eval_every=2: only after step 2


def fsdp_axis(shape):
    """The rule written out: the largest axis that FSDP divides (the first of equals), or None."""
    axes = [i for i, d in enumerate(shape) if d % FSDP == 0 and d >= FSDP]
    return max(axes, key=lambda i: shape[i]) if axes else None


def test_fsdp_shards_parameters_and_optimizer_state(run):
    assert len(run["placements"]) == 2
    for state in run["placements"]:
        for part in ("params", "opt_state"):
            sharded = 0
            for shape, sharding, shard_shape in state[part]:
                axis = fsdp_axis(shape)
                want = tuple(d // FSDP if i == axis else d for i, d in enumerate(shape))
                assert shard_shape == want, (part, shape, sharding)
                spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
                assert all((name == "fsdp") == (i == axis) for i, name in enumerate(spec)), (part, shape, spec)
                sharded += axis is not None
            # the embedding, projections, SwiGLU and the Adam moments of all of them
            assert sharded >= (6 if part == "params" else 12), (part, sharded)


def paragru_lm_params(d, layers, vocab, heads, kernel):
    """Parameters of the ParaGRU language model, counted from its architecture (README):
    embedding (tied head); per block RMSNorm, in_proj d→2d, depthwise conv (k·d + d), ParaGRU
    (a 3d, block-diagonal B 3d²/heads, b 3d), RMSNorm, out_proj d², RMSNorm, SwiGLU
    (d→2h, h→d); final RMSNorm. h = ⌈8d/3⌉ rounded up to a multiple of 64."""
    h = 64 * math.ceil(8 * d / 3 / 64)
    cell = 3 * d + 3 * d * d // heads + 3 * d
    block = d + 2 * d * d + (kernel * d + d) + cell + d + d * d + d + 2 * d * h + h * d
    return vocab * d + layers * block + d


def test_dry_run_counts_parameters_and_bytes_per_device(capsys):
    from pararnn.train.cli import dry_run
    cfg = load_config("gru7b")
    summary = dry_run(cfg)
    capsys.readouterr()
    m = cfg.model
    params = paragru_lm_params(m.d_model, m.n_layers, m.vocab_size, m.num_heads, m.conv_kernel)
    assert summary["params"] == params and 6.5e9 < params < 7.5e9
    fsdp, parts = summary["fsdp"], summary["breakdown"]
    assert fsdp == 8
    # float32 parameters, gradients and AdamW's two moments, each split over the fsdp axis
    assert parts["params"] == parts["grads"] == 4 * params // fsdp
    assert parts["optimizer"] == 2 * 4 * params // fsdp
    assert summary["bytes_per_device"] == int(sum(v for k, v in parts.items() if k != "total"))
    # activations: per device and micro-batch — twice the accumulation, half the tokens kept
    from pararnn.train.memory import estimate_bytes_per_device
    twice = load_config("gru7b", [f"optim.grad_accum={2 * cfg.optim.grad_accum}"])
    halved = estimate_bytes_per_device(twice, params, summary["devices"], fsdp)
    assert parts["activations"] > 0 and halved["activations"] * 2 == parts["activations"]
