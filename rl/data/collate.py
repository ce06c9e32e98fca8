"""Batching VQA samples for the glimpse: left-padded prompts, right-padded answers, one shared prompt boundary.

TRL's VLM collator flushes padding left, which moves each sample's prompt end to a different column; the pruned
forward needs the prompt to end at the same column for every sample (`glimpse_prompt_length`), exactly the layout
TRL's GRPOTrainer uses for prompt + completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class GlimpseCollator:
    """Turn conversational samples (`prompt`, `images`, `answer`, optional `boxes`) into a training batch.

    Output: the processor's tensors, those per token ([batch, prompt]: input_ids, attention_mask, token types)
    extended over the answer to [batch, prompt + answer]; labels [batch, prompt + answer] (-100 outside the answer);
    `model_input_names` (the processor's keys: what the model takes, see `model_inputs`); `prompt_length` (int); and
    per sample the image sizes and boxes (pixels of the original image) for the box loss.
    """

    processor: Any
    max_answer_tokens: int = 32

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        tokenizer = self.processor.tokenizer
        prompts = [
            self.processor.apply_chat_template(example["prompt"], add_generation_prompt=True) for example in examples
        ]
        images = [image for example in examples for image in example["images"]]
        batch = self.processor(text=prompts, images=images, return_tensors="pt", padding=True, padding_side="left")
        answers = [_first_answer(example) + _end_of_turn(tokenizer) for example in examples]
        # Cut the answers here, not with the tokenizer's truncation: a fast tokenizer keeps truncation settings in
        # its backend after a call, and a processor saved later would then cut every prompt to the answer length.
        ids = [row[: self.max_answer_tokens] for row in tokenizer(answers, add_special_tokens=False)["input_ids"]]
        width = max(len(row) for row in ids)
        pad = tokenizer.pad_token_id
        answer_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], dtype=torch.long)
        answer_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], dtype=torch.long)
        prompt_length = batch["input_ids"].shape[1]
        labels = answer_ids.masked_fill(answer_mask == 0, -100)
        out = dict(batch)
        extension = {"input_ids": answer_ids, "attention_mask": answer_mask}
        for key in per_token_keys(batch, batch["input_ids"].shape):
            # Other per-token inputs are token types: the answer is text (type 0), as TRL extends completions.
            tail = extension.get(key, torch.zeros_like(answer_ids))
            out[key] = torch.cat([batch[key].to(tail.dtype), tail], dim=1)
        out["labels"] = torch.cat([torch.full_like(batch["input_ids"], -100), labels], dim=1)
        out["model_input_names"] = tuple(batch.keys())
        out["prompt_length"] = prompt_length
        out["image_sizes"] = [[image.size for image in example["images"]] for example in examples]
        out["boxes"] = [list(example.get("boxes") or []) for example in examples]
        return out


def per_token_keys(inputs: dict[str, Any], shape: torch.Size) -> list[str]:
    """Keys of the tensors laid out per token like input_ids ([batch, seq] of the given shape)."""
    return [key for key, value in inputs.items() if isinstance(value, torch.Tensor) and value.shape == shape]


def model_inputs(batch: dict[str, Any], prompt_only: bool = False) -> dict[str, Any]:
    """What the model takes from a collated batch (the processor's tensors, not the labels or the box fields);
    `prompt_only` cuts the per-token ones back to the prompt."""
    inputs = {key: batch[key] for key in batch["model_input_names"]}
    if prompt_only:
        prompt = batch["prompt_length"]
        for key in per_token_keys(inputs, inputs["input_ids"].shape):
            inputs[key] = inputs[key][:, :prompt]
    return inputs


def _first_answer(example: dict[str, Any]) -> str:
    answer = example.get("answer")
    if isinstance(answer, (list, tuple)):
        answer = answer[0] if answer else ""
    if not answer:
        raise ValueError(f"Sample {example.get('source_row', '?')} has no answer to distil on.")
    return str(answer)


def _end_of_turn(tokenizer) -> str:
    # The answer ends the assistant turn the way generation would (Qwen: <|im_end|>), so the stop is distilled too.
    return tokenizer.eos_token or ""
