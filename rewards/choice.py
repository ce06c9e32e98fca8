"""Multiple-choice correctness: the completion picks an option by letter or by its text.

Options come from a dataset column holding a list (`["cat", "dog"]`, lettered A, B, ...) or a dict
(`{"A": "cat", "B": "dog"}`). The reference may be a letter (`"B"`), a 0-based index (`1`) or the option text
(`"dog"`). The completion's answer may be `B`, `(B)`, `B.`, `B) dog`, `B. dog`, `The answer is B` or `dog`; a
letter wins over text, so `B. cat` picks B.
"""

from __future__ import annotations

import re
import string
from typing import Any

from .base import get_column
from .correctness import AnswerReward
from .registry import register
from .text import normalize_vqa

_LETTER_FORMS = (
    re.compile(r"^\(?([A-Za-z])\)?[.:]?$"),  # the whole answer is a letter: "B", "(b)", "B."
    re.compile(r"^\(([A-Za-z])\)"),  # "(B) dog"
    re.compile(r"^([A-Z])[.:)](?:\s|$)"),  # "B. dog", "B) dog"; capitals only, so "a. ..." prose does not count
    re.compile(r"\b[Aa]nswer(?: is|:)\s*\(?([A-Z])\)?(?:[.:)\s]|$)"),  # "The answer is (B)."
)


def as_options(cell: Any) -> dict[str, str]:
    """An options cell as `{letter: text}`: a list is lettered A, B, ...; a dict keeps its (upper-cased) keys."""
    if cell is None:
        return {}
    if isinstance(cell, dict):
        return {str(k).strip().upper(): str(v) for k, v in cell.items()}
    if isinstance(cell, str):
        raise ValueError(f"multiple_choice: options must be a list or a dict, got the string {cell!r}.")
    return {string.ascii_uppercase[i]: str(text) for i, text in enumerate(cell)}


def letter_of(answer: str, options: dict[str, str]) -> str | None:
    """The option letter an answer picks, or `None`; with no options any single letter counts."""
    answer = answer.strip()
    for form in _LETTER_FORMS:
        match = form.search(answer)
        if match:
            letter = match.group(1).upper()
            if not options or letter in options:
                return letter
    wanted = normalize_vqa(answer)
    picked = [letter for letter, text in options.items() if normalize_vqa(text) == wanted]
    return picked[0] if len(picked) == 1 else None


@register("multiple_choice")
class MultipleChoice(AnswerReward):
    """1 if the completion picks the reference option, else 0.

    Args:
        options_column: dataset column with the options; `None` when references and answers are letters only.
    """

    def __init__(
        self,
        answer_column: str = "answer",
        options_column: str | None = "options",
        answer_tag: str | None = "answer",
        require_tag: bool = False,
    ):
        super().__init__(answer_column, answer_tag, require_tag)
        self.options_column = options_column

    def _reference_letters(self, cell: Any, options: dict[str, str]) -> set[str]:
        cells = cell if isinstance(cell, (list, tuple)) else [cell]
        letters = set()
        for ref in cells:
            if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(options):
                letters.add(list(options)[ref])  # an index into the options
            elif ref is not None:
                letter = letter_of(str(ref), options)
                if letter is not None:
                    letters.add(letter)
        return letters

    def score_batch(self, predictions: list[str | None], kwargs: dict[str, Any]) -> list[float | None]:
        size = len(predictions)
        cells = get_column(kwargs, self.answer_column, self.__name__, size)
        option_cells = get_column(kwargs, self.options_column, self.__name__, size) if self.options_column else None
        scores: list[float | None] = []
        for i, (prediction, cell) in enumerate(zip(predictions, cells, strict=True)):
            options = as_options(option_cells[i]) if option_cells is not None else {}
            references = self._reference_letters(cell, options)
            if not references:
                if cell is not None and cell != []:
                    raise ValueError(
                        f"multiple_choice: reference {cell!r} is neither an option letter, an index nor the text of "
                        f"one of the options {options} (column '{self.answer_column}')."
                    )
                scores.append(None)
                continue
            picked = None if prediction is None else letter_of(prediction, options)
            scores.append(float(picked in references))
        return scores
