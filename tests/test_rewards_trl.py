"""Contract test: glimpserl's rewards called by TRL's own `GRPOTrainer._calculate_rewards`.

A stand-in trainer holds only the attributes that method reads, so the test checks the exact keyword arguments TRL
passes (dataset columns and the pruning facts as per-row lists, `log_metric`, ...) without building a model.
"""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch

pytest.importorskip("trl")
from accelerate import Accelerator  # noqa: E402
from trl import GRPOTrainer  # noqa: E402
from trl.trainer.utils import get_callable_name  # noqa: E402

from glimpserl.rewards import build_rewards  # noqa: E402


def stand_in_trainer(funcs):
    metrics = defaultdict(list)
    return types.SimpleNamespace(
        accelerator=Accelerator(cpu=True),
        args=types.SimpleNamespace(report_to=[]),
        state=types.SimpleNamespace(global_step=0),
        environments=None,
        reward_funcs=funcs,
        reward_processing_classes=[None] * len(funcs),
        reward_func_names=[get_callable_name(f) for f in funcs],
        _pending_metrics=metrics,
        _log_metric=lambda name, value: metrics[name].append(value),
        _log_completion_extra=lambda column, values: None,
    )


@pytest.mark.parametrize("conversational", [False, True])
def test_trl_calculate_rewards(conversational):
    funcs, _ = build_rewards(
        [
            "exact_match",
            {"name": "gated_prune_ratio", "gate": "vqa_accuracy"},
            "format",
            {"name": "length", "max_length": 4},
        ]
    )
    trainer = stand_in_trainer(funcs)
    texts = ["<think>x</think><answer>Cat</answer>", "<answer>dog</answer>"]
    if conversational:
        prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]] * 2
        completions = [[{"role": "assistant", "content": t}] for t in texts]
    else:
        prompts, completions = ["What?"] * 2, texts
    facts = [
        {"prune_ratio": 0.5, "kept_tokens": 3, "visual_tokens": 6},
        {"prune_ratio": 0.7, "kept_tokens": 2, "visual_tokens": 6},
    ]
    inputs = [{"prompt": p, "answer": "cat", **f} for p, f in zip(prompts, facts, strict=True)]

    rewards = GRPOTrainer._calculate_rewards(trainer, inputs, prompts, completions, [[1] * 3, [1] * 8])

    assert trainer.reward_func_names == ["exact_match", "gated_prune_ratio", "format", "length"]
    assert torch.equal(rewards, torch.tensor([[1.0, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, -1.0]]))
    assert trainer._pending_metrics["rewards/exact_match/prune_ratio_correct"] == [0.5]
    assert trainer._pending_metrics["rewards/gated_prune_ratio/gate_open"] == [0.5]
