"""Value rules of the training config: one row per key, checked at config time.

Each row maps a dotted key to the rules its value must satisfy (see :mod:`pararnn.config`);
a new config field gets its range by adding a row here. Rules that depend on the device
count (the batch must split over the mesh) are checked when the mesh is built.
"""

from __future__ import annotations

from ..config import Rule, at_least, at_most, between, divides, greater_than

HEADED_CELLS = ("paragru", "paralstm", "mingru")  # cells with a block-diagonal input projection
MQAR_KEYS = 64  # distinct keys of the MQAR task (pararnn.train.synthetic.mqar's num_keys)


def _source_in(*sources: str):
    return lambda get: get("data.source") in sources


_positive_int = at_least(1)

VALUE_RULES: dict[str, list[Rule]] = {
    # model
    "model.d_model": [_positive_int],
    "model.n_layers": [_positive_int],
    "model.vocab_size": [_positive_int],
    "model.mlp_hidden": [_positive_int],
    "model.num_heads": [_positive_int, divides("model.d_model").but(
        when=lambda get: get("model.cell") in HEADED_CELLS,
        note="the cell's input projection is block-diagonal over heads")],
    "model.conv_kernel": [_positive_int],
    "model.max_recurrent_norm": [greater_than(0)],
    "model.init_std": [greater_than(0)],
    # attention / mamba2 mixers (the recurrent mixer ignores these)
    "model.head_dim": [
        _positive_int,
        Rule(lambda v, get: v % 2 == 0 and get("model.d_model") % v == 0,
             lambda get: f"must be even and divide model.d_model={get('model.d_model')}").but(
            when=lambda get: get("model.mixer") == "attention",
            note="attention heads = d_model / head_dim; RoPE rotates pairs of channels"),
        Rule(lambda v, get: (get("model.ssm_expand") * get("model.d_model")) % v == 0,
             lambda get: "must divide model.ssm_expand·model.d_model = "
                         f"{get('model.ssm_expand') * get('model.d_model')}").but(
            when=lambda get: get("model.mixer") == "mamba2", note="mamba2 heads")],
    "model.rope_base": [greater_than(1)],
    "model.ssm_state": [_positive_int],
    "model.ssm_expand": [_positive_int],
    "model.ssm_chunk": [_positive_int],
    # data
    "data.seq_len": [_positive_int],
    "data.batch_size": [_positive_int],
    "data.eval_fraction": [between(0, 1, hi_open=True)],
    "data.eval_batches": [_positive_int],
    "data.num_examples": [_positive_int.but(when=_source_in("synthetic", "parity", "mqar"))],
    "data.task_length": [at_least(2).but(when=_source_in("parity")),
                         at_least(4).but(when=_source_in("mqar"), note="room for a key-value pair and a query")],
    "data.mqar_pairs": [
        _positive_int.but(when=_source_in("mqar")),
        at_most(lambda get: min(MQAR_KEYS, get("data.task_length") // 2 - 1),
                f"min({MQAR_KEYS}, data.task_length // 2 - 1)").but(
            when=_source_in("mqar"), note="distinct keys, and room for the queries")],
    "data.khop_hops": [_positive_int.but(when=_source_in("khop"))],
    "data.khop_alphabet": [at_least(2).but(when=_source_in("khop"))],
    "data.seed": [at_least(0)],
    "data.order_seed": [at_least(0)],
    # optim
    "optim.lr": [greater_than(0)],
    "optim.warmup_steps": [at_least(0)],
    "optim.min_lr_ratio": [between(0, 1)],
    "optim.weight_decay": [at_least(0)],
    "optim.b1": [between(0, 1, hi_open=True)],
    "optim.b2": [between(0, 1, hi_open=True)],
    "optim.eps": [greater_than(0)],
    "optim.clip_norm": [greater_than(0)],
    "optim.z_loss": [at_least(0)],
    "optim.grad_accum": [_positive_int, divides("data.batch_size").but(
        note="micro-batches split the batch evenly")],
    # train
    "train.steps": [_positive_int.but(note="the number of optimizer steps; --steps N sets it")],
    "train.log_every": [_positive_int],
    "train.eval_every": [at_least(0).but(note="0: never evaluate")],
    "train.checkpoint_every": [_positive_int],
    "train.keep_checkpoints": [_positive_int],
    "train.stop_after": [_positive_int],
    "train.spawn_step": [at_least(0)],
    # mesh
    "mesh.data": [at_least(1, also=(-1,)).but(note="-1: all devices not used by mesh.fsdp")],
    "mesh.fsdp": [_positive_int],
    "mesh.seq": [
        _positive_int,
        divides("data.seq_len").but(note="every device holds an equal shard of each sequence"),
        Rule(lambda v, get: v == 1 or get("model.mixer") == "recurrent",
             lambda get: f"must be 1 for model.mixer={get('model.mixer')!r}").but(
            note="only the recurrent mixer's Newton solve splits across devices"),
        Rule(lambda v, get: v == 1 or get("data.seq_len") // v >= get("model.conv_kernel") - 1,
             lambda get: f"must leave shards of at least model.conv_kernel − 1 = "
                         f"{get('model.conv_kernel') - 1} steps (data.seq_len={get('data.seq_len')})").but(
            note="the causal convolution's halo comes from the previous device")],
    "mesh.devices": [at_least(1, also=(-1,)).but(note="-1: all devices")],
}
