"""Training data: Hugging Face ``datasets`` in, fixed-length ``(inputs, targets, mask)`` out.

Sources (``DataConfig.source``): ``synthetic`` (built-in stories), ``files`` (local text, JSON
lines or parquet), ``hub`` (a dataset name, when online), ``parity``, ``mqar`` and ``khop``
(synthetic tasks). Text is tokenised (byte-level by default), separated by the tokenizer's end token
and packed into sequences of ``seq_len + 1`` tokens; the last ``eval_fraction`` of the packed
sequences is held out.

Batches are a pure function of the step: batch ``i`` holds sequences ``[i·B, (i+1)·B)`` of an
endless stream that concatenates one seeded permutation per epoch. The data position is
therefore ``step · B`` sequences — saved in checkpoints, and resuming continues exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import datasets
import numpy as np

from . import synthetic
from .config import DataConfig
from .tokenizer import Tokenizer, load_tokenizer


class DataError(ValueError):
    """Data cannot be loaded; the message names the file or setting."""


@dataclass
class Split:
    """Packed examples: ``inputs``, ``targets`` and ``mask``, each ``(N, seq_len)`` int32."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class Data:
    train: Split
    eval: Split
    vocab_size: int
    tokenizer: Tokenizer | None
    description: str


# ---- loading ------------------------------------------------------------------------------------

_EXT_FORMAT = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json",
               ".parquet": "parquet"}


def _file_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXT_FORMAT:
        raise DataError(f"data.paths: cannot tell the format of {path!r} from its extension; set "
                        f"data.format to text, json or parquet.")
    return _EXT_FORMAT[ext]


def _check_file(path: str, fmt: str, text_field: str) -> None:
    """Fail early, naming the file, on missing / empty / malformed inputs."""
    if not os.path.isfile(path):
        raise DataError(f"data.paths: file {path!r} does not exist.")
    if os.path.getsize(path) == 0:
        raise DataError(f"data.paths: file {path!r} is empty.")
    if fmt == "text":
        try:
            with open(path, encoding="utf-8") as f:
                f.read()
        except UnicodeDecodeError as e:
            raise DataError(f"data.paths: {path!r} is not UTF-8 text ({e}).") from None
    elif fmt == "json":
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"data.paths: {path}:{lineno} is not valid JSON ({e.msg}).") from None
                if not isinstance(record, dict) or text_field not in record:
                    raise DataError(f"data.paths: {path}:{lineno} has no field {text_field!r} "
                                    f"(set data.text_field).")
    elif fmt == "parquet":
        import pyarrow.parquet as pq
        try:
            schema = pq.read_schema(path)
        except Exception as e:
            raise DataError(f"data.paths: {path!r} is not a valid parquet file ({e}).") from None
        if text_field not in schema.names:
            raise DataError(f"data.paths: {path!r} has no column {text_field!r} (columns: {schema.names}).")


def _load_files(cfg: DataConfig) -> datasets.Dataset:
    if not cfg.paths:
        raise DataError("data.source is 'files' but data.paths is empty.")
    formats = {p: _file_format(p, cfg.format) for p in cfg.paths}
    if len(set(formats.values())) > 1:
        raise DataError(f"data.paths mixes formats {sorted(set(formats.values()))}; use one format.")
    for path, fmt in formats.items():
        _check_file(path, fmt, cfg.text_field)
    fmt = next(iter(formats.values()))
    builder = {"text": "text", "json": "json", "parquet": "parquet"}[fmt]
    kwargs = {"sample_by": "document"} if fmt == "text" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=list(cfg.paths), split="train", **kwargs)
    except Exception as e:
        raise DataError(f"data.paths: could not read {cfg.paths} as {fmt} ({type(e).__name__}: {e}).") from None
    column = "text" if fmt == "text" else cfg.text_field
    if len(ds) == 0:
        raise DataError(f"data.paths: {cfg.paths} contain no records.")
    return ds.rename_column(column, "text") if column != "text" else ds


def _load_hub(cfg: DataConfig) -> datasets.Dataset:
    if not cfg.hub_name:
        raise DataError("data.source is 'hub' but data.hub_name is not set.")
    try:
        ds = datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.hub_split, streaming=cfg.streaming)
    except Exception as e:
        raise DataError(
            f"data.hub_name: could not load {cfg.hub_name!r} from the Hugging Face Hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). If this machine is "
            f"offline, download the data elsewhere and use data.source=files with data.paths."
        ) from None
    if cfg.text_field != "text":
        ds = ds.rename_column(cfg.text_field, "text")
    return ds


def _texts(cfg: DataConfig):
    if cfg.source == "synthetic":
        return synthetic.synthetic_text(cfg.num_examples, cfg.seed), "synthetic stories"
    if cfg.source == "files":
        return _load_files(cfg), f"files {cfg.paths}"
    return _load_hub(cfg), f"hub {cfg.hub_name}"


