"""Stage 2 (GlimpsePrune+): GRPO on the pruned model, as a subclass of TRL's GRPOTrainer.

Every rollout and every log-prob pass runs the pruned model with ONE keep mask per rollout:
- `_generate_single_turn`: rollouts generate with the pruned model (short KV cache). In `sample` mode each rollout
  samples its own mask from the VIP probabilities (uniform noise rides in TRL's per-token `multimodal_fields`, so
  TRL pads it with the prompts and hands it to the forward: nothing is stateful); the prefills' decisions are
  captured with a scoped forward hook;
- `_calculate_rewards`: the prune ratio and kept / visual token counts reach every reward function as keywords;
- `_generate_and_score_completions`: the masks join the batch (`glimpse_keep`), so TRL splits and shuffles them
  with their rollouts;
- `_get_per_token_logps_and_entropies`: TRL's own (its fused LM head, pixel slicing, MoE aux loss), with the pruned
  forward underneath: a scoped pre-hook hands each chunk's forward its rollouts' masks (`rollouts.rollout_masks`),
  and the pruned forward returns the completion at the input's columns, where TRL's labels are;
- `_compute_loss`: TRL's GRPO loss, plus in `sample` mode the VIP's REINFORCE loss
  -A * log p(mask | VIP) with the same advantages.

`_active_keep` [rollouts, prompt] holds the masks of the rollouts being scored, and only while they are: from their
generation until `_generate_and_score_completions` returns (old and reference passes), and during `_compute_loss`
(the policy pass, from the batch's `glimpse_keep`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from trl import GRPOTrainer
from trl.trainer.utils import add_fused_lm_head

from ...models import add_glimpse, glimpse_module, has_glimpse
from ...rewards import build_rewards
from ..config.stages import GlimpseGRPOConfig
from .checkpoint import GlimpseCheckpointMixin
from .rollouts import capture_glimpse_results, mask_log_prob, rollout_masks, rollout_stats
from .tuning import FROM_ARGS, tuning


def conversation_text(messages) -> str:
    """A conversation as one plain string ("user: <image> What colour ...?"), for logging tables.

    W&B tables reject columns that mix message lists holding image blocks; a string per row is always accepted.
    """
    if not isinstance(messages, list):
        return str(messages)
    lines = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = ["<image>" if block.get("type") == "image" else str(block.get("text", "")) for block in content]
            content = " ".join(parts)
        lines.append(f"{message.get('role', '?')}: {content}")
    return "\n".join(lines)


class GlimpseGRPOTrainer(GlimpseCheckpointMixin, GRPOTrainer):
    """`reward_funcs` and `peft_config` are the ones the stage main built from `args` (built here from `args` when a
    caller leaves them out); their weights are `args.reward_weights`, taken from the same reward specs."""

    def __init__(
        self,
        model,
        args: GlimpseGRPOConfig,
        train_dataset,
        processing_class,
        reward_funcs=None,
        peft_config=FROM_ARGS,
        eval_dataset=None,
        callbacks=None,
    ):
        glimpse_module(model)  # fail early without a glimpse
        reward_funcs = build_rewards(args.rewards)[0] if reward_funcs is None else reward_funcs
        peft_config = tuning(args, model, peft_config)
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            peft_config=peft_config,
        )
        # The VIP learns only from its own policy gradient, i.e. only in `sample` mode (PEFT froze it either way).
        for p in glimpse_module(self.model).parameters():
            p.requires_grad_(args.mask_policy == "sample")
        self._attach_reference_glimpse()
        # State kept across TRL's hooks, because TRL passes nothing from generation to the log-prob passes:
        self._noise = torch.Generator().manual_seed(args.mask_seed + 1000 * self.accelerator.process_index)
        """The rollout masks' sampling noise; saved and restored with checkpoints."""
        self._active_keep: torch.Tensor | None = None
        """[rollouts, prompt] keep masks of the rollouts being scored (see the module docstring for when)."""
        self._rollout_stats: dict[str, list] | None = None
        """Per-rollout prune ratio and token counts, from generation until the rewards have read them."""

    @property
    def _vip_learns(self) -> bool:
        return self.args.mask_policy == "sample" and self.args.vip_pg_weight > 0

    def _attach_reference_glimpse(self) -> None:
        """A separate reference model (full tuning, beta > 0) is loaded by TRL without a glimpse; give it one so it
        runs the same pruned forward. Its VIP is never consulted: every pass reuses the rollout's mask."""
        if self.ref_model is None:
            return
        ref = self.ref_model.module if hasattr(self.ref_model, "module") else self.ref_model
        if not has_glimpse(ref):
            add_glimpse(ref, glimpse_module(self.model).config)
            for p in glimpse_module(ref).parameters():
                p.requires_grad_(False)
            # TRL wrapped the instance's forward (fused LM head) around the vanilla class forward: wrap it again so
            # it calls the glimpse-aware one.
            if "forward" in vars(ref):
                del ref.forward
                add_fused_lm_head(
                    ref, temperature=self.temperature, cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32
                )

    # ---- the rollout-mask noise resumes with the run --------------------------------------------------------------

    def _noise_file(self, folder) -> Path:
        return Path(folder) / f"glimpse_mask_noise_{self.args.process_index}.pt"

    def _save_rng_state(self, output_dir) -> None:
        super()._save_rng_state(output_dir)
        torch.save(self._noise.get_state(), self._noise_file(output_dir))

    def _load_rng_state(self, checkpoint) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is not None and self._noise_file(checkpoint).is_file():
            self._noise.set_state(torch.load(self._noise_file(checkpoint), weights_only=True))

    # ---- rollouts ---------------------------------------------------------------------------------------------

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.args.mask_policy == "sample":
            noise = [torch.rand(len(ids), generator=self._noise).tolist() for ids in prompt_ids]
            multimodal_fields = {**multimodal_fields, "glimpse_noise": noise}
        with capture_glimpse_results(self.accelerator.unwrap_model(self.model)) as records:
            out = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        if records:
            self._active_keep = torch.cat([r.keep_mask for r in records])
            self._rollout_stats = rollout_stats(records)
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        stats = self._rollout_stats
        if stats:
            if len(stats["prune_ratio"]) != len(inputs):
                raise RuntimeError(f"Captured {len(stats['prune_ratio'])} rollout masks for {len(inputs)} rollouts.")
            inputs = [{**x, **{k: v[i] for k, v in stats.items()}} for i, x in enumerate(inputs)]
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if torch.isnan(rewards).all():  # gathered: every rank sees the same batch and stops alike
            raise ValueError(
                f"Every reward ({', '.join(self.reward_func_names)}) returned None for all {rewards.shape[0]} "
                "completions of this batch, so training would learn nothing from it. A reward returns None for a row "
                "it does not apply to (no reference in its answer column) or cannot score (an llm_judge reply "
                "without a score; see rewards/<name>/unparsed): fix the data columns or the reward parameters, or "
                "add a reward that scores every row."
            )
        return rewards

    def _generate_and_score_completions(self, inputs):
        try:
            output = super()._generate_and_score_completions(inputs)
            keep, stats = self._active_keep, self._rollout_stats
        finally:
            self._active_keep, self._rollout_stats = None, None
        if keep is None:
            raise RuntimeError("No pruned prefill ran during generation: every prompt needs an image.")
        keep = keep.to(output["prompt_ids"].device)
        if keep.shape != output["prompt_ids"].shape:
            raise RuntimeError(
                f"Rollout mask {tuple(keep.shape)} does not match prompts {tuple(output['prompt_ids'].shape)}."
            )
        output["glimpse_keep"] = keep
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["glimpse/prune_ratio"].append(sum(stats["prune_ratio"]) / len(stats["prune_ratio"]))
        mean_kept = sum(stats["kept_tokens"]) / len(stats["kept_tokens"])
        self._metrics[mode]["glimpse/kept_tokens"].append(mean_kept)
        # Ranks run sequences of different lengths after pruning; the spread shows it (and that nothing waits on it).
        per_rank = self.accelerator.gather(torch.tensor([mean_kept], device=self.accelerator.device))
        self._metrics[mode]["glimpse/kept_tokens_rank_spread"].append((per_rank.max() - per_rank.min()).item())
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key in ("prompt", "completion"):
            entries = self._logs.get(key)
            if entries:
                flat = [conversation_text(m) for m in entries]
                entries.clear()
                entries.extend(flat)
        super().log(logs, start_time)

    # ---- log-prob passes on the pruned model ------------------------------------------------------------------

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        keep = self._active_keep
        if keep is None:
            raise RuntimeError("glimpserl log-prob pass without a rollout mask.")
        if keep.shape != (input_ids.size(0), input_ids.size(1) - logits_to_keep):
            raise RuntimeError(
                f"Rollout masks {tuple(keep.shape)} do not match {input_ids.size(0)} rollouts with prompts of "
                f"{input_ids.size(1) - logits_to_keep} columns."
            )
        # Only the policy pass of `sample` mode learns from the VIP's score of the mask; other passes skip the VIP.
        score_mask = self._vip_learns and torch.is_grad_enabled()
        with rollout_masks(model, keep, score_mask):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )

    def _compute_loss(self, model, inputs):
        self._active_keep = inputs["glimpse_keep"]
        try:
            with capture_glimpse_results(model) as results:
                loss = super()._compute_loss(model, inputs)
        finally:
            self._active_keep = None
        if not (self._vip_learns and torch.is_grad_enabled()):
            return loss
        logp = torch.cat([mask_log_prob(r.logits, r.keep_mask, r.visual_mask) for r in results])
        vip_loss = -(inputs["advantages"].to(logp.device) * logp).mean()
        mode = "train" if self.model.training else "eval"
        # TRL scales its own loss for gradient accumulation (HF auto-scaling is off): scale this term alike.
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = loss + self.args.vip_pg_weight * vip_loss / normalizer
        self._metrics[mode]["glimpse/vip_pg_loss"].append(self.accelerator.gather(vip_loss.detach()).mean().item())
        return loss
