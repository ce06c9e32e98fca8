"""Exact-value tests for the rewards: hand-computed tables, TRL's call shapes, registry errors."""

from __future__ import annotations

import pickle

import pytest

from glimpserl.rewards import available_rewards, build_reward, build_rewards, register
from glimpserl.rewards.base import completion_text
from glimpserl.rewards.correctness import levenshtein
from glimpserl.rewards.registry import _REGISTRY
from glimpserl.rewards.text import extract_answer, normalize_vqa


def conversational(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def call(reward, preds: list[str], conv: bool = False, metrics: dict | None = None, **columns):
    """Call `reward` the way TRL's `_calculate_rewards` does, with `<answer>`-tagged completions."""
    texts = [f"<think>...</think><answer>{p}</answer>" for p in preds]
    completions = [conversational(t) for t in texts] if conv else texts
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]] * len(texts)
    return reward(
        prompts=prompts,
        completions=completions,
        completion_ids=[[0] * len(t) for t in texts],
        trainer_state=None,
        log_metric=(lambda k, v: metrics.__setitem__(k, v)) if metrics is not None else None,
        log_extra=lambda column, values: None,
        **columns,
    )


# ---- text helpers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Cat.", "cat"),
        ("two", "2"),
        ("dont", "don't"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("yes, it is", "yes it is"),
        ("t-shirt", "t shirt"),
        ("**Red**", "red"),
        ("an apple!", "apple"),
    ],
)
def test_normalize_vqa(text, expected):
    assert normalize_vqa(text) == expected


def test_extract_answer():
    assert extract_answer("<answer>a</answer> then <answer> b </answer>") == "b"  # last match, stripped
    assert extract_answer("<think>x</think> cat") == "cat"  # no tag: whole text minus reasoning
    assert extract_answer("<answer>cut off") == "cut off"  # truncated completion
    assert extract_answer("cat", fallback=False) is None
    assert extract_answer("[[dog]]", tag=None) == "[[dog]]"
    assert extract_answer("<final>7</final>", tag="final") == "7"


def test_completion_text_shapes():
    assert completion_text("plain") == "plain"
    assert completion_text(conversational("hi")) == "hi"
    blocks = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}]
    assert completion_text(blocks) == "a"
    tool_turns = [
        {"role": "assistant", "content": None, "tool_calls": [{}]},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "<answer>42</answer>"},
    ]
    assert completion_text(tool_turns) == "<answer>42</answer>"


# ---- correctness --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", [False, True])
def test_exact_match(conv):
    preds = ["The Cat.", "two", "dont", "cats", "yeah", "x"]
    answers = ["cat", "2", "don't", "cat", ["yes", "yeah"], None]
    assert call(build_reward("exact_match"), preds, conv, answer=answers) == [1.0, 1.0, 1.0, 0.0, 1.0, None]


def test_exact_match_without_normalisation_and_required_tag():
    reward = build_reward("exact_match", normalize=False, require_tag=True)
    assert call(reward, ["cat", "Cat"], answer=["cat", "cat"]) == [1.0, 0.0]
    assert reward(completions=["cat"], answer=["cat"]) == [0.0]  # no <answer> tag


TEN = ["cat"] * 3 + ["dog"] * 7


