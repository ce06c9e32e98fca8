"""Stage 1: VIP distillation on TRL's SFTTrainer.

Teacher = the same frozen VLM with every visual token (no grad, no second copy; by default computed inside the
student's forward from its vision encoder call and prompt layers 0..K, see `teacher_forward`); student = the VLM
pruned by the VIP in the differentiable masked mode. Only the glimpse token and the VIP train. Overridden hooks:
`compute_loss` (the loss) and, through `GlimpseCheckpointMixin`, the checkpoint hooks (checkpoints hold the glimpse
weights only; a marker written last tells complete checkpoints from interrupted ones).
"""

from __future__ import annotations

import torch
from trl import SFTTrainer

from ...models import glimpse_module
from ..config.stages import VIPTrainingConfig
from ..data.collate import GlimpseCollator, model_inputs
from . import losses
from .checkpoint import GlimpseCheckpointMixin


def freeze_all_but_glimpse(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """requires_grad only on the glimpse + VIP; returns those parameters."""
    trainable = {id(p) for p in glimpse_module(model).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    return [p for p in model.parameters() if p.requires_grad]


class VIPTrainer(GlimpseCheckpointMixin, SFTTrainer):
    save_glimpse_only = True

    def __init__(self, model, args: VIPTrainingConfig, train_dataset, processing_class, callbacks=None):
        freeze_all_but_glimpse(model)
        data = {
            "train_dataset": train_dataset,
            "data_collator": GlimpseCollator(processing_class, args.max_answer_tokens),
        }
        super().__init__(model=model, args=args, processing_class=processing_class, callbacks=callbacks, **data)
        self._mask_fn = losses.mask_fn(args.relaxation, args.relaxation_temperature, self.threshold)

    @property
    def threshold(self) -> float:
        """The glimpse's keep threshold (0.0 keeps every visual token), which the hard-mask metrics use."""
        return glimpse_module(self.model).config.threshold

    # ---- the loss -------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: VIPTrainingConfig = self.args
        labels = inputs["labels"]
        batch = model_inputs(inputs)
        shared = args.teacher_forward == "shared"
        if not shared:
            with torch.no_grad():
                teacher = model(**batch, glimpse_mode="off", use_cache=False).logits
        student = model(
            **batch,
            glimpse_mode="mask",
            glimpse_mask_fn=self._mask_fn,
            glimpse_prompt_length=inputs["prompt_length"],
            glimpse_teacher=shared,
            use_cache=False,
        )
        if shared:
            teacher = student.teacher_logits
        result = student.glimpse
        visual = result.visual_mask
        probs = torch.sigmoid(result.logits.float())
        terms = {"kl": losses.answer_kl(teacher, student.logits, labels)}
        terms["sparsity"] = losses.sparsity_loss(probs, visual, args.sparsity, args.target_keep_ratio)
        loss = args.kl_weight * terms["kl"] + args.sparsity_weight * terms["sparsity"]
        if args.lm_weight > 0:
            terms["lm"] = losses.answer_nll(student.logits, labels)
            loss = loss + args.lm_weight * terms["lm"]
        box_loss, recall, precision = self._box_terms(result, inputs)
        if box_loss is not None:
            terms["box"] = box_loss
            if args.box_weight > 0:
                loss = loss + args.box_weight * box_loss
        self._log_terms(terms, result, probs, recall, precision)
        return (loss, student) if return_outputs else loss

    def _box_terms(self, result, inputs):
        """Dice + BCE against the token cells under each image's boxes; recall / precision of the hard keep."""
        args: VIPTrainingConfig = self.args
        threshold = self.threshold
        total, count, recalls, precisions = 0.0, 0, [], []
        for b, (boxes, sizes) in enumerate(zip(inputs["boxes"], inputs["image_sizes"])):
            if not boxes or len(sizes) != 1:  # boxes are defined for single-image rows only
                continue
            logits = result.image_values(result.logits, b)[0]
            target = losses.box_targets(boxes, sizes[0], tuple(logits.shape)).to(logits.device)
            total = total + losses.dice_bce(
                logits.flatten(),
                target.flatten(),
                args.box_dice_weight,
                args.box_bce_weight,
                args.box_pos_weight,
                args.box_focal_gamma,
            )
            count += 1
            r, p = losses.recall_precision(torch.sigmoid(logits.detach().float()) > threshold, target)
            recalls.append(r)
            precisions.append(p)
        if count == 0:
            return None, recalls, precisions
        return total / count, recalls, precisions

    def _log_terms(self, terms, result, probs, recalls, precisions) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        for name, value in terms.items():
            metrics[f"loss_{name}"].append(self.accelerator.gather_for_metrics(value.detach()).mean().item())
        threshold = self.threshold
        visual = result.visual_mask.float()
        hard = ((probs > threshold).float() * visual).sum(1)
        metrics["keep_ratio"].append(self._mean(hard / visual.sum(1).clamp(min=1)))
        metrics["keep_prob"].append(self._mean((probs * visual).sum(1) / visual.sum(1).clamp(min=1)))
        metrics["kept_tokens"].append(self._mean(hard))
        if recalls:
            metrics["box_recall"].append(sum(recalls) / len(recalls))
            metrics["box_precision"].append(sum(precisions) / len(precisions))

    def _mean(self, values: torch.Tensor) -> float:
        return self.accelerator.gather_for_metrics(values.detach().float()).mean().item()
