"""Refusal: the yes/no reading of a model's first reply token, the judge prompt, and the evidence checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ingest.vector_store import StoredChunk
from kb_app.chat.prompt import PromptBuilder, _judge_words
from kb_app.chat.refusal import ModelCheck, SimilarityCheck, build_evidence_check
from kb_app.models.choices import choice_logprobs, first_token_ids, match_top_logprobs, mean_token_logprob
from kb_app.models.errors import LogprobsUnavailableError, ModelGenerationError
from kb_app.retrieval.base import Hit
from kb_app.settings import RefusalSettings, Settings


def _hit(text: str, dense: float | None = 0.9) -> Hit:
    return Hit(StoredChunk("id", text, "doc.txt", None, 0, len(text), 0.9), score=1.0, dense_score=dense)


def test_choice_logprobs_sum_each_groups_probability() -> None:
    logits = np.log(np.array([0.5, 0.2, 0.2, 0.1]))
    yes, no, empty = choice_logprobs(logits + 7.0, [[0, 3], [1], []])  # a shift changes nothing after softmax
    assert math.isclose(yes, math.log(0.6)) and math.isclose(no, math.log(0.2))
    assert empty == -math.inf


def test_mean_token_logprob_reads_each_tokens_row() -> None:
    logits = np.log(np.array([[0.5, 0.5, 1e-9], [0.25, 0.25, 0.5]]))
    assert math.isclose(mean_token_logprob(logits, [1, 2]), (math.log(0.5) + math.log(0.5)) / 2, rel_tol=1e-6)


def test_first_token_ids_are_distinct() -> None:
    vocab = {"yes": [5], "Yes": [6], " yes": [5, 1], "": []}
    assert first_token_ids(list(vocab), vocab.__getitem__) == [5, 6]


def test_server_top_logprobs_are_matched_by_spelling() -> None:
    top = [("Yes", math.log(0.5)), (" yes", math.log(0.25)), ("No", math.log(0.125))]
    yes, no, maybe = match_top_logprobs(top, [["yes", "Yes", " yes"], ["no", "No"], ["maybe"]])
    assert math.isclose(yes, math.log(0.75)) and math.isclose(no, math.log(0.125)) and maybe == -math.inf


def test_judge_words_add_the_leading_space_form() -> None:
    assert _judge_words("yes Yes\nno\n") == (("yes", "Yes", " yes", " Yes"), ("no", " no"))
    with pytest.raises(ValueError, match="two lines"):
        _judge_words("yes no")


def test_judge_prompt_shares_the_answer_prompts_beginning(settings: Settings) -> None:
    """A model with a prompt cache reads the passages once for the check and the answer."""
    builder = PromptBuilder(settings.prompts_dir)
    for language, question in (("zh", "年假有几天？"), ("en", "How many days?")):
        hits = [_hit("员工每年有十五天年假。"), _hit("Employees get 15 days.")]
        answer, _ = builder.build(question, hits, language)  # type: ignore[arg-type]
        judge = builder.judge(question, hits, language)  # type: ignore[arg-type]
        assert judge[0] == answer[0]
        prefix = answer[1]["content"].split(question)[0]
        assert judge[1]["content"].startswith(prefix + question)
        assert judge[1]["content"] != answer[1]["content"]


def test_similarity_check_uses_the_best_cosine_per_language() -> None:
    check = SimilarityCheck({"zh": 0.85, "en": 0.8})
    hits = [_hit("a", 0.7), _hit("b", 0.82)]
    assert check.sufficient("q", hits, "en") and not check.sufficient("q", hits, "zh")
    assert check.sufficient("q", [_hit("lexical only", None)], "zh")  # no cosine: a lexical match is evidence
    assert not check.sufficient("q", [], "en")


def test_build_evidence_check_follows_the_setting(settings: Settings) -> None:
    prompts = PromptBuilder(settings.prompts_dir)
    assert isinstance(build_evidence_check(RefusalSettings(check="similarity"), lambda: None, prompts), SimilarityCheck)  # type: ignore[arg-type,return-value]
    assert isinstance(build_evidence_check(RefusalSettings(), lambda: None, prompts), ModelCheck)  # type: ignore[arg-type,return-value]


class _Judge:
    """A model for the check's decision logic only: what it declares, and what reading its probabilities does."""

    scores_replies = False

    def __init__(self, reads: bool, error: Exception | None = None, log_odds: float = 0.0) -> None:
        self.reads_first_token_logprobs = reads
        self.error, self.log_odds, self.asked = error, log_odds, 0

    def reply_start_logprobs(self, messages, choices) -> list[float]:
        self.asked += 1
        if self.error is not None:
            raise self.error
        return [self.log_odds, 0.0]


def test_model_check_falls_back_only_where_the_model_says_or_the_server_turns_out_so(settings: Settings) -> None:
    prompts = PromptBuilder(settings.prompts_dir)
    hits = [_hit("Employees get 15 days.")]

    def check(model: _Judge) -> ModelCheck:
        return ModelCheck(SimilarityCheck({}), lambda: model, prompts, {"en": -1.0})  # type: ignore[arg-type,return-value]

    declared = _Judge(reads=False)
    assert check(declared).sufficient("How many days?", hits, "en") and declared.asked == 0  # never tried
    assert not check(_Judge(reads=True, log_odds=-5.0)).sufficient("How many days?", hits, "en")
    no_logprobs = _Judge(reads=True, error=LogprobsUnavailableError("no logprobs", "hint"))
    assert check(no_logprobs).sufficient("How many days?", hits, "en") and no_logprobs.asked == 1
    broken = _Judge(reads=True, error=ModelGenerationError("the prompt does not fit", "raise llm.n_ctx"))
    with pytest.raises(ModelGenerationError):  # a real failure is not hidden behind the similarity check
        check(broken).sufficient("How many days?", hits, "en")
