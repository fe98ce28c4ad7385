"""Where kb decides to refuse: is the retrieved evidence good enough to answer from?

The checks run after retrieval and before the answer is generated; a failed check gives the fixed "not in the
knowledge base" sentence. Thresholds are per question language and live in ``RefusalSettings``, calibrated on
the dev sets with ``bench/refusal.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from kb_app.chat.prompt import PromptBuilder
from kb_app.language import Language
from kb_app.models.base import ChatModel, Message
from kb_app.models.errors import LogprobsUnavailableError
from kb_app.retrieval.base import Hit
from kb_app.settings import RefusalSettings

log = logging.getLogger(__name__)


class EvidenceCheck(Protocol):
    def sufficient(self, question: str, hits: list[Hit], language: Language) -> bool:
        """Whether ``hits`` (the passages the answer would be given) are worth answering from."""
        ...


class SimilarityCheck:
    """Refuses when no passage is close to the question. Costs nothing, but cannot see a near miss: a passage
    about the right thing that does not hold the answer."""

    def __init__(self, min_dense_score: dict[str, float]) -> None:
        self._min = min_dense_score

    def sufficient(self, question: str, hits: list[Hit], language: Language) -> bool:
        scores = [h.dense_score for h in hits if h.dense_score is not None]
        if not scores:  # lexical-only retrieval has no calibrated similarity: any match is the evidence
            return bool(hits)
        return max(scores) >= self._min.get(language, 0.0)


def yes_over_no(model: ChatModel, messages: list[Message], words: tuple[Sequence[str], Sequence[str]]) -> float:
    """log P(yes) − log P(no) for the model's first reply token to a yes/no question (0 when it offers neither)."""
    lp_yes, lp_no = model.reply_start_logprobs(messages, list(words))
    if lp_yes == lp_no == -math.inf:
        return 0.0
    return lp_yes - lp_no


class ModelCheck:
    """The similarity check, then the model reads the passages and is asked whether they hold the answer.

    The decision is not the model's word but log P(yes) − log P(no) for its first reply token, held against a
    threshold calibrated for the model: a small model told to refuse when unsure refuses far too often.
    The question and passages are those of the answer prompt, so a model with a prompt cache reads them once.
    A backend that declares it cannot read first-token probabilities gets the similarity check alone; a server
    that turns out to send none (only a request tells) too, with a warning once.
    """

    def __init__(
        self,
        similarity: EvidenceCheck,
        model: Callable[[], ChatModel],
        prompts: PromptBuilder,
        min_log_odds: dict[str, float],
    ) -> None:
        self._similarity = similarity
        self._model = model
        self._prompts = prompts
        self._min = min_log_odds
        self._warned = False

    def log_odds(self, question: str, hits: list[Hit], language: Language) -> float:
        """How much more the model expects to reply yes than no to "do these passages contain the answer?"."""
        messages = self._prompts.judge(question, hits, language)
        return yes_over_no(self._model(), messages, self._prompts.templates(language).judge_words)

    def sufficient(self, question: str, hits: list[Hit], language: Language) -> bool:
        if not self._similarity.sufficient(question, hits, language):
            return False
        threshold = self._min.get(language)
        if threshold is None:  # a language the model check was not calibrated for
            return True
        if not self._model().reads_first_token_logprobs:  # declared up front, e.g. llama.cpp with llm.chat_format
            return True
        try:
            return self.log_odds(question, hits, language) >= threshold
        except LogprobsUnavailableError as exc:
            if not self._warned:
                log.warning("refusal.check model is unavailable, using similarity only: %s", exc)
                self._warned = True
            return True


def build_evidence_check(
    settings: RefusalSettings, model: Callable[[], ChatModel], prompts: PromptBuilder
) -> EvidenceCheck:
    similarity = SimilarityCheck(settings.min_dense_score)
    if settings.check == "similarity":
        return similarity
    return ModelCheck(similarity, model, prompts, settings.min_log_odds)