@pytest.mark.parametrize(
    "pred, answers, expected",
    [
        ("dog", TEN, 1.0),  # >= 6 dogs in every 9-subset
        ("cat", TEN, 0.9),  # leave a cat out (3x): 2/3; leave a dog out (7x): 1 -> (2 + 7) / 10
        ("cat", ["cat"] * 2 + ["dog"] * 8, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10
        ("Cat", ["cat"] + ["dog"] * 9, 0.3),  # (1 * 0 + 9 * 1/3) / 10
        ("bird", TEN, 0.0),
        ("2", ["two"] * 10, 1.0),  # normalised on both sides
        ("cat", "cat", 1.0),  # a single answer is exact match
        ("cat", ["cat", "dog", "cat"], 2 / 3),  # n < 10: min(matches / min(3, n), 1)
    ],
)
def test_vqa_accuracy(pred, answers, expected):
    assert call(build_reward("vqa_accuracy"), [pred], answer=[answers]) == [pytest.approx(expected)]


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("flaw", "lawn") == 2


@pytest.mark.parametrize(
    "pred, answers, expected",
    [
        ("Hello", "hello", 1.0),  # case and spaces do not count
        ("helo", "hello", 0.8),  # distance 1 / 5
        ("kitten", "sitting", 1 - 3 / 7),  # distance 3 / 7 < 0.5
        ("ab", "ac", 0.0),  # distance 1 / 2 = 0.5: at the threshold scores 0
        ("abc", "xyz", 0.0),
        ("help", ["hello", "help"], 1.0),  # best reference
    ],
)
def test_anls(pred, answers, expected):
    assert call(build_reward("anls"), [pred], answer=[answers]) == [pytest.approx(expected)]


@pytest.mark.parametrize(
    "pred, answer, expected",
    [
        ("10.4", "10", 1.0),  # 4 % off
        ("10.6", "10", 0.0),  # 6 % off
        ("1,050", "1000", 1.0),  # 5 % off, comma stripped
        ("45%", "45", 1.0),
        ("45%", "0.45", 1.0),  # percent as a fraction
        ("0.45", "45", 0.0),
        ("$12", "12.0", 1.0),
        ("0", "0", 1.0),
        ("Yes", "yes", 1.0),  # not numeric: case-insensitive exact match
        ("no", "yes", 0.0),
        ("7", ["x", "7.2"], 1.0),  # best reference
    ],
)
def test_relaxed_accuracy(pred, answer, expected):
    assert call(build_reward("relaxed_accuracy"), [pred], answer=[answer]) == [expected]


@pytest.mark.parametrize(
    "pred, answer, expected",
    [
        ("B", "B", 1.0),
        ("(B)", "B", 1.0),
        ("b", "B", 1.0),
        ("B. dog", "B", 1.0),
        ("B) dog", "B", 1.0),
        ("The answer is B.", "B", 1.0),
        ("dog", "B", 1.0),  # option text
        ("Dog.", "B", 1.0),
        ("B. cat", "B", 1.0),  # the letter wins
        ("A", "B", 0.0),
        ("cat", "B", 0.0),
        ("E", "E", None),  # not an option -> the reference is invalid (checked below)
        ("B", "dog", 1.0),  # reference given as option text
        ("B", 1, 1.0),  # reference given as 0-based index
        ("a dog", "B", 1.0),  # article dropped, not read as letter A
    ],
)
def test_multiple_choice(pred, answer, expected):
    reward = build_reward("multiple_choice", options_column="choices")
    if expected is None:
        with pytest.raises(ValueError, match="neither an option letter"):
            call(reward, [pred], answer=[answer], choices=[["cat", "dog", "bird"]])
        return
    assert call(reward, [pred], answer=[answer], choices=[["cat", "dog", "bird"]]) == [expected]


def test_multiple_choice_dict_options_and_letters_only():
    reward = build_reward("multiple_choice")
    assert call(reward, ["C", "bird"], answer=["C", "C"], options=[{"A": "cat", "C": "bird"}] * 2) == [1.0, 1.0]
    letters_only = build_reward("multiple_choice", options_column=None)
    assert call(letters_only, ["(d)", "A"], True, answer=["D", "B"]) == [1.0, 0.0]


def test_missing_answer_column_names_it():
    with pytest.raises(ValueError, match=r"column 'answers'.*\['answer'\]"):
        call(build_reward("vqa_accuracy", answer_column="answers"), ["x"], answer=["x"])
    with pytest.raises(ValueError, match="column 'options'"):
        call(build_reward("multiple_choice"), ["A"], answer=["A"])


# ---- efficiency ---------------------------------------------------------------------------------------------------


def test_prune_ratio_and_token_budget():
    facts = {"prune_ratio": [0.25, 0.9, 0.5, 0.0, 0.1], "kept_tokens": [50, 100, 150, 200, 300]}
    assert call(build_reward("prune_ratio"), ["a"] * 5, **facts) == [0.25, 0.9, 0.5, 0.0, 0.1]
    assert call(build_reward("prune_ratio", scale=2.0), ["a"] * 5, **facts) == [0.5, 1.8, 1.0, 0.0, 0.2]
    assert call(build_reward("token_budget", budget=100), ["a"] * 5, **facts) == [1.0, 1.0, 0.5, 0.0, 0.0]


def test_gated_prune_ratio_pays_only_correct_answers():
    metrics = {}
    reward = build_reward("gated_prune_ratio", gate={"name": "vqa_accuracy", "answer_column": "answers"}, scale=0.5)
    scores = call(
        reward,
        ["cat", "dog", "cat", "cat"],
        True,
        metrics,
        answers=[TEN, "cat", ["cat"] + ["dog"] * 9, None],  # gate scores 0.9, 0, 0.3, None
        prune_ratio=[0.8, 0.9, 0.6, 0.5],
    )
    assert scores == [pytest.approx(0.4), 0.0, 0.0, None]
    assert metrics == {
        "rewards/gated_prune_ratio/gate_open": 1 / 3,
        "rewards/gated_prune_ratio/prune_ratio_gated": 0.8,
    }
    strict = build_reward("gated_prune_ratio", gate="exact_match", threshold=1.0)
    assert call(strict, ["cat", "dog"], answer=["cat", "cat"], prune_ratio=[0.7, 0.9]) == [0.7, 0.0]


def test_missing_pruning_facts_say_the_trainer_must_pass_them():
    for name, params in [("prune_ratio", {}), ("token_budget", {"budget": 8}), ("gated_prune_ratio", {})]:
        with pytest.raises(ValueError, match="trainer must pass"):
            call(build_reward(name, **params), ["cat"], answer=["cat"])


def test_correctness_logs_prune_ratio_of_right_and_wrong_answers():
    metrics = {}
    call(
        build_reward("exact_match"),
        ["cat", "dog", "cat"],
        False,
        metrics,
        answer=["cat"] * 3,
        prune_ratio=[0.2, 0.6, 0.4],
    )
    assert metrics == {
        "rewards/exact_match/prune_ratio_correct": pytest.approx(0.3),
        "rewards/exact_match/prune_ratio_wrong": pytest.approx(0.6),
    }


# ---- format -------------------------------------------------------------------------------------------------------


def test_format_and_length():
    fmt = build_reward("format")
    texts = [
        "<think>a\nb</think>\n<answer>c</answer>",
        "<answer>c</answer>",
        "<think>a</think><answer>c</answer> extra",
    ]
    assert fmt(completions=texts) == [1.0, 0.0, 0.0]
    assert fmt(completions=[conversational(t) for t in texts]) == [1.0, 0.0, 0.0]
    answer_only = build_reward("format", pattern=r"^\s*<answer>.*?</answer>\s*$")
    assert answer_only(completions=texts) == [0.0, 1.0, 0.0]
    length = build_reward("length", max_length=10)
    assert length(completions=["x"] * 4, completion_ids=[[0] * 5, [0] * 10, [0] * 15, [0] * 40]) == [
        0.0,
        0.0,
        -0.5,
        -1.0,
    ]
    chars = build_reward("length", max_length=4, unit="chars")
    assert chars(completions=["abcd", conversational("abcdef")]) == [0.0, -0.5]


# ---- registry -----------------------------------------------------------------------------------------------------


def test_registry_errors():
    with pytest.raises(ValueError, match="already registered"):
        register("exact_match")(lambda: None)
    with pytest.raises(ValueError, match=r"Unknown reward 'exact_mtch'.*'exact_match'.*'vqa_accuracy'"):
        build_reward("exact_mtch")
    with pytest.raises(
        ValueError, match=r"'exact_match' has no parameter 'answer_col'.*Valid parameters.*'answer_column'"
    ):
        build_reward("exact_match", answer_col="a")
    with pytest.raises(ValueError, match=r"'token_budget' needs parameter 'budget'"):
        build_rewards([{"name": "token_budget"}])
    with pytest.raises(ValueError, match="has no parameter 'typo'"):
        build_reward("gated_prune_ratio", gate={"name": "anls", "typo": 1})  # the gate's params are checked too
    with pytest.raises(ValueError, match="weight must be a number"):
        build_rewards([{"name": "format", "weight": "high"}])
    with pytest.raises(ValueError, match="budget must be a positive"):
        build_reward("token_budget", budget=0)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        build_reward("format", pattern="(")


def test_build_rewards_names_weights_and_pickling():
    assert {"exact_match", "vqa_accuracy", "anls", "relaxed_accuracy", "multiple_choice", "llm_judge"} <= set(
        available_rewards()
    )
    funcs, weights = build_rewards(
        ["exact_match", {"name": "exact_match", "weight": 0.5, "answer_column": "b"}, "format"]
    )
    assert [f.__name__ for f in funcs] == ["exact_match", "exact_match_2", "format"]
    assert weights == [1.0, 0.5, 1.0]
    clone = pickle.loads(pickle.dumps(funcs[1]))  # TRL's async rollout workers pickle reward functions
    assert clone.__name__ == "exact_match_2" and clone(completions=["x"], b=["x"]) == [1.0]


def test_register_a_custom_function_factory():
    @register("test_constant")
    def constant(value: float = 1.0):
        def reward(completions, **kwargs):
            return [value] * len(completions)

        return reward

    try:
        reward = build_reward("test_constant", value=0.25)
        assert reward.__name__ == "test_constant" and reward(completions=["a", "b"]) == [0.25, 0.25]
    finally:
        _REGISTRY.pop("test_constant")
