"""Built-in data that needs no files and no network, made with ``datasets.Dataset.from_generator``.

- ``synthetic_text``: short stories from a small random grammar — English-looking text with
  real structure (agreement, recurring characters, punctuation) for the byte-level ``tiny`` LM.
- ``parity``: bit strings; the target at every position is the parity of the prefix — state
  tracking, which nonlinear RNNs solve and linear recurrences do not.
- ``mqar``: multi-query associative recall: key–value pairs, then queries of the keys; the
  target after each query key is its value.
- ``khop``: k-hop induction heads (Sanford, Hsu & Telgarsky 2024): at every position, hop k
  times "to the token after the previous occurrence of the current token" and predict the
  token reached.

Each task also has a batch form (:func:`task_batch`) that draws fresh examples from a
NumPy generator — what the curriculum benchmark trains on. Everything is deterministic
given the seed.
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


def parity_example(rng: np.random.Generator, length: int) -> dict[str, np.ndarray]:
    """One parity example: inputs bits + 1, targets prefix parities + 1, every position scored."""
    bits = rng.integers(0, 2, size=length)
    return {"inputs": bits + 1, "targets": np.cumsum(bits) % 2 + 1, "mask": np.ones(length, np.int64)}


def _in_memory(examples) -> datasets.Dataset:
    """A Dataset of the examples' ``inputs``/``targets``/``mask``, built in memory. Not
    ``from_generator``: its on-disk cache is keyed by the generator function's own code, so
    a change to an ``*_example`` helper it calls would be served stale from the cache."""
    examples = list(examples)
    return datasets.Dataset.from_dict({k: [e[k].tolist() for e in examples] for k in ("inputs", "targets", "mask")})


def parity(num_examples: int, length: int, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    return _in_memory(parity_example(rng, length) for _ in range(num_examples))


# ---- multi-query associative recall ----------------------------------------------------------

def mqar_vocab(num_keys: int = 64, num_values: int = 64) -> int:
    return 4 + num_keys + num_values


def mqar_example(rng: np.random.Generator, length: int, pairs: int, num_keys: int = 64,
                 num_values: int = 64) -> dict[str, np.ndarray]:
    """One MQAR example: ``pairs`` key–value pairs, then queries; scored after each query key."""
    queries = (length - 2 * pairs) // 2
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
    return {"inputs": seq, "targets": targets, "mask": mask}


def _check_mqar(length: int, pairs: int, num_keys: int) -> None:
    if not 1 <= pairs <= min(num_keys, length // 2 - 1):
        raise ValueError(f"data.mqar_pairs={pairs} must be in [1, {min(num_keys, length // 2 - 1)}] "
                         f"for data.task_length={length}.")


def mqar(num_examples: int, length: int, pairs: int, seed: int, num_keys: int = 64,
         num_values: int = 64) -> datasets.Dataset:
    _check_mqar(length, pairs, num_keys)
    rng = np.random.default_rng(seed)
    return _in_memory(mqar_example(rng, length, pairs, num_keys, num_values) for _ in range(num_examples))


# ---- k-hop induction heads -------------------------------------------------------------------

KHOP_NONE = 1  # the target where the hops run out (mask 0 there: never scored)


def khop_vocab(alphabet: int) -> int:
    """0 unused, 1 = none, 2 … alphabet + 1 the characters."""
    return alphabet + 2


def khop_chars(rng: np.random.Generator, length: int, alphabet: int) -> np.ndarray:
    """``length`` characters in [0, alphabet), uniform, no two neighbours equal."""
    chars = np.empty(length, np.int64)
    chars[0] = rng.integers(0, alphabet)
    for t in range(1, length):  # uniform over the characters other than the previous one
        chars[t] = (chars[t - 1] + rng.integers(1, alphabet)) % alphabet
    return chars


def khop_answers(chars: np.ndarray, hops: int, alphabet: int) -> np.ndarray:
    """The character reached from every position by ``hops`` hops (−1 where a hop has nowhere
    to go); ``hop(p)`` = 1 + the last position before p holding the character at p.

    Computed online in O(T·k) with tables ``F^m[c]`` = the character m hops from the last
    occurrence of c: reading ``x_t`` after ``x_{t−1}`` sets ``F^1[x_{t−1}] = x_t`` and
    ``F^m[x_{t−1}] = F^{m−1}[x_t]`` (neighbours differ, so the entries read and written are
    distinct); the answer at t is ``F^k[x_t]``.
    """
    tables = np.full((hops + 1, alphabet), -1, np.int64)  # tables[m][c]; -1: no such hop
    out = np.full(len(chars), -1, np.int64)
    for t in range(len(chars)):
        if t:
            prev, cur = chars[t - 1], chars[t]
            tables[1, prev] = cur
            tables[2:, prev] = tables[1:-1, cur]
        out[t] = tables[hops, chars[t]]
    return out


def khop_example(rng: np.random.Generator, length: int, hops: int, alphabet: int) -> dict[str, np.ndarray]:
    """One k-hop example: inputs the characters (:func:`khop_chars`, shifted by 2), targets
    the k-hop answers (:func:`khop_answers`), scored (mask 1) where all k hops exist."""
    chars = khop_chars(rng, length, alphabet)
    answers = khop_answers(chars, hops, alphabet)
    mask = (answers >= 0).astype(np.int64)
    return {"inputs": chars + 2, "targets": np.where(mask, answers + 2, KHOP_NONE), "mask": mask}


def _check_khop(hops: int, alphabet: int) -> None:
    if hops < 1:
        raise ValueError(f"data.khop_hops must be >= 1, got {hops}.")
    if alphabet < 2:
        raise ValueError(f"data.khop_alphabet must be >= 2, got {alphabet}.")


def khop(num_examples: int, length: int, hops: int, alphabet: int, seed: int) -> datasets.Dataset:
    _check_khop(hops, alphabet)
    rng = np.random.default_rng(seed)
    return _in_memory(khop_example(rng, length, hops, alphabet) for _ in range(num_examples))


# ---- fresh batches ---------------------------------------------------------------------------

TASKS = ("parity", "mqar", "khop")


def task_vocab(task: str, *, khop_alphabet: int = 8) -> int:
    """Vocabulary size of ``task``'s tokens."""
    return {"parity": PARITY_VOCAB, "mqar": mqar_vocab(), "khop": khop_vocab(khop_alphabet)}[task]


def task_batch(task: str, rng: np.random.Generator, batch: int, length: int, *, mqar_pairs: int = 8,
               khop_hops: int = 2, khop_alphabet: int = 8) -> dict[str, np.ndarray]:
    """``batch`` fresh examples of ``task`` ("parity", "mqar", "khop") of ``length`` tokens:
    ``inputs``/``targets``/``mask`` arrays ``(batch, length)`` int32."""
    if task == "parity":
        make = lambda: parity_example(rng, length)
    elif task == "mqar":
        _check_mqar(length, mqar_pairs, 64)
        make = lambda: mqar_example(rng, length, mqar_pairs)
    elif task == "khop":
        _check_khop(khop_hops, khop_alphabet)
        make = lambda: khop_example(rng, length, khop_hops, khop_alphabet)
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    examples = [make() for _ in range(batch)]
    return {k: np.stack([e[k] for e in examples]).astype(np.int32) for k in ("inputs", "targets", "mask")}
