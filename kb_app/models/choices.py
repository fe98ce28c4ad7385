"""Reading probabilities from a model: a graded yes/no from the first reply token, and how likely a given reply is."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def first_token_ids(words: Sequence[str], encode: Callable[[str], list[int]]) -> list[int]:
    """The distinct first tokens of ``words`` ("yes", "Yes" and " yes" are often three tokens, "是" one)."""
    return sorted({ids[0] for ids in map(encode, words) if ids})


def choice_logprobs(logits: np.ndarray, groups: Sequence[Sequence[int]]) -> list[float]:
    """Log of the total next-token probability of each group of token ids (``-inf`` for an empty group)."""
    logprobs = _log_softmax(np.asarray(logits, dtype=np.float64)[None, :])[0]
    return [float(np.logaddexp.reduce(logprobs[list(g)])) if g else -math.inf for g in groups]


def match_top_logprobs(top: Sequence[tuple[str, float]], choices: Sequence[Sequence[str]]) -> list[float]:
    """Choice log-probabilities from a server's top-k list of (token text, logprob); unlisted spellings count 0."""
    out = []
    for words in choices:
        wanted = set(words)
        found = [lp for text, lp in top if text in wanted]
        out.append(float(np.logaddexp.reduce(found)) if found else -math.inf)
    return out


def mean_token_logprob(logits: np.ndarray, tokens: Sequence[int]) -> float:
    """Mean log-probability of ``tokens``; row ``i`` of ``logits`` is the distribution ``tokens[i]`` came from."""
    logprobs = _log_softmax(np.asarray(logits, dtype=np.float64))
    return float(logprobs[np.arange(len(tokens)), list(tokens)].mean())


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    """Each row of logits as log-probabilities, computed without overflow."""
    shifted = rows - rows.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
