"""Built-in data that needs no files and no network, made with ``datasets.Dataset.from_generator``.

- ``synthetic_text``: short stories from a small random grammar — English-looking text with
  real structure (agreement, recurring characters, punctuation) for the byte-level ``tiny`` LM.
- ``parity``: bit strings; the target at every position is the parity of the prefix — state
  tracking, which nonlinear RNNs solve and linear recurrences do not.
- ``mqar``: multi-query associative recall: key–value pairs, then queries of the keys; the
  target after each query key is its value.

Everything is deterministic given the seed.
"""

from __future__ import annotations

import datasets
import numpy as np

# ---- synthetic text --------------------------------------------------------------------------

_NAMES = ["Mira", "Tobin", "Ada", "Felix", "Juno", "Otto", "Lena", "Rafi", "Nell", "Kai"]
_ANIMALS = ["cat", "fox", "owl", "dog", "hare", "crow", "mole", "goat"]
_ADJ = ["small", "brave", "quiet", "old", "clever", "sleepy", "bright", "curious"]
_PLACES = ["the forest", "the river", "the hill", "the market", "the garden", "the old mill"]
_OBJECTS = ["a lamp", "a map", "a red kite", "a letter", "a seed", "a silver key", "a drum"]
_VERBS_PAST = ["found", "lost", "carried", "painted", "hid", "shared", "mended", "counted"]
_FEELINGS = ["happy", "tired", "worried", "proud", "hungry", "calm"]


def _story(rng: np.random.Generator) -> str:
    hero = rng.choice(_NAMES)
    pet = f"{rng.choice(_ADJ)} {rng.choice(_ANIMALS)}"
    sentences = [f"{hero} had a {pet}."]
    for _ in range(rng.integers(3, 7)):
        kind = rng.integers(0, 5)
        if kind == 0:
            sentences.append(f"One day {hero} went to {rng.choice(_PLACES)}.")
        elif kind == 1:
            sentences.append(f"There {hero} {rng.choice(_VERBS_PAST)} {rng.choice(_OBJECTS)}.")
        elif kind == 2:
            sentences.append(f"The {pet.split()[-1]} felt {rng.choice(_FEELINGS)}.")
        elif kind == 3:
            friend = rng.choice([n for n in _NAMES if n != hero])
            sentences.append(f"{friend} said: \"Hello, {hero}!\"")
        else:
            sentences.append(f"They counted {rng.integers(2, 10)} stars and {rng.integers(2, 10)} clouds.")
    sentences.append(f"In the end {hero} was {rng.choice(_FEELINGS)}.")
    return " ".join(sentences)


def _text_gen(num_examples: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(num_examples):
        yield {"text": _story(rng)}


def synthetic_text(num_examples: int, seed: int) -> datasets.Dataset:
    return datasets.Dataset.from_generator(
        _text_gen, gen_kwargs={"num_examples": num_examples, "seed": seed}, keep_in_memory=True)


# ---- parity ----------------------------------------------------------------------------------

PARITY_VOCAB = 4  # 0 unused, 1 = bit 0 / even, 2 = bit 1 / odd, 3 unused


def _parity_gen(num_examples: int, length: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(num_examples):
        bits = rng.integers(0, 2, size=length)
        yield {"inputs": (bits + 1).tolist(), "targets": (np.cumsum(bits) % 2 + 1).tolist(),
               "mask": [1] * length}


def parity(num_examples: int, length: int, seed: int) -> datasets.Dataset:
    return datasets.Dataset.from_generator(
        _parity_gen, gen_kwargs={"num_examples": num_examples, "length": length, "seed": seed},
        keep_in_memory=True)


# ---- multi-query associative recall ----------------------------------------------------------

def mqar_vocab(num_keys: int = 64, num_values: int = 64) -> int:
    return 4 + num_keys + num_values


def _mqar_gen(num_examples: int, length: int, pairs: int, seed: int, num_keys: int, num_values: int):
    rng = np.random.default_rng(seed)
    queries = (length - 2 * pairs) // 2
    for _ in range(num_examples):
        keys = 4 + rng.choice(num_keys, size=pairs, replace=False)
        values = 4 + num_keys + rng.integers(0, num_values, size=pairs)
        asked = rng.integers(0, pairs, size=queries)
        seq = np.empty(2 * pairs + 2 * queries, np.int64)
        seq[0:2 * pairs:2], seq[1:2 * pairs:2] = keys, values
        seq[2 * pairs::2], seq[2 * pairs + 1::2] = keys[asked], values[asked]
        seq = np.concatenate([seq, np.full(length - len(seq), 3)])  # pad to length
        targets = np.concatenate([seq[1:], [3]])
        mask = np.zeros(length, np.int64)
        mask[2 * pairs:2 * pairs + 2 * queries:2] = 1  # after each query key: its value
        yield {"inputs": seq.tolist(), "targets": targets.tolist(), "mask": mask.tolist()}


def mqar(num_examples: int, length: int, pairs: int, seed: int, num_keys: int = 64,
         num_values: int = 64) -> datasets.Dataset:
    if not 1 <= pairs <= min(num_keys, length // 2 - 1):
        raise ValueError(f"data.mqar_pairs={pairs} must be in [1, {min(num_keys, length // 2 - 1)}] "
                         f"for data.task_length={length}.")
    return datasets.Dataset.from_generator(
        _mqar_gen, gen_kwargs={"num_examples": num_examples, "length": length, "pairs": pairs, "seed": seed,
                               "num_keys": num_keys, "num_values": num_values}, keep_in_memory=True)
