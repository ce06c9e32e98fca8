"""G-Prune (arXiv 2501.02268): keep the visual tokens that collect the most score on a similarity graph.

Our reading of the paper, with the choices it leaves open:
- Nodes are the visual tokens after the projector. Edge weights are cosine similarities of the
  L2-normalised features; edges with similarity < `edge_threshold` are removed (equal stays).
- **Self-loops stay.** The paper's adjacency is defined for every pair (i, j), and cos(x_i, x_i) = 1
  passes any threshold <= 1, so the diagonal is part of the graph. We force it even for a zero
  feature (whose cosine is 0), so every row has at least one edge and the normalisation is defined.
- **Transition weights** are a softmax over each node's kept edges:
  `W[i, j] = exp(sim[i, j] / T) / sum_{k in N(i)} exp(sim[i, k] / T)`, zero off the graph. Each row
  sums to 1: it says how node i splits its score among its neighbours (itself included).
- **Direction**: `s <- W^T s`, i.e. `s_new[j] = sum_i W[i, j] * s[i]`: each node collects the score
  flowing to it from its neighbours. The total score is conserved, and with many iterations it
  concentrates on well-connected (representative) tokens, foreground or background alike.
- Initial score = L2 norm of each un-normalised feature. Keep the top `keep` scores; ties go to the
  lower token index.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .registry import SelectorInputs, TokenSelector, cosine_similarity_matrix, register_selector, top_k_mask


def gprune_transition(features: Tensor, *, edge_threshold: float = 0.5, temperature: float = 0.03) -> Tensor:
    """Row-stochastic transition weights `[n, n]` (float32) of the G-Prune graph; see the module docstring."""
    sim = cosine_similarity_matrix(features)
    edges = sim >= edge_threshold
    edges.fill_diagonal_(True)
    logits = (sim / temperature).masked_fill(~edges, float("-inf"))
    return torch.softmax(logits, dim=-1)


def gprune_scores(
    features: Tensor, *, edge_threshold: float = 0.5, temperature: float = 0.03, iterations: int = 5
) -> Tensor:
    """G-Prune importance `[n]` (float32) of the tokens `features [n, d]` after `iterations` propagation steps."""
    transition = gprune_transition(features, edge_threshold=edge_threshold, temperature=temperature)
    scores = features.float().norm(dim=-1)
    for _ in range(iterations):
        scores = transition.T @ scores
    return scores


@register_selector("gprune")
@dataclasses.dataclass(frozen=True)
class GPruneSelector(TokenSelector):
    """Top-`keep` tokens by `gprune_scores`; needs only the features."""

    edge_threshold: float = 0.5
    temperature: float = 0.03
    iterations: int = 5

    needs = frozenset()

    def __post_init__(self) -> None:
        if not -1.0 <= self.edge_threshold <= 1.0:
            raise ValueError(f"edge_threshold is a cosine similarity in [-1, 1], got {self.edge_threshold}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise ValueError(f"iterations must be an int >= 0, got {self.iterations!r}")

    def choose(self, x: SelectorInputs) -> Tensor:
        scores = gprune_scores(
            x.features, edge_threshold=self.edge_threshold, temperature=self.temperature, iterations=self.iterations
        )
        return top_k_mask(scores, x.keep)
