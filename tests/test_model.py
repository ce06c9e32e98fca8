"""The pruned Qwen2-VL / Qwen2.5-VL model: exactness, pruning, generation, masked mode, checkpoints, bad input."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    assert_hard_mask_equals_removal,
    assert_keep_all_matches_vanilla,
    assert_shared_teacher_matches_vanilla,
    batch,
    image,
)

from glimpserl.models import GlimpseConfig, add_glimpse, load_glimpse, save_glimpse
from glimpserl.models.tiny import build_tiny_model

FAMILIES = ["qwen2_5_vl", "qwen2_vl"]


def _processor(request, family):
    return request.getfixturevalue("tiny_processor" if family == "qwen2_5_vl" else "tiny_qwen2_processor")


def _ragged(processor):
    return batch(
        processor,
        ["What colour is the square?", "Which digit is written in the box on the left?"],
        [[image(112, 112, 0)], [image(84, 168, 1)]],
    )


def _glimpse_model(family, seed=0, **config):
    return add_glimpse(build_tiny_model(family, seed=seed).eval(), GlimpseConfig(**config))


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_matches_vanilla_logits_and_generation(request, family):
    processor = _processor(request, family)
    inputs = _ragged(processor)
    model = build_tiny_model(family, seed=0).eval()
    assert_keep_all_matches_vanilla(model, inputs)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [0, 1])
def test_shared_teacher_is_the_vanilla_model(request, family, layer):
    assert_shared_teacher_matches_vanilla(_glimpse_model(family, layer=layer), _ragged(_processor(request, family)))


def test_teacher_outside_masked_mode_is_a_clear_error(tiny_processor):
    with pytest.raises(ValueError, match="glimpse_teacher=True needs glimpse_mode='mask'"):
        _glimpse_model("qwen2_5_vl")(**_ragged(tiny_processor), glimpse_teacher=True)


def test_cache_passed_under_its_old_name_is_filled(tiny_processor):
    from transformers import DynamicCache

    inputs = _ragged(tiny_processor)
    model = _glimpse_model("qwen2_5_vl", max_keep_ratio=0.25)
    legacy = DynamicCache(config=model.config.text_config)
    with torch.no_grad():
        out = model(**inputs, use_cache=True, past_key_values=legacy)
        assert out.cache is legacy and legacy.get_seq_length() > 0 and legacy.glimpse_state is not None
        with pytest.raises(ValueError, match="once"):
            model(**inputs, use_cache=True, cache=DynamicCache(), past_key_values=DynamicCache())


@pytest.mark.parametrize("family", FAMILIES)
def test_capped_prune_shrinks_kv_cache_to_text_plus_kept(request, family):
    processor = _processor(request, family)
    inputs = _ragged(processor)
    model = _glimpse_model(family, max_keep_ratio=0.25)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    result = out.glimpse
    visual = result.num_visual
    kept = result.num_kept
    assert torch.equal(kept, (visual * 0.25).long())
    text = (inputs["attention_mask"].bool() & ~result.visual_mask).sum(1)
    assert out.cache.get_seq_length() == int((text + kept).max())
    for layer in out.cache.layers:
        assert layer.keys.shape[2] == int((text + kept).max())
    # The per-image stats add up and say the same thing.
    stats = result.stats()
    assert [s["kept_tokens"] for s in stats] == kept.tolist()
    assert [sum(i["visual_tokens"] for i in s["images"]) for s in stats] == visual.tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_pruned_generation_equals_each_sample_alone(request, family):
    processor = _processor(request, family)
    questions = ["What colour is the square?", "Which digit is written in the box on the left?"]
    images = [[image(112, 112, 0)], [image(84, 168, 1)]]
    model = _glimpse_model(family, max_keep_ratio=0.25)
    inputs = batch(processor, questions, images)
    with torch.no_grad():
        together = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    width = inputs["input_ids"].shape[1]
    for i in range(2):
        alone = batch(processor, [questions[i]], [images[i]])
        with torch.no_grad():
            single = model.generate(**alone, max_new_tokens=8, do_sample=False)
        assert torch.equal(single[0, alone["input_ids"].shape[1] :], together[i, width:])


def test_hard_masked_mode_equals_physical_removal(tiny_processor):
    assert_hard_mask_equals_removal(_glimpse_model("qwen2_5_vl", max_keep_ratio=0.3), _ragged(tiny_processor))


def test_threshold_and_min_keep(tiny_processor):
    inputs = _ragged(tiny_processor)
    model = _glimpse_model("qwen2_5_vl", threshold=0.99, min_keep=3)
    with torch.no_grad():
        logits = model(**inputs).glimpse
    # With the initial VIP bias (sigmoid(2) ~ 0.88) nothing passes 0.99, so each image keeps exactly min_keep.
    assert logits.num_kept.tolist() == [3, 3]


def test_training_forward_with_completion_matches_generation(tiny_processor):
    """The log-prob pass (prompt + completion in one forward) sees what generation saw, token for token."""
    inputs = _ragged(tiny_processor)
    model = _glimpse_model("qwen2_5_vl", max_keep_ratio=0.25)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        gen = model.generate(
            **inputs, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        full = dict(inputs)
        full["input_ids"] = gen.sequences
        full["attention_mask"] = torch.cat(
            [inputs["attention_mask"], torch.ones_like(gen.sequences[:, prompt_len:])], dim=1
        )
        completion = torch.zeros_like(gen.sequences[:, prompt_len:])  # text, as TRL extends them
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], completion], dim=1)
        out = model(**full, glimpse_prompt_length=prompt_len)
    step_logits = out.logits[:, -7:-1]
    scores = torch.stack(gen.scores, dim=1)
    assert (step_logits - scores).abs().max() <= 1e-4
    assert torch.equal(out.glimpse.keep_mask[:, :prompt_len], gen.cache.glimpse_state.result.keep_mask)


def _with_completion(inputs, completion):
    full = dict(inputs)
    full["input_ids"] = torch.cat([inputs["input_ids"], completion], dim=1)
    full["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(completion)], dim=1)
    full.pop("mm_token_type_ids", None)
    return full


def test_a_log_prob_pass_reads_each_layers_own_prompt_keys_and_values(tiny_processor):
    """Layers 0..K project the prompt's keys once (the layer itself): the glimpse and the completion read those,
    and under gradient checkpointing (no cache) their recomputation gives the same values and gradients."""
    inputs = _ragged(tiny_processor)
    model = _glimpse_model("qwen2_5_vl", max_keep_ratio=0.25).train()
    prompt = inputs["input_ids"].shape[1]
    full = _with_completion(inputs, torch.tensor([[11, 12, 13], [14, 15, 16]]))
    layers = model.model.language_model.layers[: model.model.glimpse.config.layer + 1]
    widths = [[] for _ in layers]
    handles = [
        layer.self_attn.k_proj.register_forward_hook(lambda _m, args, _o, w=w: w.append(args[0].shape[1]))
        for layer, w in zip(layers, widths)
    ]
    out = model(**full, glimpse_prompt_length=prompt)
    for handle in handles:
        handle.remove()
    assert [w.count(prompt) for w in widths] == [1] * len(layers)
    out.logits[:, -4:-1].logsumexp(-1).sum().backward()
    grad = layers[0].self_attn.k_proj.weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    again = model(**full, glimpse_prompt_length=prompt)
    again.logits[:, -4:-1].logsumexp(-1).sum().backward()
    assert (again.logits - out.logits).abs().max() <= 1e-5
    assert torch.allclose(layers[0].self_attn.k_proj.weight.grad, grad, atol=1e-6)


def test_a_reused_mask_runs_the_vip_only_when_its_logits_are_wanted(tiny_processor):
    inputs = _ragged(tiny_processor)
    model = _glimpse_model("qwen2_5_vl", max_keep_ratio=0.25)
    prompt = inputs["input_ids"].shape[1]
    full = _with_completion(inputs, torch.tensor([[11, 12, 13], [14, 15, 16]]))
    calls = []
    with torch.no_grad():
        keep = model(**inputs).glimpse.keep_mask
        handle = model.model.glimpse.vip.register_forward_hook(lambda *_: calls.append(1))
        scored = model(**full, glimpse_prompt_length=prompt, glimpse_keep=keep)
        skipped = model(**full, glimpse_prompt_length=prompt, glimpse_keep=keep, glimpse_vip_logits=False)
        handle.remove()
    assert len(calls) == 1
    assert torch.equal(skipped.glimpse.keep_mask, scored.glimpse.keep_mask)
    assert torch.equal(skipped.logits, scored.logits)
    assert not skipped.glimpse.logits.any() and scored.glimpse.logits[scored.glimpse.visual_mask].abs().min() > 0


def test_reused_keep_mask_is_applied(tiny_processor):
    inputs = _ragged(tiny_processor)
    model = _glimpse_model("qwen2_5_vl")
    with torch.no_grad():
        first = model(**inputs, glimpse_keep=None).glimpse
    keep = torch.zeros_like(first.keep_mask)
    keep[first.visual_mask.cumsum(1) <= 2] = True  # the first two visual tokens of each sample
    with torch.no_grad():
        again = model(**inputs, glimpse_keep=keep).glimpse
    assert again.num_kept.tolist() == [2, 2]


def test_soft_masked_mode_trains_the_vip(tiny_processor):
    inputs = _ragged(tiny_processor)
    model = _glimpse_model("qwen2_5_vl")
    out = model(**inputs, glimpse_mode="mask", glimpse_mask_fn=lambda logits, visual: F.logsigmoid(logits))
    out.logits[:, -1].logsumexp(-1).sum().backward()
    vip_grads = [p.grad for p in model.model.glimpse.parameters() if p.grad is not None]
    assert vip_grads and any(g.abs().sum() > 0 for g in vip_grads)
    assert out.glimpse.keep_prob.requires_grad


@pytest.mark.parametrize(
    ("relaxation", "dropped_learn"), [("straight_through", True), ("straight_through_bias", False)]
)
def test_dropped_tokens_get_a_distillation_gradient_only_through_the_mask(tiny_processor, relaxation, dropped_learn):
    """Through the real pruned forward: the KL to the unpruned model reaches the VIP logits of tokens the sampled
    mask dropped only with the multiplicative straight-through estimator."""
    from glimpserl.rl.trainers import losses

    inputs = _ragged(tiny_processor)
    model = _glimpse_model("qwen2_5_vl")
    with torch.no_grad():
        teacher = model(**inputs, glimpse_mode="off").logits[:, -1]
    fn = losses.mask_fn(relaxation, 1.0, 0.5, generator=torch.Generator().manual_seed(0))
    holder = {}

    def keep_logits(logits, visual):
        logits.retain_grad()
        holder["logits"] = logits
        return fn(logits, visual)

    out = model(**inputs, glimpse_mode="mask", glimpse_mask_fn=keep_logits)
    kl = F.kl_div(out.logits[:, -1].log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="sum")
    kl.backward()
    dropped = out.glimpse.visual_mask & ~out.glimpse.keep_mask
    assert dropped.any() and (out.glimpse.visual_mask & out.glimpse.keep_mask).any()
    grad = holder["logits"].grad[dropped]
    assert bool((grad != 0).any()) is dropped_learn


def test_two_images_per_sample(tiny_processor):
    inputs = batch(
        tiny_processor,
        ["Compare the two pictures.", "What is shown?"],
        [[image(56, 112, 2), image(112, 56, 3)], [image(84, 84, 4)]],
    )
    model = _glimpse_model("qwen2_5_vl", max_keep_ratio=0.5)
    with torch.no_grad():
        out = model(**inputs)
        gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert [len(s["images"]) for s in out.glimpse.stats()] == [2, 1]
    for sample in out.glimpse.stats():
        for img in sample["images"]:
            assert img["kept_tokens"] == max(1, int(0.5 * img["visual_tokens"]))
    assert gen.shape == (2, inputs["input_ids"].shape[1] + 4)


def test_calls_in_a_row_do_not_leak_state(tiny_processor):
    model = _glimpse_model("qwen2_5_vl", max_keep_ratio=0.25)
    a = batch(tiny_processor, ["What colour is the square?"], [[image(112, 112, 0)]])
    b = batch(tiny_processor, ["Which digit is in the box?"], [[image(168, 84, 5)]])
    with torch.no_grad():
        first_b = model.generate(**b, max_new_tokens=5, do_sample=False)
        model.generate(**a, max_new_tokens=5, do_sample=False)
        second_b = model.generate(**b, max_new_tokens=5, do_sample=False)
    assert torch.equal(first_b, second_b)


def test_labels_follow_the_pruned_layout(tiny_processor):
    inputs = _ragged(tiny_processor)
    model = _glimpse_model("qwen2_5_vl", max_keep_ratio=0.25)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    index = out.glimpse.kept_index
    shifted = labels.gather(1, index)[:, 1:]
    valid = out.glimpse.keep_mask.gather(1, index)[:, 1:] & (shifted != -100)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1][valid], shifted[valid])
    assert torch.allclose(out.loss, expected, atol=1e-5)


def test_save_and_load_glimpse_round_trip(tmp_path, tiny_processor):
    inputs = _ragged(tiny_processor)
    model = _glimpse_model("qwen2_5_vl", seed=0, max_keep_ratio=0.4, layer=1)
    with torch.no_grad():
        for p in model.model.glimpse.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        before = model(**inputs)
    save_glimpse(model, tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["glimpse.safetensors", "glimpse_config.json"]
    fresh = load_glimpse(build_tiny_model("qwen2_5_vl", seed=0).eval(), tmp_path / "g")
    with torch.no_grad():
        after = fresh(**inputs)
    assert fresh.model.glimpse.config.layer == 1
    assert torch.equal(before.glimpse.keep_mask, after.glimpse.keep_mask)
    assert torch.allclose(before.logits, after.logits, atol=1e-6)


def test_save_pretrained_keeps_the_base_checkpoint_clean(tmp_path):
    model = _glimpse_model("qwen2_5_vl")
    model.save_pretrained(tmp_path / "base")
    reloaded = type(build_tiny_model("qwen2_5_vl")).from_pretrained(tmp_path / "base")
    assert not any("glimpse" in name for name, _ in reloaded.named_parameters())
    assert reloaded.config.architectures == ["Qwen2_5_VLForConditionalGeneration"]


# ---- bad input ---------------------------------------------------------------------------------------------


def test_image_less_prompt_is_a_clear_error(tiny_processor):
    model = _glimpse_model("qwen2_5_vl")
    text = tiny_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Hello?"}]}], add_generation_prompt=True
    )
    inputs = dict(tiny_processor(text=[text], return_tensors="pt"))
    with pytest.raises(ValueError, match="no image"):
        model.generate(**inputs, max_new_tokens=2)
    with torch.no_grad():  # the escape hatch for text-only use
        model(**inputs, glimpse_mode="off")


def test_unsupported_model_family_is_a_clear_error():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2))
    with pytest.raises(ValueError, match=r"does not support model_type 'llama'.*qwen2_5_vl"):
        add_glimpse(llama)


def test_glimpse_from_a_different_base_is_a_clear_error(tmp_path):
    model = _glimpse_model("qwen2_5_vl")
    save_glimpse(model, tmp_path / "g")
    other = build_tiny_model("qwen2_5_vl", text_hidden=64)
    with pytest.raises(ValueError, match="different base model.*text_hidden_size: checkpoint 128 vs model 64"):
        load_glimpse(other, tmp_path / "g")


def test_prompt_cut_through_image_tokens_is_a_clear_error(tiny_processor):
    inputs = _ragged(tiny_processor)
    model = _glimpse_model("qwen2_5_vl")
    image_id = model.config.image_token_id
    cut = dict(inputs)
    ids = inputs["input_ids"].clone()
    first = (ids[0] == image_id).nonzero()[0, 0]
    ids[0, first] = 0  # one image token lost, as a truncation through the image would do
    cut["input_ids"] = ids
    with pytest.raises(ValueError, match="image tokens do not match"):
        model(**cut)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="max_keep_ratio"):
        GlimpseConfig(max_keep_ratio=1.5)
    with pytest.raises(ValueError, match="threshold"):
        GlimpseConfig(threshold=1.0)
    model = build_tiny_model("qwen2_5_vl")
    with pytest.raises(ValueError, match="layer=3 is outside"):
        add_glimpse(model, GlimpseConfig(layer=3))


@pytest.mark.parametrize("family", FAMILIES)
def test_raw_inputs_without_mm_token_type_ids_behave_as_vanilla(request, family):
    """Inputs built by hand may lack mm_token_type_ids: the glimpse path then places tokens exactly as the vanilla
    model does (Qwen2.5-VL: plain text positions), or refuses them as it does (Qwen2-VL)."""
    inputs = _ragged(_processor(request, family))
    del inputs["mm_token_type_ids"]
    model = build_tiny_model(family, seed=0).eval()
    try:
        with torch.no_grad():
            ref = model(**inputs).logits
    except ValueError as err:
        add_glimpse(model, GlimpseConfig(threshold=0.0))
        with pytest.raises(ValueError, match="mm_token_type_ids"):
            model(**inputs)
        assert "mm_token_type_ids" in str(err)
        return
    add_glimpse(model, GlimpseConfig(threshold=0.0))
    with torch.no_grad():
        out = model(**inputs)
    assert out.glimpse.keep_ratio.tolist() == [1.0, 1.0]
    assert (out.logits - ref).abs().max() <= 1e-4


def test_damaged_glimpse_checkpoint_names_the_file(tmp_path):
    import json

    model = _glimpse_model("qwen2_5_vl")
    good = save_glimpse(model, tmp_path / "good")
    weights = (good / "glimpse.safetensors").read_bytes()
    config = json.loads((good / "glimpse_config.json").read_text())
    intact = json.dumps(config)

    def damaged(name, weights_bytes=weights, config_text=intact):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "glimpse.safetensors").write_bytes(weights_bytes)
        (folder / "glimpse_config.json").write_text(config_text)
        return folder

    cases = [
        (damaged("cut", weights_bytes=weights[: len(weights) // 2]), r"cut/glimpse\.safetensors is not a readable"),
        (damaged("json", config_text='{"config": {"layer": 2,'), r"json/glimpse_config\.json is damaged \(not valid"),
        (
            damaged("keys", config_text=json.dumps({"format": 1})),
            r"keys/glimpse_config\.json is damaged \(no 'config'",
        ),
        (
            damaged(
                "shape", config_text=json.dumps({**config, "config": {**config["config"], "vip_hidden_size": 64}})
            ),
            r"shape/glimpse\.safetensors does not match glimpse_config\.json .*size mismatch for vip\.",
        ),
    ]
    for folder, message in cases:
        with pytest.raises(ValueError, match=message):
            load_glimpse(build_tiny_model("qwen2_5_vl", seed=0), folder)


def test_model_names_that_cannot_load_fail_before_loading(tmp_path):
    from glimpserl.models.loading import load_model, load_processor

    for load in (load_model, load_processor):
        with pytest.raises(FileNotFoundError, match=r"Model path '/nonexistent/qwen-vl' does not exist"):
            load("/nonexistent/qwen-vl")
        with pytest.raises(ValueError, match=r"'someone/some-vlm' is neither a local folder nor in the hub cache"):
            load("someone/some-vlm")
        with pytest.raises(ValueError, match="is not a model folder"):
            load(str(tmp_path))
        with pytest.raises(ValueError, match="Unknown built-in model"):
            load("builtin:tiny-llama")


@pytest.mark.parametrize("source", ["glimpse", "last_prompt"])
def test_state_readout_is_per_sample_and_round_trips(tmp_path, tiny_processor, source):
    """With `state_readout` each image is scored against its own sample's state: a ragged batch decides as each
    sample alone, the extra read-out moves the VIP's logits, and a saved glimpse loads with it."""
    questions = ["What colour is the square?", "Which digit is written in the box on the left?"]
    images = [[image(112, 112, 0)], [image(84, 168, 1)]]
    model = _glimpse_model("qwen2_5_vl", state_readout=source, max_keep_ratio=0.25)
    module = model.model.glimpse
    with torch.no_grad():
        for p in module.vip.state_readout.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        together = model(**batch(tiny_processor, questions, images))
        logits = [together.glimpse.logits[i][together.glimpse.visual_mask[i]] for i in range(2)]
        for i in range(2):
            alone = model(**batch(tiny_processor, [questions[i]], [images[i]])).glimpse
            assert torch.allclose(alone.logits[0][alone.visual_mask[0]], logits[i], atol=1e-5)
        module.vip.state_readout.query.weight.zero_()
        module.vip.state_readout.query.bias.zero_()
        silenced = model(**batch(tiny_processor, questions, images)).glimpse
    assert not torch.allclose(silenced.logits[0][silenced.visual_mask[0]], logits[0], atol=1e-3)
    save_glimpse(model, tmp_path / "g")
    fresh = load_glimpse(build_tiny_model("qwen2_5_vl", seed=0).eval(), tmp_path / "g")
    assert fresh.model.glimpse.config.state_readout == source
    with torch.no_grad():
        again = fresh(**batch(tiny_processor, questions, images)).glimpse
    assert torch.equal(again.logits, silenced.logits)


