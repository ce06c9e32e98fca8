"""Stage 2 on TRL's real GRPOTrainer with the tiny model: masks per rollout, what trains, TRL equivalence."""

import pytest
import torch
import trl.trainer.utils as trl_utils
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from trl import GRPOTrainer
from trl.trainer.utils import add_fused_lm_head

from glimpserl.models import GlimpseConfig, add_glimpse, glimpse_module
from glimpserl.models.loading import load_processor
from glimpserl.models.tiny import build_tiny_model
from glimpserl.rewards import Reward, register
from glimpserl.rewards.registry import available_rewards
from glimpserl.rl.config.stages import GlimpseGRPOConfig
from glimpserl.rl.data import DataConfig, conversation_dataset, load_vqa
from glimpserl.rl.data.synth import write_synth
from glimpserl.rl.trainers.grpo import GlimpseGRPOTrainer
from glimpserl.rl.trainers.rollouts import capture_glimpse_results

MAX_PIXELS = 112 * 112
SEEN: list[dict] = []

if "record_pruning" not in available_rewards():

    @register("record_pruning")
    class RecordPruning(Reward):
        """Test reward: remembers the pruning facts each call received, pays nothing."""

        def __call__(self, completions, prune_ratio, kept_tokens, visual_tokens, **kwargs):
            SEEN.append({"prune_ratio": list(prune_ratio), "kept": list(kept_tokens), "visual": list(visual_tokens)})
            return [0.0] * len(completions)


if "never_applies" not in available_rewards():

    @register("never_applies")
    class NeverApplies(Reward):
        """Test reward: None for every completion, as a judge whose replies hold no score."""

        def __call__(self, completions, **kwargs):
            return [None] * len(completions)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = write_synth(tmp_path_factory.mktemp("synth"), n_train=8, n_test=2, image_size=112, seed=0)
    config = DataConfig(dataset=str(folder / "train.jsonl"), max_pixels=MAX_PIXELS)
    data, _ = load_vqa(config)
    return conversation_dataset(data, config)


class RecordingTrainer(GlimpseGRPOTrainer):
    """Remembers the rollout masks, the masks every log-prob pass used, and the advantages of the last loss."""

    def __init__(self, *args, **kwargs):
        self.rollout_masks, self.logp_masks = [], []
        super().__init__(*args, **kwargs)
        self.pad = self.processing_class.tokenizer.pad_token_id

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        out = super()._generate_single_turn(prompt_ids, *args, **kwargs)
        self.rollout_masks.append(self._active_keep.clone())
        self.rollout_keys = [_key(p, c, self.pad) for p, c in zip(prompt_ids, out[0])]
        return out

    def _get_per_token_logps_and_entropies(self, model, input_ids, *args, **kwargs):
        self.logp_masks.append((torch.is_grad_enabled(), self._active_keep.clone(), input_ids.clone()))
        return super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)

    def _compute_loss(self, model, inputs):
        self.seen_advantages = inputs["advantages"].detach().clone()
        return super()._compute_loss(model, inputs)


def _key(prompt, completion, pad) -> tuple:
    """A rollout's identity: its prompt and completion tokens without padding."""
    prompt = [t for t in prompt if t != pad]
    completion = list(completion)
    while completion and completion[-1] == pad:
        completion.pop()
    return tuple(prompt), tuple(completion)


def _trainer(dataset, tmp_path, cls=RecordingTrainer, **overrides):
    model = add_glimpse(
        build_tiny_model("qwen2_5_vl", seed=0),
        GlimpseConfig(layer=2, vip_hidden_size=32, vip_intermediate_size=64, vip_num_blocks=1, vip_num_heads=2),
    )
    config = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=4,
        learning_rate=1e-2,
        beta=0.04,
        save_strategy="no",
        logging_steps=1,
        lora_r=4,
        lora_alpha=8,
        rewards=["record_pruning", {"name": "exact_match", "weight": 1.0}, {"name": "prune_ratio", "weight": 1.0}],
        report_to="none",
    )
    config.update(overrides)
    processor = load_processor("builtin:tiny-qwen2_5_vl", max_pixels=MAX_PIXELS)
    return cls(model, GlimpseGRPOConfig(**config), dataset, processor)


def _vip_state(trainer):
    return {n: p.detach().clone() for n, p in glimpse_module(trainer.model).named_parameters()}


