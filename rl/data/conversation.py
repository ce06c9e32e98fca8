"""Canonical rows -> the conversational samples TRL's trainers take for a VLM, and the check that a prompt's
length limit never cuts through image tokens."""

from __future__ import annotations

from typing import Any, Literal

import datasets
from PIL import Image

from .settings import DataConfig


def load_rgb(path: str, row: Any = None) -> Image.Image:
    """The image at `path` as RGB. EXIF rotation is NOT applied: boxes are in the stored pixel grid."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:  # a file that changed since load_vqa validated it
        raise ValueError(f"row {row}: cannot read image {path} ({type(err).__name__}: {err}).") from err


def to_conversation(row: dict[str, Any], config: DataConfig) -> dict[str, Any]:
    """One canonical row -> the conversational sample TRL's GRPOTrainer/SFTTrainer take for a VLM.

    `prompt` holds one {"type": "image"} placeholder per image, before the question (after it with
    `image_position: after`); TRL fills them from `images`.
    Every other column (answer, boxes, question, source_row, extras) passes through for rewards and losses.
    """
    images = [load_rgb(path, row.get("source_row")) for path in row["image"]]
    placeholders = [{"type": "image"} for _ in images]
    text = [{"type": "text", "text": config.question_text(row["question"])}]
    user = placeholders + text if config.images_first else text + placeholders
    prompt = [{"role": "user", "content": user}]
    if config.system_prompt:
        prompt.insert(0, {"role": "system", "content": [{"type": "text", "text": config.system_prompt}]})
    passthrough = {key: value for key, value in row.items() if key != "image"}
    return {**passthrough, "prompt": prompt, "images": images}


def conversation_dataset(dataset: datasets.Dataset, config: DataConfig) -> datasets.Dataset:
    """`dataset` with `to_conversation` applied lazily on access (images are decoded only when a batch needs them)."""

    def transform(batch: dict[str, list]) -> dict[str, list]:
        size = len(next(iter(batch.values())))
        samples = [to_conversation({key: values[i] for key, values in batch.items()}, config) for i in range(size)]
        return {key: [sample[key] for sample in samples] for key in samples[0]}

    return dataset.with_transform(transform)


def check_prompt_fits(
    processor: Any,
    conversation: list[dict] | dict[str, Any],
    images: list[Image.Image] | None,
    max_length: int,
    row: Any = None,
    truncation_side: Literal["left", "right"] | None = None,
) -> int:
    """Raise if cutting the tokenized prompt to `max_length` would cut through image tokens; return its length.

    `conversation` is a `to_conversation` sample or its `prompt`; it is tokenized exactly as TRL does (chat template,
    generation prompt, images expanded to their visual tokens). The side cut is the tokenizer's truncation_side
    unless given. A prompt that only loses text is allowed: that is a choice, a broken image is a bug.
    """
    from trl.data_utils import prepare_multimodal_messages

    if isinstance(conversation, dict):
        images = conversation.get("images") if images is None else images
        row = conversation.get("source_row") if row is None else row
        conversation = conversation["prompt"]
    messages = prepare_multimodal_messages(conversation, images=list(images or []))
    encoded = processor.apply_chat_template(
        conversation=[messages], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    ids = [int(i) for i in encoded["input_ids"][0]]
    image_id = image_token_id(processor)
    total = ids.count(image_id)
    if len(ids) <= max_length:
        return len(ids)
    side = truncation_side or getattr(processor.tokenizer, "truncation_side", "right")
    kept = (ids[-max_length:] if side == "left" else ids[:max_length]).count(image_id)
    if kept != total:
        raise ValueError(
            f"row {row}: the prompt is {len(ids)} tokens, {total} of them image tokens; cutting it to "
            f"max_length={max_length} ({side} truncation) keeps {kept} image tokens and breaks the image. Raise "
            f"max_length to at least {len(ids)}, or lower max_pixels so each image gives fewer tokens."
        )
    return len(ids)


def image_token_id(processor: Any) -> int:
    from ...models import processor_adapter

    try:
        token_id = processor_adapter(processor).image_token_id(processor)
    except (ValueError, AttributeError, TypeError):
        token_id = None
    if token_id is None or token_id == getattr(getattr(processor, "tokenizer", None), "unk_token_id", object()):
        raise ValueError(f"{type(processor).__name__} has no image token; check_prompt_fits needs a VLM processor.")
    return int(token_id)
