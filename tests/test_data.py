"""Data: tokenizer, packing, deterministic batches, held-out split, the synthetic tasks'
definitions, and errors that name the bad file."""

import json

import numpy as np
import pytest

from pararnn.train.config import DataConfig
from pararnn.train.data import DataError, batch_indices, get_batch, load_data
from pararnn.train.tokenizer import ByteTokenizer


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "Grüße, 世界!"
    assert tok.decode(tok.encode(text)) == text and max(tok.encode(text)) < 256


def test_files_are_packed_in_order_with_separators(tmp_path):
    docs = [f"document number {i} " * 3 for i in range(40)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    data = load_data(DataConfig(source="files", paths=[str(path)], seq_len=16, eval_fraction=0.1))
    stream = np.concatenate([np.asarray(list(d.encode()) + [0]) for d in docs])
    n = len(stream) // 17
    packed = stream[: n * 17].reshape(n, 17)
    both = np.concatenate([data.train.inputs, data.eval.inputs])
    np.testing.assert_array_equal(both, packed[:, :-1])
    np.testing.assert_array_equal(np.concatenate([data.train.targets, data.eval.targets]), packed[:, 1:])
    assert len(data.eval) == round(0.1 * n)


def test_batches_are_a_deterministic_function_of_position():
    a = batch_indices(10, position=7, batch_size=6, seed=3)
    b = batch_indices(10, position=7, batch_size=6, seed=3)
    np.testing.assert_array_equal(a, b)
    # every sequence once per epoch
    epoch0 = np.concatenate([batch_indices(10, p, 5, 3) for p in (0, 5)])
    assert sorted(epoch0) == list(range(10))
    assert not np.array_equal(batch_indices(10, 0, 10, 3), batch_indices(10, 10, 10, 3))  # reshuffled


def test_parity_targets_are_prefix_parities():
    data = load_data(DataConfig(source="parity", task_length=20, num_examples=30, eval_fraction=0.1))
    bits = data.train.inputs - 1
    np.testing.assert_array_equal(data.train.targets - 1, np.cumsum(bits, axis=1) % 2)


def test_mqar_targets_are_the_values_of_the_queried_keys():
    data = load_data(DataConfig(source="mqar", task_length=32, mqar_pairs=4, num_examples=20))
    for x, y, m in zip(data.train.inputs, data.train.targets, data.train.mask):
        table = dict(zip(x[0:8:2], x[1:8:2]))
        for pos in np.nonzero(m)[0]:
            assert y[pos] == table[x[pos]]


def _khop_by_definition(chars, hops):
    """The k-hop answers straight from the definition: from position p, jump to 1 + the last
    earlier position holding chars[p]; k jumps; None when a jump has nowhere to go."""
    out = []
    for t in range(len(chars)):
        p = t
        for _ in range(hops):
            earlier = [j for j in range(p) if chars[j] == chars[p]]
            if not earlier:
                p = None
                break
            p = earlier[-1] + 1
        out.append(None if p is None else chars[p])
    return out


@pytest.mark.parametrize("hops,alphabet", [(1, 3), (2, 4), (3, 5)])
def test_khop_targets_follow_the_definition(hops, alphabet):
    data = load_data(DataConfig(source="khop", task_length=40, khop_hops=hops, khop_alphabet=alphabet,
                                num_examples=12, eval_fraction=0.1))
    scored = 0
    for x, y, m in zip(data.train.inputs, data.train.targets, data.train.mask):
        assert np.all(x >= 2) and np.all(x[1:] != x[:-1])  # characters, no two neighbours equal
        want = _khop_by_definition(list(x), hops)
        np.testing.assert_array_equal(m, [w is not None for w in want])
        np.testing.assert_array_equal(y[m > 0], [w for w in want if w is not None])
        scored += m.sum()
    assert scored > 100  # the hops exist often enough for the check to mean something


def test_khop_bad_settings_are_data_errors():
    with pytest.raises(DataError, match="data.khop_hops must be >= 1, got 0"):
        load_data(DataConfig(source="khop", khop_hops=0, num_examples=2))


@pytest.mark.parametrize("name,content,pattern", [
    ("empty.txt", "", r"file '.*empty.txt' is empty"),
    ("bad.jsonl", '{"text": "ok"}\n{not json}\n', r"bad.jsonl:2 is not valid JSON"),
    ("nofield.jsonl", '{"body": "ok"}\n', r"nofield.jsonl:1 has no field 'text'"),
    ("binary.txt", b"\xff\xfe\x00abc", r"binary.txt' is not UTF-8 text"),
    ("notes.xyz", "abc", r"cannot tell the format of .*notes.xyz"),
])
def test_bad_files_are_named(tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=pattern):
        load_data(DataConfig(source="files", paths=[str(path)], seq_len=4))


def test_hub_offline_error_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the libraries read these variables at import time; once imported (by an earlier test)
    # only their constants count — otherwise the hub client retries for ~23 s
    import datasets
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataError, match=r"could not load 'nobody/nonexistent-dataset' .* offline"):
        load_data(DataConfig(source="hub", hub_name="nobody/nonexistent-dataset"))


def test_streaming_files_are_bounded(tmp_path):
    """Streaming reads only what the run needs — max_train_sequences plus the eval batches
    (10 + 1·2 = 12 sequences of 9 tokens) — and those are the first 12 of the packed stream
    (the file's bytes and the end token), written out here."""
    text = "".join(f"word{i} " for i in range(4000))
    path = tmp_path / "big.txt"
    path.write_text(text)
    data = load_data(DataConfig(source="files", paths=[str(path)], seq_len=8, streaming=True, batch_size=2,
                                eval_batches=1, eval_fraction=0.25), max_train_sequences=10)
    stream = np.asarray(list(text.encode()) + [0])
    want = stream[: 12 * 9].reshape(12, 9)
    assert (len(data.train), len(data.eval)) == (9, 3)  # 12 sequences, a quarter held out
    np.testing.assert_array_equal(np.concatenate([data.train.inputs, data.eval.inputs]), want[:, :-1])
    np.testing.assert_array_equal(np.concatenate([data.train.targets, data.eval.targets]), want[:, 1:])


def test_get_batch_rows_split_a_global_batch():
    data = load_data(DataConfig(source="parity", task_length=8, num_examples=40))
    full = get_batch(data.train, 12, 8, seed=1)
    halves = [get_batch(data.train, 12, 8, seed=1, rows=slice(i * 4, (i + 1) * 4)) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["inputs"] for h in halves]), full["inputs"])


def test_local_hugging_face_tokenizer_json(tmp_path):
    """A tokenizer.json written here (no download) loads, round-trips and finds its EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from pararnn.train.tokenizer import load_tokenizer

    vocab = {"[UNK]": 0, "</s>": 1, "the": 2, "cat": 3, "sat": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    loaded = load_tokenizer(path)
    assert loaded.vocab_size == 5 and loaded.eos_id == 1
    assert loaded.encode("the cat sat") == [2, 3, 4]
    assert loaded.decode([2, 3, 4]) == "the cat sat"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        load_tokenizer(str(tmp_path / "bad.json"))
