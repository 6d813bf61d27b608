"""Tokenizers: byte-level (built in, no download) or a local Hugging Face ``tokenizer.json``."""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256). Byte 0 (NUL, absent from normal text) doubles as
    the end-of-document separator."""

    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        data = bytes(int(i) for i in np.asarray(ids).reshape(-1) if 0 < int(i) < 256)
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer loaded from a local ``tokenizer.json``
    (``pip install tokenizers``). No network access."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data.tokenizer: tokenizer file {path!r} does not exist "
                                    f"(use 'byte' for the built-in byte-level tokenizer).")
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError:
            raise ImportError("data.tokenizer points to a tokenizer.json, which needs the 'tokenizers' "
                              "package: pip install tokenizers") from None
        try:
            self._tok = _Tok.from_file(path)
        except Exception as e:
            raise ValueError(f"data.tokenizer: {path!r} is not a valid tokenizer.json ({e}).") from None
        self.vocab_size = self._tok.get_vocab_size()
        vocab = self._tok.get_vocab()
        eos = next((vocab[t] for t in ("</s>", "<|endoftext|>", "<eos>", "[SEP]") if t in vocab), None)
        self.eos_id = int(eos if eos is not None else 0)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)])


def load_tokenizer(spec: str) -> Tokenizer:
    return ByteTokenizer() if spec == "byte" else HFTokenizer(spec)
