"""Reber-grammar strings: valid ones from the grammar's automaton, invalid ones by a single
corruption, as one-hot sequences for classification (valid vs invalid).

The automaton (Reber 1967, as in Hochreiter & Schmidhuber 1997)::

    0 -B-> 1;  1 -T-> 2 | -P-> 3;  2 -S-> 2 | -X-> 4;  3 -T-> 3 | -V-> 5;
    4 -X-> 3 | -S-> 6;  5 -P-> 4 | -V-> 6;  6 -E-> accept

Embedded Reber: ``B T <reber> T E`` or ``B P <reber> P E``; the hard part is remembering the
second symbol until the penultimate one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SYMBOLS", "reber_string", "is_reber", "embedded_reber_string", "is_embedded_reber",
           "corrupt", "reber_dataset"]

SYMBOLS = "BTSXPVE"
_EDGES = {1: (("T", 2), ("P", 3)), 2: (("S", 2), ("X", 4)), 3: (("T", 3), ("V", 5)),
          4: (("X", 3), ("S", 6)), 5: (("P", 4), ("V", 6))}


def reber_string(rng: np.random.Generator, max_length: int | None = None) -> str:
    """One valid Reber string, each branch taken with probability 1/2. With ``max_length``,
    strings longer than it are redrawn (rejection sampling)."""
    while True:
        out, state = ["B"], 1
        while state != 6:
            symbol, state = _EDGES[state][rng.integers(2)]
            out.append(symbol)
        out.append("E")
        if max_length is None or len(out) <= max_length:
            return "".join(out)


def is_reber(s: str) -> bool:
    """Whether ``s`` is accepted by the automaton."""
    if len(s) < 2 or s[0] != "B" or s[-1] != "E":
        return False
    state = 1
    for ch in s[1:-1]:
        nxt = dict(_EDGES.get(state, ())).get(ch)
        if nxt is None:
            return False
        state = nxt
    return state == 6


def embedded_reber_string(rng: np.random.Generator, max_length: int | None = None) -> str:
    """``B T <reber> T E`` or ``B P <reber> P E``."""
    inner_max = None if max_length is None else max_length - 4
    c = "TP"[rng.integers(2)]
    return f"B{c}{reber_string(rng, inner_max)}{c}E"


def is_embedded_reber(s: str) -> bool:
    return (len(s) >= 6 and s[0] == "B" and s[-1] == "E" and s[1] in "TP" and s[-2] == s[1]
            and is_reber(s[2:-2]))


def corrupt(s: str, rng: np.random.Generator, accept=is_reber) -> str:
    """An invalid string of the same length: one inner symbol replaced by another inner
    symbol (T, S, X, P, V — never B or E, which would be trivial to spot), redrawn until
    ``accept`` rejects it."""
    while True:
        i = int(rng.integers(1, len(s) - 1))
        choices = [c for c in "TSXPV" if c != s[i]]
        t = s[:i] + choices[rng.integers(len(choices))] + s[i + 1:]
        if not accept(t):
            return t


def reber_dataset(n: int, *, seed: int = 0, max_length: int = 20, embedded: bool = False):
    """``n`` strings, half valid and half invalid (shuffled), one-hot and left-padded.

    Args:
      n: number of strings.
      seed: same seed → same data.
      max_length: longest string (longer ones are redrawn); sequences are left-padded with
        zero vectors to this length, so every string ends at the last time step.
      embedded: embedded Reber grammar instead of the plain one.

    Returns:
      ``(x (n, max_length, 7) float32, y (n,) int32 with 1 = valid, strings list)``.
    """
    if n < 1 or max_length < (9 if embedded else 5):
        raise ValueError(f"reber_dataset: need n >= 1 and max_length >= {9 if embedded else 5}, "
                         f"got n={n}, max_length={max_length}.")
    rng = np.random.default_rng(seed)
    make = embedded_reber_string if embedded else reber_string
    accept = is_embedded_reber if embedded else is_reber
    strings, labels = [], []
    for i in range(n):
        s = make(rng, max_length)
        valid = i % 2 == 0
        strings.append(s if valid else corrupt(s, rng, accept))
        labels.append(int(valid))
    order = rng.permutation(n)
    strings = [strings[i] for i in order]
    y = np.asarray(labels, np.int32)[order]
    x = np.zeros((n, max_length, len(SYMBOLS)), np.float32)
    for k, s in enumerate(strings):
        start = max_length - len(s)
        x[k, np.arange(start, max_length), [SYMBOLS.index(c) for c in s]] = 1.0
    return x, y, strings
