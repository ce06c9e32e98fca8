"""Answer extraction and normalisation shared by the correctness rewards.

`normalize_vqa` follows the VQAv2 evaluation's answer processing: lowercase; a comma between digits is dropped
(`1,000` -> `1000`); other punctuation is deleted or turned into a space; a period is kept only inside a number
(`3.5`); number words become digits; articles are dropped; apostrophe-less contractions get their apostrophe back
(`dont` -> `don't`). Predictions and references go through the same function, so both sides agree on every rule.
"""

from __future__ import annotations

import re

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_PUNCTUATION = tuple(";/[]\"{}()=+\\_-><@`,?!:*'")  # the VQA evaluation's marks, plus ": * '"
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),(?=\d)")
_PERIOD_NOT_IN_NUMBER = re.compile(r"(?<!\d)\.|\.(?!\d)")
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
    "twenty": "20",
}  # fmt: skip
# Only contractions whose apostrophe-less form is not itself a word ("shed", "wed", "lets", "hell" are left alone).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hes": "he's", "im": "i'm", "ive": "i've", "isnt": "isn't", "itll": "it'll",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "oclock": "o'clock",
    "shant": "shan't", "shes": "she's", "shouldnt": "shouldn't", "shouldve": "should've", "thats": "that's",
    "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "wasnt": "wasn't", "werent": "weren't", "weve": "we've", "whats": "what's", "wheres": "where's",
    "whos": "who's", "wont": "won't", "wouldnt": "wouldn't", "wouldve": "would've", "yall": "y'all",
    "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip


def extract_answer(text: str, tag: str | None = "answer", fallback: bool = True) -> str | None:
    """The answer inside the last `<tag>...</tag>` of `text`, stripped.

    A completion cut off after `<tag>` (no closing tag) answers with everything after the last opening tag. Without
    any tag the whole text is the answer, minus `<think>...</think>` blocks, unless `fallback` is False (then
    `None`). `tag=None` skips extraction.
    """
    if tag is None:
        return text.strip()
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    start = text.rfind(open_tag)
    if start >= 0:
        body = text[start + len(open_tag) :]
        end = body.find(close_tag)
        return (body if end < 0 else body[:end]).strip()
    if not fallback:
        return None
    return _THINK_BLOCK.sub(" ", text).strip()


def _strip_punctuation(text: str) -> str:
    text = _DIGIT_COMMA_DIGIT.sub("", text)
    for mark in _PUNCTUATION:
        if mark not in text:
            continue
        # As in the VQA evaluation: a mark next to a space ("yes , it") is noise, a mark inside a word ("t-shirt")
        # separates words. The apostrophe is kept inside words so that "don't" stays one token.
        if mark == "'":
            text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
        elif f"{mark} " in text or f" {mark}" in text:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    return _PERIOD_NOT_IN_NUMBER.sub("", text)


def normalize_vqa(text: str) -> str:
    """VQAv2-style normalisation of an answer (see the module docstring)."""
    text = _strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip().lower())
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_space(text: str) -> str:
    """Lowercase with whitespace collapsed: the normalisation of DocVQA's ANLS."""
    return " ".join(text.lower().split())
