"""Shared test inputs: images and chat prompts through the real processor."""

from __future__ import annotations

import torch
from PIL import Image


def image(width: int, height: int, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def prompt(processor, question: str, n_images: int = 1) -> str:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def batch(processor, questions: list[str], images: list[list[Image.Image]]) -> dict:
    texts = [prompt(processor, q, len(imgs)) for q, imgs in zip(questions, images)]
    flat = [img for imgs in images for img in imgs]
    return dict(processor(text=texts, images=flat, return_tensors="pt", padding=True))


def assert_keep_all_matches_vanilla(model, inputs: dict, **config) -> None:
    """A glimpse that keeps every token (threshold 0) leaves `model` exactly as it was: last-token logits within
    1e-4 and the same greedy tokens, on a batch of two samples. `config`: further GlimpseConfig fields (e.g. layer)."""
    from glimpserl.models import GlimpseConfig, add_glimpse

    with torch.no_grad():
        ref = model(**inputs).logits[:, -1]
        ref_gen = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    add_glimpse(model, GlimpseConfig(threshold=0.0, **config))
    with torch.no_grad():
        out = model(**inputs)
        gen = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.glimpse.keep_ratio.tolist() == [1.0] * len(out.glimpse.keep_ratio)
    assert (out.logits[:, -1] - ref).abs().max() <= 1e-4
    assert torch.equal(gen, ref_gen)


def assert_hard_mask_equals_removal(model, inputs: dict) -> None:
    """Masked mode with the pruned pass's own hard decision gives the pruned pass's logits at every kept column
    (within 1e-4): an additive -inf on dropped keys equals removing them."""
    with torch.no_grad():
        pruned = model(**inputs)
        masked = model(**inputs, glimpse_mode="mask")
    index = pruned.glimpse.kept_index
    valid = pruned.glimpse.keep_mask.gather(1, index)
    assert torch.equal(masked.glimpse.keep_mask, pruned.glimpse.keep_mask | ~inputs["attention_mask"].bool())
    gathered = masked.logits.gather(1, index[..., None].expand(-1, -1, masked.logits.shape[-1]))
    assert (gathered - pruned.logits)[valid].abs().max() <= 1e-4


def snapshot(model) -> dict:
    """Every parameter's value now, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(model, before: dict) -> set[str]:
    """Names of the parameters that differ from `before` (a `snapshot`)."""
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def tiny_recipe(source, dest, data_dir, max_pixels: int = 112 * 112):
    """A copy of a shipped tiny recipe pointed at a small synthetic set (train.jsonl / test.jsonl in data_dir)."""
    from pathlib import Path

    text = (
        Path(source)
        .read_text()
        .replace("eval_dataset: builtin:synth", f"eval_dataset: {Path(data_dir) / 'test.jsonl'}")
        .replace("\ndataset: builtin:synth", f"\ndataset: {Path(data_dir) / 'train.jsonl'}")
        .replace("max_pixels: 200704", f"max_pixels: {max_pixels}")
    )
    Path(dest).write_text(text)
    return Path(dest)


def cpu_sdpa_flops(q, k, v, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs):
    """FlopCounterMode formula for aten's CPU flash attention (it has none), skipping the masked half when causal
    as the kernel does: 4 * batch * heads * pairs * head_dim."""
    batch, heads, queries, dim = q
    pairs = queries * (queries + 1) // 2 if is_causal and queries == k[2] else queries * k[2]
    return 4 * batch * heads * pairs * dim


def mv_flops(matrix, vector, *args, out_shape=None, **kwargs):
    """FlopCounterMode formula for a matrix-vector product (it has none): 2 * rows * cols."""
    return 2 * matrix[0] * matrix[1]


def assert_shared_teacher_matches_vanilla(model, inputs: dict, completion_tokens: int = 3) -> None:
    """The stage-1 teacher computed inside the masked student forward (glimpse_teacher=True) gives the vanilla model's
    logits at every real column of a prompt + completion batch (within 1e-4), carries no gradient, and leaves the
    student's own logits exactly as they are without it."""
    prompt = inputs["input_ids"].shape[1]
    completion = inputs["input_ids"][:, -completion_tokens:]  # text tokens, as a training completion is
    full = dict(inputs, input_ids=torch.cat([inputs["input_ids"], completion], dim=1))
    full["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(completion)], dim=1)
    if "mm_token_type_ids" in inputs:
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(completion)], dim=1)
    soft = lambda logits, visual: torch.nn.functional.logsigmoid(logits - 0.5)  # noqa: E731
    with torch.no_grad():
        vanilla = model(**full, glimpse_mode="off").logits
    student = dict(glimpse_mode="mask", glimpse_mask_fn=soft, glimpse_prompt_length=prompt)
    out = model(**full, **student, glimpse_teacher=True)
    alone = model(**full, **student)
    real = full["attention_mask"].bool()
    assert out.teacher_logits is not None and not out.teacher_logits.requires_grad
    assert out.logits.requires_grad and alone.teacher_logits is None
    assert (out.teacher_logits - vanilla)[real].abs().max() <= 1e-4
    assert torch.equal(out.logits, alone.logits)
    assert (out.logits - vanilla)[real].abs().max() > 1e-3  # the student really is pruned: the two differ