# ---- packing ------------------------------------------------------------------------------------

def _pack(texts, tokenizer: Tokenizer, seq_len: int, max_sequences: int | None = None) -> np.ndarray:
    """Concatenate documents (each followed by the end token) and cut ``(N, seq_len + 1)``."""
    chunk, stream, n_tokens = seq_len + 1, [], 0
    for record in texts:
        ids = tokenizer.encode(record["text"]) + [tokenizer.eos_id]
        stream.append(np.asarray(ids, np.int32))
        n_tokens += len(ids)
        if max_sequences is not None and n_tokens >= max_sequences * chunk:
            break
    tokens = np.concatenate(stream) if stream else np.zeros((0,), np.int32)
    n = len(tokens) // chunk
    if max_sequences is not None:
        n = min(n, max_sequences)
    return tokens[: n * chunk].reshape(n, chunk)


def _split(seqs: Split, eval_fraction: float) -> tuple[Split, Split]:
    n = len(seqs)
    n_eval = min(n - 1, max(1, int(round(n * eval_fraction)))) if eval_fraction > 0 else 0
    cut = n - n_eval
    take = lambda s: Split(*(a[s] for a in (seqs.inputs, seqs.targets, seqs.mask)))
    return take(slice(0, cut)), take(slice(cut, n))


def load_data(cfg: DataConfig, max_train_sequences: int | None = None) -> Data:
    """Load, tokenise, pack and split per ``cfg``. ``max_train_sequences`` bounds streaming
    sources (the training run's total need)."""
    datasets.disable_progress_bars()
    if cfg.source in ("parity", "mqar", "khop"):
        if cfg.source == "parity":
            ds, vocab = synthetic.parity(cfg.num_examples, cfg.task_length, cfg.seed), synthetic.PARITY_VOCAB
        else:
            try:  # bad task settings (pairs, hops, alphabet) are the user's: a DataError naming the key
                if cfg.source == "mqar":
                    ds = synthetic.mqar(cfg.num_examples, cfg.task_length, cfg.mqar_pairs, cfg.seed)
                else:
                    ds = synthetic.khop(cfg.num_examples, cfg.task_length, cfg.khop_hops, cfg.khop_alphabet,
                                        cfg.seed)
            except ValueError as e:
                raise DataError(str(e)) from None
            vocab = synthetic.mqar_vocab() if cfg.source == "mqar" else synthetic.khop_vocab(cfg.khop_alphabet)
        cols = ds.with_format("numpy")[:]
        seqs = Split(*(np.asarray(cols[k], np.int32) for k in ("inputs", "targets", "mask")))
        train, held = _split(seqs, cfg.eval_fraction)
        return Data(train, held, vocab, None, f"{cfg.source} task (length {cfg.task_length})")
    tokenizer = load_tokenizer(cfg.tokenizer)
    texts, description = _texts(cfg)
    limit = None
    if cfg.streaming:
        limit = (max_train_sequences or 0) + max(cfg.eval_batches * cfg.batch_size, 1)
    packed = _pack(texts, tokenizer, cfg.seq_len, limit)
    if len(packed) < 2:
        raise DataError(f"data: {description} yields {len(packed)} sequences of {cfg.seq_len + 1} tokens; "
                        f"need at least 2 (more text, or a smaller data.seq_len).")
    seqs = Split(packed[:, :-1], packed[:, 1:], np.ones_like(packed[:, 1:]))
    train, held = _split(seqs, cfg.eval_fraction)
    return Data(train, held, tokenizer.vocab_size, tokenizer,
                f"{description}: {len(train)} train / {len(held)} eval sequences of {cfg.seq_len} tokens")


# ---- batches --------------------------------------------------------------------------------------

def batch_indices(num_sequences: int, position: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices of the ``batch_size`` sequences at ``position`` in the endless shuffled stream
    (one seeded permutation per epoch)."""
    idx = np.empty(batch_size, np.int64)
    for i in range(batch_size):
        epoch, offset = divmod(position + i, num_sequences)
        idx[i] = _permutation(num_sequences, seed, epoch)[offset]
    return idx


_PERM_CACHE: dict = {}


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    key = (n, seed, epoch)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 8:
            _PERM_CACHE.clear()
        _PERM_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(n)
    return _PERM_CACHE[key]


def get_batch(split: Split, position: int, batch_size: int, seed: int,
              rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """The global batch at ``position`` (in sequences), restricted to ``rows`` (this
    process's share in multi-process training)."""
    idx = batch_indices(len(split), position, batch_size, seed)[rows]
    return {"inputs": split.inputs[idx], "targets": split.targets[idx], "mask": split.mask[idx]}