def test_state_readout_hard_mask_equals_removal(tiny_processor):
    model = _glimpse_model("qwen2_5_vl", state_readout="last_prompt", max_keep_ratio=0.3)
    assert_hard_mask_equals_removal(model, _ragged(tiny_processor))


def test_state_readout_rejects_an_unknown_source():
    with pytest.raises(ValueError, match="state_readout"):
        GlimpseConfig(state_readout="question")


def test_a_state_reading_vip_without_a_state_is_a_clear_error():
    model = _glimpse_model("qwen2_5_vl", state_readout="last_prompt")
    vip = model.model.glimpse.vip
    tokens, vision = 4, [torch.zeros(1, 4, vip.state_readout.key.in_features)] * len(vip.blocks)
    grid = torch.arange(tokens)[None]
    with pytest.raises(ValueError, match="reads a hidden state .state_readout. but none was given"):
        vip(
            torch.zeros(1, tokens, vip.in_proj.in_features - vip.state_readout.num_heads),
            vision,
            grid,
            grid,
            torch.ones(1, tokens, dtype=torch.bool),
        )


def test_state_readout_can_address_any_grid_cell():
    """The state read-out's key is turned at its token's cell and its query is not, so a learned query can single out
    one cell of the grid even when every token's vision features are the same: what lets the VIP find a place named by
    number. With the turn taken away (zero frequencies) no query can."""
    from glimpserl.models.vip import StateReadout

    torch.manual_seed(0)
    side, heads, width = 9, 2, 32
    rows = torch.arange(side).repeat_interleave(side)[None].float()
    cols = torch.arange(side).repeat(side)[None].float()
    vision = torch.zeros(1, side * side, 4)  # no feature tells the cells apart
    state = torch.randn(1, 8)

    def addressed(target: int, turned: bool) -> bool:
        readout = StateReadout(8, 4, width, heads)
        with torch.no_grad():
            readout.key.bias.normal_()
            readout.freqs.mul_(float(turned))
        opt = torch.optim.Adam(readout.query.parameters(), lr=0.05)
        for _ in range(200):
            scores = readout(state, vision, rows, cols).sum(-1)[0]
            loss = -scores.log_softmax(-1)[target]
            opt.zero_grad()
            loss.backward()
            opt.step()
        return int(readout(state, vision, rows, cols).sum(-1)[0].argmax()) == target

    assert all(addressed(target, turned=True) for target in (0, 18, 40, 62, 74, 80))
    assert not addressed(40, turned=False)


def test_state_readout_turns_in_float32_under_bfloat16():
    """The read-out's angles are computed in float32 whatever the VIP's dtype (a bf16 angle at row 120 is off by up
    to a radian), so a bf16 read-out's scores track those of the same weights in float32 at a large grid's far
    cells."""
    import copy

    from glimpserl.models.vip import StateReadout

    torch.manual_seed(0)
    half = StateReadout(8, 4, 32, 2).to(torch.bfloat16)
    same_weights = copy.deepcopy(half).float()
    rows = torch.full((1, 3), 120.0)
    cols = torch.tensor([[0.0, 60.0, 121.0]])
    vision, state = torch.randn(1, 3, 4).bfloat16().float(), torch.randn(1, 8).bfloat16().float()
    full = same_weights(state, vision, rows, cols)
    half = half(state.bfloat16(), vision.bfloat16(), rows, cols).float()
    assert torch.allclose(half, full, atol=0.05 * full.abs().max().item())
