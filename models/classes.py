"""Glimpse-aware subclasses of a family's model classes, installed by `add_glimpse` (through `VLMAdapter.install`).

Inner model (the module TRL's fused LM head calls):
- a forward that carries images runs the pruned decoder (`models.forward`), on inputs the family adapter prepares;
- a decode step on a cache filled by a pruned prefill maps the attention mask onto the shorter cache;
- `glimpse_mode="off"` is the vanilla model; `glimpse_teacher=True` in masked mode adds the vanilla model's output
  to the pruned one, from the same vision encoder call and prompt layers 0..K (the stage-1 teacher at a fraction of
  a second forward).
Outer model (`...ForConditionalGeneration`): the vanilla head, plus `output.glimpse`, `output.teacher_logits` (when
asked) and labels gathered to the pruned layout.

Extra forward keywords (all optional): the `glimpse_*` fields of `PruneRequest` (glimpse_mode, glimpse_keep,
glimpse_vip_logits, glimpse_mask_fn, glimpse_prompt_length, glimpse_noise, glimpse_pruner, glimpse_teacher). Each
subclass shows its base's forward signature plus these keywords: transformers reads forward signatures (generate
checks its model kwargs against them and picks the inputs it prepares), so a glimpse class must take exactly what its
base takes.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from .forward import pruned_decoder_forward
from .pruning import GlimpseResult
from .request import PruneRequest

_CLASSES: dict[tuple[type, bool], type] = {}
NOT_INPUTS = ("self", "cache", "use_cache")
"""Parameters of an inner forward that are not model inputs for the adapter to prepare."""
HIDDEN = ("mm_encoder_outputs",)
"""Base parameters a glimpse class does not show: given this one, generate runs the vision encoder ahead and passes
its output instead of pixel_values, while the glimpse needs the encoder's intermediate features from its own call."""


@dataclass
class GlimpseModelOutput(BaseModelOutputWithPast):
    glimpse: GlimpseResult | None = None
    teacher_hidden_state: torch.Tensor | None = None
    """With glimpse_teacher=True: the unpruned model's last hidden states [batch, seq, hidden] (no gradient)."""


@dataclass
class GlimpseCausalLMOutput(CausalLMOutputWithPast):
    glimpse: GlimpseResult | None = None
    teacher_logits: torch.Tensor | None = None
    """With glimpse_teacher=True: the unpruned model's logits at the same columns as `logits` (no gradient)."""


def _cache_argument(kwargs: dict):
    """The generation cache, also when a caller still passes it under its pre-5.24 name `past_key_values`."""
    cache, legacy = kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
    if cache is not None and legacy is not None:
        raise ValueError("Pass the generation cache once, as `cache` (not also as `past_key_values`).")
    return cache if cache is not None else legacy


class _GlimpseForward:
    _glimpse_positional: tuple[str, ...] = ()

    def _keywords(self, args: tuple, kwargs: dict) -> dict:
        """All arguments by name (positional ones named as in the base forward)."""
        if len(args) > len(self._glimpse_positional):
            limit = len(self._glimpse_positional)
            raise TypeError(
                f"{type(self).__name__}.forward takes at most {limit} positional arguments, got {len(args)}."
            )
        named = dict(zip(self._glimpse_positional, args))
        twice = sorted(set(named) & set(kwargs))
        if twice:
            raise TypeError(f"{type(self).__name__}.forward got multiple values for {twice}.")
        return {**named, **kwargs}