def test_sample_mode_trains_the_vip_and_varies_masks_within_a_group(dataset, tmp_path):
    SEEN.clear()
    trainer = _trainer(dataset, tmp_path, mask_policy="sample")
    before = _vip_state(trainer)
    trainer.train()
    after = _vip_state(trainer)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    # One prompt, four rollouts (a GRPO group): the sampled masks keep different numbers of tokens.
    first = SEEN[0]
    assert len(first["prune_ratio"]) == 4 and len(set(first["kept"])) > 1
    assert all(v == first["visual"][0] for v in first["visual"])
    logged = trainer.state.log_history[0]
    for key in ("glimpse/prune_ratio", "glimpse/kept_tokens", "glimpse/vip_pg_loss", "kl", "reward"):
        assert key in logged, key


def test_every_log_prob_pass_uses_the_rollout_mask(dataset, tmp_path):
    trainer = _trainer(dataset, tmp_path, mask_policy="sample", max_steps=1)
    trainer.train()
    (rollout,) = trainer.rollout_masks
    passes = trainer.logp_masks
    assert any(grad for grad, _, _ in passes), "the policy pass ran"
    assert any(not grad for grad, _, _ in passes), "the reference pass ran"
    width = rollout.shape[1]
    by_key = {key: rollout[i] for i, key in enumerate(trainer.rollout_keys)}
    assert len(by_key) == len(trainer.rollout_keys), "sampled completions are distinct"
    for _, mask, input_ids in passes:
        # TRL shuffles rollouts before the policy pass: find each row's rollout by its tokens, compare the masks.
        for row, ids in zip(mask, input_ids.tolist()):
            key = _key(ids[:width], ids[width:], trainer.pad)
            assert torch.equal(by_key[key], row)


def test_deterministic_mode_leaves_the_vip_alone(dataset, tmp_path):
    trainer = _trainer(dataset, tmp_path, mask_policy="deterministic")
    before = _vip_state(trainer)
    trainer.train()
    after = _vip_state(trainer)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_keep_all_log_probs_equal_vanilla_trl(dataset, tmp_path):
    trainer = _trainer(dataset, tmp_path, mask_policy="deterministic")
    processor = trainer.processing_class
    rows = [dataset[i] for i in range(2)]
    texts = [processor.apply_chat_template(r["prompt"], add_generation_prompt=True) for r in rows]
    prompt = processor(text=texts, images=[r["images"][0] for r in rows], return_tensors="pt", padding=True)
    completion = torch.tensor([[11, 12, 13, 14], [15, 16, 17, 18]])
    input_ids = torch.cat([prompt["input_ids"], completion], dim=1)
    attention_mask = torch.cat([prompt["attention_mask"], torch.ones_like(completion)], dim=1)
    mm_token_type_ids = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(completion)], dim=1)
    extra = dict(
        pixel_values=prompt["pixel_values"],
        image_grid_thw=prompt["image_grid_thw"],
        num_images=[1, 1],
        mm_token_type_ids=mm_token_type_ids,
    )
    trainer._active_keep = torch.ones_like(prompt["input_ids"], dtype=torch.bool)  # keep every visual token
    with torch.no_grad():
        ours, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention_mask, 4, **extra)
    vanilla = build_tiny_model("qwen2_5_vl", seed=0)
    add_fused_lm_head(vanilla, temperature=trainer.temperature)
    with torch.no_grad():
        theirs, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            trainer, vanilla, input_ids, attention_mask, 4, **extra
        )
    assert (ours - theirs).abs().max() <= 1e-4


