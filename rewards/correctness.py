"""Answer-correctness rewards: exact match, VQAv2 soft accuracy, ANLS (DocVQA) and relaxed accuracy (ChartQA).

Each reads the answer from the completion (`<answer>...</answer>` by default, see `text.extract_answer`) and
compares it with the reference(s) in a dataset column, which may hold one answer or a list of accepted answers.
Rows without a reference score `None` (not applicable).
"""

from __future__ import annotations

import re
from typing import Any

from .base import Reward, as_references, completion_text, get_column, get_pruning_fact
from .registry import register
from .text import extract_answer, normalize_space, normalize_vqa

CORRECT_AT = 0.5  # a soft score at least this high counts as "correct" in the logged sub-scores


class AnswerReward(Reward):
    """Shared reading of completions and references; subclasses implement `score(prediction, references)`.

    Args:
        answer_column: dataset column with the reference answer(s).
        answer_tag: tag around the answer in the completion (`None`: the whole completion is the answer).
        require_tag: score 0 when the completion has no answer tag, instead of falling back to the whole text.
    """

    def __init__(self, answer_column: str = "answer", answer_tag: str | None = "answer", require_tag: bool = False):
        self.answer_column = answer_column
        self.answer_tag = answer_tag
        self.require_tag = require_tag

    def score(self, prediction: str, references: list[str]) -> float:
        raise NotImplementedError

    def score_batch(self, predictions: list[str | None], kwargs: dict[str, Any]) -> list[float | None]:
        """One score per prediction; `None` predictions (no tag under `require_tag`) score 0."""
        cells = get_column(kwargs, self.answer_column, self.__name__, len(predictions))
        scores: list[float | None] = []
        for prediction, cell in zip(predictions, cells, strict=True):
            references = as_references(cell)
            if references is None:
                scores.append(None)
            else:
                scores.append(0.0 if prediction is None else float(self.score(prediction, references)))
        return scores

    def __call__(self, completions: list, **kwargs: Any) -> list[float | None]:
        predictions = [
            extract_answer(completion_text(c), self.answer_tag, fallback=not self.require_tag) for c in completions
        ]
        scores = self.score_batch(predictions, kwargs)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and "prune_ratio" in kwargs:
            # Does pruning cost answers? Compare how much was pruned for right and for wrong answers.
            ratios = get_pruning_fact(kwargs, "prune_ratio", self.__name__, len(completions))
            pairs = [(s, r) for s, r in zip(scores, ratios, strict=True) if s is not None]
            self.log(log_metric, "prune_ratio_correct", [r for s, r in pairs if s >= CORRECT_AT])
            self.log(log_metric, "prune_ratio_wrong", [r for s, r in pairs if s < CORRECT_AT])
        return scores


@register("exact_match")
class ExactMatch(AnswerReward):
    """1 if the answer equals any reference after normalisation, else 0.

    Args:
        normalize: VQA normalisation (`text.normalize_vqa`) of both sides; False compares stripped text as is.
    """

    def __init__(
        self,
        answer_column: str = "answer",
        answer_tag: str | None = "answer",
        require_tag: bool = False,
        normalize: bool = True,
    ):
        super().__init__(answer_column, answer_tag, require_tag)
        self.normalize = normalize

    def _norm(self, text: str) -> str:
        return normalize_vqa(text) if self.normalize else text.strip()

    def score(self, prediction: str, references: list[str]) -> float:
        prediction = self._norm(prediction)
        return float(any(prediction == self._norm(ref) for ref in references))


@register("vqa_accuracy")
class VQAAccuracy(AnswerReward):
    """VQAv2 soft accuracy: min(#annotators who gave the answer / 3, 1), on normalised answers.

    With the usual 10 annotator answers it is averaged over the 10 leave-one-out subsets of 9, as in the official
    evaluation (so 3 matching annotators give 0.9, not 1). With fewer answers, n, the divisor is min(3, n): one
    reference is exact match.
    """

    def score(self, prediction: str, references: list[str]) -> float:
        prediction = normalize_vqa(prediction)
        matches = [normalize_vqa(ref) == prediction for ref in references]
        if len(matches) == 10:
            total = sum(matches)
            return sum(min((total - m) / 3, 1.0) for m in matches) / 10
        return min(sum(matches) / min(3, len(matches)), 1.0)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


@register("anls")
class ANLS(AnswerReward):
    """DocVQA's Average Normalised Levenshtein Similarity for one answer: the best over references of
    1 - NL, where NL = edit distance / length of the longer string; 0 when NL >= `threshold`.

    Args:
        threshold: normalised distance from which an answer scores 0 (0.5 in DocVQA).
    """

    def __init__(
        self,
        answer_column: str = "answer",
        answer_tag: str | None = "answer",
        require_tag: bool = False,
        threshold: float = 0.5,
    ):
        super().__init__(answer_column, answer_tag, require_tag)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"anls: threshold must be in (0, 1], got {threshold}.")
        self.threshold = threshold

    def score(self, prediction: str, references: list[str]) -> float:
        prediction = normalize_space(prediction)
        best = 0.0
        for ref in map(normalize_space, references):
            longest = max(len(prediction), len(ref))
            distance = levenshtein(prediction, ref) / longest if longest else 0.0
            best = max(best, 1.0 - distance if distance < self.threshold else 0.0)
        return best


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?")


def parse_number(text: str) -> tuple[float, bool] | None:
    """`(value, is_percent)` if `text` is a number such as `1,234.5`, `-3`, `$12` or `45%`, else `None`."""
    text = text.strip().rstrip(".").replace(",", "").replace(" ", "").lower()
    text = text.lstrip("$€£")
    is_percent = text.endswith("%")
    text = text.rstrip("%")
    if not _NUMBER.fullmatch(text):
        return None
    return float(text), is_percent


@register("relaxed_accuracy")
class RelaxedAccuracy(AnswerReward):
    """ChartQA's relaxed accuracy: a numeric answer within `tolerance` relative error of a numeric reference is
    correct, any other answer must match a reference exactly (case-insensitive). Best over references.

    `45%` matches both `45` and `0.45`: chart labels and annotators disagree about whether a percentage is written
    as a fraction.

    Args:
        tolerance: accepted relative error (0.05 in ChartQA).
    """

    def __init__(
        self,
        answer_column: str = "answer",
        answer_tag: str | None = "answer",
        require_tag: bool = False,
        tolerance: float = 0.05,
    ):
        super().__init__(answer_column, answer_tag, require_tag)
        if tolerance < 0:
            raise ValueError(f"relaxed_accuracy: tolerance must be >= 0, got {tolerance}.")
        self.tolerance = tolerance

    def _close(self, value: float, target: float) -> bool:
        return abs(value - target) <= self.tolerance * abs(target)

    def _matches(self, prediction: str, reference: str) -> bool:
        pred_num, ref_num = parse_number(prediction), parse_number(reference)
        if pred_num is None or ref_num is None:
            return prediction.strip().rstrip(".").lower() == reference.strip().rstrip(".").lower()
        (pred, pred_pct), (ref, ref_pct) = pred_num, ref_num
        candidates = [(pred, ref)]
        if pred_pct != ref_pct:  # one side has a percent sign: also try it as a fraction
            candidates.append((pred / 100, ref) if pred_pct else (pred, ref / 100))
        return any(self._close(p, r) for p, r in candidates)

    def score(self, prediction: str, references: list[str]) -> float:
        return float(any(self._matches(prediction, ref) for ref in references))
