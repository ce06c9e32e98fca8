"""The real Qwen2.5 tokenizer and chat template through the real processor: image in, pruned generation out."""

import torch
from helpers import batch, image

from glimpserl.models import GlimpseConfig, add_glimpse
from glimpserl.models.tiny import build_real_qwen_processor, build_tiny_model


def test_real_qwen_processor_pruned_generation():
    processor = build_real_qwen_processor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    tokenizer = processor.tokenizer
    model = build_tiny_model("qwen2_5_vl", vocab_size=len(tokenizer), tokenizer=processor).eval()
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    add_glimpse(model, GlimpseConfig(max_keep_ratio=0.25))
    inputs = batch(processor, ["What is written on the sign?"], [[image(224, 168, 7)]])
    text = tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    result = out.cache.glimpse_state.result
    visual = int(result.num_visual[0])
    assert visual == int(inputs["image_grid_thw"].prod(-1).item() // 4)
    assert int(result.num_kept[0]) == int(0.25 * visual)
    assert out.sequences.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(out.sequences[0, inputs["input_ids"].shape[1] :]), str)