class VocabWideTensors(TorchDispatchMode):
    """Records every tensor an op (forward or backward) produces whose last dimension is the vocabulary."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.seen, self.ops = vocab, [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab:
                self.seen.append((str(func), tuple(t.shape)))
        return out


def test_log_prob_pass_is_trls_fused_head_with_each_chunks_masks(dataset, tmp_path, monkeypatch):
    """TRL's own pass over the pruned model: no [..., vocab] logits in the forward or the backward, each chunk
    pruned with its own rollouts' masks, the VIP run only where its logits can learn (sample mode, with grad)."""
    # Tiles narrower than the vocabulary, as TRL's 32k-wide tiles are narrower than Qwen's 151,936 tokens.
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 256)
    trainer = _trainer(dataset, tmp_path, cls=GlimpseGRPOTrainer, mask_policy="sample")
    processor, model = trainer.processing_class, trainer.model
    rows = [dataset[i] for i in range(2)]
    texts = [processor.apply_chat_template(r["prompt"], add_generation_prompt=True) for r in rows]
    prompt = processor(text=texts, images=[r["images"][0] for r in rows], return_tensors="pt", padding=True)
    completion = torch.tensor([[11, 12, 13, 14], [15, 16, 17, 18]])
    input_ids = torch.cat([prompt["input_ids"], completion], dim=1)
    attention_mask = torch.cat([prompt["attention_mask"], torch.ones_like(completion)], dim=1)
    extra = dict(
        pixel_values=prompt["pixel_values"],
        image_grid_thw=prompt["image_grid_thw"],
        num_images=[1, 1],
        mm_token_type_ids=torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(completion)], dim=1),
    )
    visual = prompt["input_ids"] == model.config.image_token_id
    draw = torch.rand(visual.shape, generator=torch.Generator().manual_seed(0))
    keep = (visual & (draw < torch.tensor([[0.3], [0.7]]))) | (prompt["attention_mask"].bool() & ~visual)
    trainer._active_keep = keep
    wide = VocabWideTensors(model.config.text_config.vocab_size)
    with capture_glimpse_results(model) as chunks, wide:
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, 4, batch_size=1, compute_entropy=True, **extra
        )
        ops_before_backward = wide.ops
        (logps.sum() + entropies.sum()).backward()
    assert wide.ops > ops_before_backward and wide.seen == []
    assert [torch.equal(c.keep_mask[:, : keep.shape[1]], keep[i : i + 1]) for i, c in enumerate(chunks)] == [1, 1]
    assert all(c.logits.requires_grad and c.logits[c.visual_mask].abs().min() > 0 for c in chunks)
    with torch.no_grad():
        with capture_glimpse_results(model) as chunks:
            trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, 4, **extra)
        # The reference: full logits of the plain (non-fused) forward with the same masks, both rows at once.
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, **extra)
        logits = model(**inputs, glimpse_keep=keep, glimpse_prompt_length=keep.shape[1]).logits
    assert len(chunks) == 1 and not chunks[0].logits.any()
    expected = torch.log_softmax(logits[:, -5:-1] / trainer.temperature, -1).gather(-1, completion[..., None])
    assert (logps.detach() - expected.squeeze(-1)).abs().max() <= 1e-4


def test_vllm_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="use_vllm is not supported"):
        GlimpseGRPOConfig(output_dir="/tmp/x", use_vllm=True)


def test_wandb_completions_table_with_image_prompts(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    trainer = _trainer(dataset, tmp_path, mask_policy="sample", max_steps=1, report_to="wandb", log_completions=True)
    trainer.train()  # wandb rejects tables whose prompt column holds message lists with image blocks
    import pandas as pd
    import wandb

    wandb.finish()
    table = pd.read_parquet(tmp_path / "run" / "completions" / "completions_00001.parquet")
    assert all(isinstance(p, str) and "<image>" in p for p in table["prompt"])
    assert "glimpse/prune_ratio" in trainer.state.log_history[0]


def test_a_batch_without_any_reward_is_an_error(dataset, tmp_path):
    """TRL only warns when every reward is None; the step would then train on nothing."""
    trainer = _trainer(dataset, tmp_path, max_steps=1, rewards=["never_applies", {"name": "never_applies"}])
    with pytest.raises(ValueError, match=r"Every reward \(never_applies, never_applies_2\) returned None for all 4"):
        trainer.train()


@pytest.mark.parametrize("scale_rewards", ["none", "group"])
def test_the_vip_learns_from_trls_advantages_scaled_or_not(dataset, tmp_path, scale_rewards):
    # The reward is the prune ratio alone; one group of four sampled masks. Unscaled (the places recipe), the VIP's
    # advantages are each reward's distance from the group mean; TRL's default divides them by the group's std.
    SEEN.clear()
    rewards = ["record_pruning", {"name": "prune_ratio", "weight": 1.0}]
    trainer = _trainer(
        dataset,
        tmp_path,
        mask_policy="sample",
        max_steps=1,
        rewards=rewards,
        scale_rewards=scale_rewards,
    )
    trainer.train()
    ratios = torch.tensor(SEEN[0]["prune_ratio"])
    assert len(set(ratios.tolist())) > 1
    expected = ratios - ratios.mean()
    if scale_rewards == "group":
        expected = expected / (ratios.std() + 1e-4)
    got = trainer.seen_advantages.float().sort().values
    torch.testing.assert_close(got, expected.sort().values, rtol=1e-4, atol=1e-5)
