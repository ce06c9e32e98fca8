"""Glimpse-aware forwards for the Qwen2-VL family, installed by `add_glimpse` as thin subclasses.

Inner model (`Qwen2VLModel` / `Qwen2_5_VLModel`; the module TRL's fused LM head calls):
- a forward that carries images runs the pruned decoder (`models.forward`);
- a decode step on a cache filled by a pruned prefill maps the attention mask onto the shorter cache;
- `glimpse_mode="off"` is the vanilla model (the stage-1 teacher).
Outer model (`...ForConditionalGeneration`): the vanilla head, plus `output.glimpse` and labels gathered to the
pruned layout.

Extra forward keywords (all optional): glimpse_mode ("prune" | "mask" | "off"), glimpse_keep ([batch, seq] bool to
reuse a keep decision), glimpse_vip_logits (bool, default True: with glimpse_keep, False skips the glimpse and the
VIP, whose logits nothing then reads), glimpse_mask_fn (masked mode: VIP logits -> log keep-probability, the
relaxation used in training), glimpse_prompt_length (int: columns of the prompt when a completion follows it; the
output is then at the input's columns, see `pruned_decoder_forward`), glimpse_noise ([batch, seq] uniform noise:
sample the keep mask instead of thresholding it; RL rollouts), glimpse_pruner (a training-free pruner deciding
instead of the VIP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from ..forward import pruned_decoder_forward
from ..pruning import GlimpseResult

_CLASSES: dict[tuple[type, bool], type] = {}


@dataclass
class GlimpseModelOutput(BaseModelOutputWithPast):
    glimpse: GlimpseResult | None = None


@dataclass
class GlimpseCausalLMOutput(CausalLMOutputWithPast):
    glimpse: GlimpseResult | None = None


def _cache_argument(cache, kwargs: dict):
    """The generation cache, also when a caller still passes it under its pre-5.24 name `past_key_values`."""
    legacy = kwargs.pop("past_key_values", None)
    if cache is not None and legacy is not None:
        raise ValueError("Pass the generation cache once, as `cache` (not also as `past_key_values`).")
    return cache if cache is not None else legacy


class GlimpseInnerMixin:
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        pixel_values=None,
        pixel_values_videos=None,
        image_grid_thw=None,
        video_grid_thw=None,
        mm_token_type_ids=None,
        glimpse_mode="prune",
        glimpse_keep=None,
        glimpse_vip_logits=True,
        glimpse_mask_fn=None,
        glimpse_prompt_length=None,
        glimpse_noise=None,
        glimpse_pruner=None,
        **kwargs,
    ):
        cache = _cache_argument(cache, kwargs)
        vanilla = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
        )
        if glimpse_mode not in ("prune", "mask", "off"):
            raise ValueError(f"glimpse_mode must be 'prune', 'mask' or 'off', got {glimpse_mode!r}.")
        if glimpse_mode == "off":
            return super().forward(**vanilla, **kwargs)
        state = getattr(cache, "glimpse_state", None)
        if pixel_values is None:
            if state is not None:
                return self._decode_step(state, vanilla, kwargs)
            raise ValueError(
                "This model prunes visual tokens with a glimpse, but the input has no image (no pixel_values). "
                "Pass an image with the prompt, or call with glimpse_mode='off' for text-only use."
            )
        if pixel_values_videos is not None:
            raise ValueError("glimpse pruning supports images only; this input has videos (pixel_values_videos).")
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError("A glimpse prefill needs an empty cache; got a cache that already holds tokens.")
        if use_cache is None:
            use_cache = self.config.text_config.use_cache and not self.training and glimpse_mode == "prune"
        adapter = self.glimpse_adapter
        inputs = adapter.prepare(
            self,
            self.glimpse,
            input_ids,
            attention_mask,
            position_ids,
            inputs_embeds,
            pixel_values,
            image_grid_thw,
            mm_token_type_ids,
        )
        kwargs.pop("return_dict", None)
        hidden, result, filled = pruned_decoder_forward(
            adapter.text_model(self),
            self.glimpse,
            inputs,
            adapter.rotary(),
            cache=cache,
            use_cache=use_cache,
            mode=glimpse_mode,
            keep=glimpse_keep,
            vip_logits=glimpse_vip_logits,
            mask_fn=glimpse_mask_fn,
            prompt_length=glimpse_prompt_length,
            noise=glimpse_noise,
            pruner=glimpse_pruner,
            **kwargs,
        )
        return GlimpseModelOutput(last_hidden_state=hidden, cache=filled, glimpse=result)

    def _decode_step(self, state, vanilla: dict, kwargs: dict):
        """A generation step after a pruned prefill: same positions as unpruned, attention over the short cache."""
        cache = vanilla["cache"]
        new = (vanilla["input_ids"] if vanilla["input_ids"] is not None else vanilla["inputs_embeds"]).shape[1]
        generated = cache.get_seq_length() - state.attention_mask.shape[1]
        mask = vanilla["attention_mask"]
        if mask is not None:
            mask = torch.cat([state.attention_mask, mask[:, state.prompt_length :]], dim=1)
        else:
            ones = state.attention_mask.new_ones(state.attention_mask.shape[0], generated + new)
            mask = torch.cat([state.attention_mask, ones], dim=1)
        if vanilla["position_ids"] is None:
            steps = torch.arange(generated, generated + new, device=state.next_position.device)
            vanilla["position_ids"] = (state.next_position[:, None] + steps).expand(3, -1, -1)
        vanilla["attention_mask"] = mask
        out = super().forward(**vanilla, **kwargs)
        return GlimpseModelOutput(
            last_hidden_state=out.last_hidden_state,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            glimpse=state.result,
        )


class GlimpseOuterMixin:
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        pixel_values=None,
        pixel_values_videos=None,
        image_grid_thw=None,
        video_grid_thw=None,
        mm_token_type_ids=None,
        logits_to_keep=0,
        glimpse_mode="prune",
        glimpse_keep=None,
        glimpse_vip_logits=True,
        glimpse_mask_fn=None,
        glimpse_prompt_length=None,
        glimpse_noise=None,
        glimpse_pruner=None,
        **kwargs,
    ):
        cache = _cache_argument(cache, kwargs)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            glimpse_mode=glimpse_mode,
            glimpse_keep=glimpse_keep,
            glimpse_vip_logits=glimpse_vip_logits,
            glimpse_mask_fn=glimpse_mask_fn,
            glimpse_prompt_length=glimpse_prompt_length,
            glimpse_noise=glimpse_noise,
            glimpse_pruner=glimpse_pruner,
            **kwargs,
        )
        glimpse = getattr(outputs, "glimpse", None)
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            if (
                glimpse is not None
                and glimpse.kept_index is not None
                and outputs.last_hidden_state.shape[1] == glimpse.kept_index.shape[1]
                and labels.shape[1] == glimpse.keep_mask.shape[1]
            ):
                # Labels follow the tokens they belong to into the pruned layout; added padding is ignored.
                valid = glimpse.keep_mask.gather(1, glimpse.kept_index)
                labels = labels.gather(1, glimpse.kept_index).masked_fill(~valid, -100)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size)
        return GlimpseCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            glimpse=glimpse,
        )


def glimpse_class(base: type, inner: bool) -> type:
    """A subclass of `base` with the glimpse forward; it keeps the base's name so saved configs stay loadable."""
    key = (base, inner)
    if getattr(base, "_is_glimpse_class", False):
        return base
    if key not in _CLASSES:
        mixin = GlimpseInnerMixin if inner else GlimpseOuterMixin
        cls = type(base.__name__, (mixin, base), {"_is_glimpse_class": True, "__module__": base.__module__})
        cls.__qualname__ = base.__qualname__
        _CLASSES[key] = cls
    return _CLASSES[key]