class GlimpseInnerMixin(_GlimpseForward):
    _glimpse_input_names: tuple[str, ...] = ()

    def forward(self, *args, **kwargs):
        kwargs = self._keywords(args, kwargs)
        request = PruneRequest.pop_from(kwargs)
        kwargs["cache"] = cache = _cache_argument(kwargs)
        if request.mode == "off":
            return super().forward(**kwargs)
        state = getattr(cache, "glimpse_state", None)
        if kwargs.get("pixel_values") is None:
            if state is not None:
                return self._decode_step(state, kwargs)
            raise ValueError(
                "This model prunes visual tokens with a glimpse, but the input has no image (no pixel_values). "
                "Pass an image with the prompt, or call with glimpse_mode='off' for text-only use."
            )
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError("A glimpse prefill needs an empty cache; got a cache that already holds tokens.")
        del kwargs["cache"]
        use_cache = kwargs.pop("use_cache", None)
        if use_cache is None:
            use_cache = self.config.text_config.use_cache and not self.training and request.mode == "prune"
        adapter = self.glimpse_adapter
        needs = request.pruner.selector.needs if request.pruner is not None else frozenset()
        if request.pruner is not None:
            adapter.check_pruner(request.pruner.name, needs)
        batch = {name: kwargs.pop(name, None) for name in self._glimpse_input_names}
        kwargs.pop("return_dict", None)
        inputs = adapter.prepare(self, self.glimpse, batch, vision_attention="vision_attn" in needs)
        hidden, result, filled, teacher = pruned_decoder_forward(
            adapter.text_model(self), self.glimpse, inputs, adapter, request, cache, use_cache, **kwargs
        )
        return GlimpseModelOutput(last_hidden_state=hidden, cache=filled, glimpse=result, teacher_hidden_state=teacher)

    def _decode_step(self, state, kwargs: dict):
        """A generation step after a pruned prefill: same positions as unpruned, attention over the short cache."""
        cache = kwargs["cache"]
        tokens = kwargs.get("input_ids")
        new = (tokens if tokens is not None else kwargs["inputs_embeds"]).shape[1]
        generated = cache.get_seq_length() - state.attention_mask.shape[1]
        mask = kwargs.get("attention_mask")
        if mask is not None:
            mask = torch.cat([state.attention_mask, mask[:, state.prompt_length :]], dim=1)
        else:
            ones = state.attention_mask.new_ones(state.attention_mask.shape[0], generated + new)
            mask = torch.cat([state.attention_mask, ones], dim=1)
        if kwargs.get("position_ids") is None:
            steps = torch.arange(generated, generated + new, device=state.next_position.device)
            kwargs["position_ids"] = self.glimpse_adapter.decoder_positions(state.next_position[..., None] + steps)
        kwargs["attention_mask"] = mask
        out = super().forward(**kwargs)
        return GlimpseModelOutput(
            last_hidden_state=out.last_hidden_state,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            glimpse=state.result,
        )


class GlimpseOuterMixin(_GlimpseForward):
    def forward(self, *args, **kwargs):
        kwargs = self._keywords(args, kwargs)
        labels = kwargs.pop("labels", None)
        logits_to_keep = kwargs.pop("logits_to_keep", 0)
        kwargs["cache"] = _cache_argument(kwargs)
        outputs = self.model(**kwargs)  # the glimpse_* keywords go on to the inner model, which prunes
        glimpse = getattr(outputs, "glimpse", None)
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        teacher = getattr(outputs, "teacher_hidden_state", None)
        if teacher is not None:
            with torch.no_grad():
                teacher = self.lm_head(slice_logits_to_keep(teacher, logits_to_keep))
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
            teacher_logits=teacher,
        )


def _glimpse_signature(base_forward) -> inspect.Signature:
    """The base forward's signature with the glimpse keywords added before its **kwargs."""
    signature = inspect.signature(base_forward)
    params = [
        p
        for p in signature.parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD and p.name not in HIDDEN
    ]
    rest = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    defaults = PruneRequest()
    glimpse = [
        inspect.Parameter(
            PruneRequest.PREFIX + f.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, f.name)
        )
        for f in dataclasses.fields(PruneRequest)
    ]
    return signature.replace(parameters=params + glimpse + rest)


def glimpse_class(base: type, inner: bool) -> type:
    """A subclass of `base` with the glimpse forward; it keeps the base's name so saved configs stay loadable."""
    if getattr(base, "_is_glimpse_class", False):
        return base
    key = (base, inner)
    if key not in _CLASSES:
        mixin = GlimpseInnerMixin if inner else GlimpseOuterMixin

        def forward(self, *args, **kwargs):
            return mixin.forward(self, *args, **kwargs)

        forward.__signature__ = _glimpse_signature(base.forward)
        shown = list(forward.__signature__.parameters.values())[1:]
        named = list(inspect.signature(base.forward).parameters.values())[1:]
        namespace = {
            "forward": forward,
            "_is_glimpse_class": True,
            "_glimpse_positional": tuple(p.name for p in shown if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD),
            # Every named input the base takes (hidden ones too), so the adapter sees and can refuse them.
            "_glimpse_input_names": tuple(
                p.name for p in named if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name not in NOT_INPUTS
            ),
            "__module__": base.__module__,
        }
        cls = type(base.__name__, (mixin, base), namespace)
        cls.__qualname__ = base.__qualname__
        _CLASSES[key] = cls
    return _CLASSES[key]
