"""Analytic prefill FLOPs of a vision-language model, unpruned and pruned by the glimpse.

The counts are family-agnostic: a `VisionShape` describes the vision tower (windowed or full attention, MLP linears,
a CLS token, the merger / projector), and benchmarks/families.py reads each benchmarked family's shapes from its
config (Qwen2.5-VL, Qwen3-VL, LLaVA-1.5).

Counted: every matrix multiply, 2*m*n*k for a Linear (or the patch-embedding Conv3d) of m tokens from n to k
features, and 2 * 2 * pairs * heads * head_dim for attention (scores q.k and the weighted sum of values) over `pairs`
(query, key) pairs. Norms, activations, rotary embeddings, softmax and gathers are not counted (they are O(tokens *
width), next to O(tokens * width**2)).

Attention pairs:
- decoder self-attention is causal and runs through SDPA with `is_causal=True` (no padding, batch 1), whose kernels
  skip the masked half: S * (S + 1) / 2 pairs for S tokens;
- the vision encoder's windowed and full-image attention and the VIP's attention within each image are
  bidirectional: n**2 pairs per window / image;
- the glimpse token is one query against the whole prompt and itself.

The pruned prefill = vision encoder + decoder layers 0..K on the full prompt + the glimpse's own work (at each layer
l < K: its own query/key/value/output projections, attention over the prompt and itself, and MLP; at layer K: its
query against the prompt's keys; the prompt's keys and values are read from the layers' cache when generating,
recomputed without one) + the VIP + layers K+1.. on (text + kept) tokens + the LM head on the last token.
A training-free pruner (`selection_flops`) replaces the glimpse and the VIP by its own selection work.
The unpruned prefill = vision encoder + every decoder layer on the full prompt + the LM head on the last token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


def linear(tokens: int, fan_in: int, fan_out: int) -> int:
    """Multiply-add FLOPs of a Linear [tokens, fan_in] -> [tokens, fan_out]."""
    return 2 * tokens * fan_in * fan_out


def attention(pairs: int, heads: int, head_dim: int) -> int:
    """Scores (q.k) plus the weighted sum of values over `pairs` (query, key) pairs."""
    return 2 * 2 * pairs * heads * head_dim


def causal_pairs(tokens: int) -> int:
    return tokens * (tokens + 1) // 2


@dataclass(frozen=True)
class TextShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


@dataclass(frozen=True)
class VisionShape:
    """A vision tower: `depth` blocks (qkv + output projections, an MLP of `mlp_linears` linears), windowed attention
    except in `full_blocks` (every block when `window` is None), then the merger / projector on each image's merged
    tokens."""

    hidden: int
    depth: int
    heads: int
    intermediate: int
    patch_volume: int
    """in_channels * temporal_patch * patch**2: the patch embedding's fan-in."""
    merge: int
    """Patches merged into one visual token per side (2 for Qwen, 1 for LLaVA)."""
    window: int | None
    """Window side in merged tokens (window_size // merge // patch); None: full attention in every block."""
    full_blocks: tuple[int, ...]
    merger: tuple[tuple[int, int], ...]
    """(fan_in, fan_out) of each linear of the merger / projector, per merged token."""
    mergers: int = 1
    """How many mergers run on every merged token (Qwen3-VL: the final one and one per DeepStack block)."""
    mlp_linears: int = 3
    """3: a gated (SwiGLU) MLP; 2: fc1 / fc2."""
    extra_tokens: int = 0
    """Tokens every block sees beside the patches (CLIP's CLS), dropped before the projector."""


@dataclass(frozen=True)
class VIPShape:
    hidden: int
    intermediate: int
    blocks: int
    readout_heads: int
    vision_size: int


def _window_sides(n: int, window: int) -> list[int]:
    return [window] * (n // window) + ([n % window] if n % window else [])


def vision_flops(shape: VisionShape, grid_thw: list[tuple[int, int, int]]) -> int:
    """Vision encoder FLOPs for images given as (t, h, w) patch grids."""
    total = 0
    d, unit = shape.hidden, shape.merge**2
    for t, h, w in grid_thw:
        patches = t * h * w
        tokens = patches + t * shape.extra_tokens
        per_block = (
            linear(tokens, d, 3 * d) + linear(tokens, d, d) + shape.mlp_linears * linear(tokens, d, shape.intermediate)
        )
        full_pairs = t * (h * w + shape.extra_tokens) ** 2
        window_pairs = full_pairs
        if shape.window is not None:
            rows, cols = _window_sides(h // shape.merge, shape.window), _window_sides(w // shape.merge, shape.window)
            window_pairs = t * sum((r * c * unit) ** 2 for r in rows for c in cols)
        total += linear(patches, shape.patch_volume, d)
        for block in range(shape.depth):
            pairs = full_pairs if shape.window is None or block in shape.full_blocks else window_pairs
            total += per_block + attention(pairs, shape.heads, d // shape.heads)
        merged = patches // unit
        total += shape.mergers * sum(linear(merged, fan_in, fan_out) for fan_in, fan_out in shape.merger)
    return total


def decoder_layer_flops(shape: TextShape, tokens: int) -> int:
    """One decoder layer over `tokens` causal tokens."""
    q_out, kv_out = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    projections = 2 * linear(tokens, shape.hidden, q_out) + 2 * linear(tokens, shape.hidden, kv_out)
    mlp = 3 * linear(tokens, shape.hidden, shape.intermediate)
    return projections + mlp + attention(causal_pairs(tokens), shape.heads, shape.head_dim)


def glimpse_flops(shape: TextShape, layer: int, prompt: int, cached: bool = True) -> int:
    """The glimpse token's own work beside layers 0..K over a prompt of `prompt` tokens.

    cached: the prompt's keys and values come from the generation cache the layers just filled (a prefill with
    use_cache); without a cache (training passes) the glimpse path recomputes them (keys only at layer K).
    """
    q_out, kv_out = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    embeddings = (layer + 1) * linear(1, shape.hidden, shape.hidden)  # W e_l, one vector per layer
    side_step = (
        linear(1, shape.hidden, 2 * kv_out)  # its own key and value
        + 2 * linear(1, shape.hidden, q_out)  # its query and output projection
        + attention(prompt + 1, shape.heads, shape.head_dim)
        + 3 * linear(1, shape.hidden, shape.intermediate)
    )
    readout = linear(1, shape.hidden, q_out) + 2 * prompt * shape.heads * shape.head_dim  # its query, scores only
    if not cached:
        side_step += linear(prompt, shape.hidden, 2 * kv_out)
        readout += linear(prompt, shape.hidden, kv_out)
    return embeddings + layer * side_step + readout


def vip_flops(shape: VIPShape, image_tokens: list[int]) -> int:
    """The VIP over each image's visual tokens (full attention within an image, one image at a time)."""
    d, f = shape.hidden, shape.intermediate
    total = 0
    for n in image_tokens:
        per_block = (
            linear(n, shape.vision_size, d)  # conditioning projection
            + 2 * linear(n, 2 * d, d)  # q, k from [x, cond]
            + 2 * linear(n, d, d)  # v, o
            + 3 * linear(n, d, f)  # SwiGLU
            + attention(n * n, 1, d)  # heads * head_dim = d
        )
        total += linear(n, shape.readout_heads, d) + shape.blocks * per_block + linear(n, d, 1)
    return total


COUNTED_SELECTORS = ("gprune", "divprune", "cdpruner", "fastv", "random")
"""The training-free selectors `selection_flops` counts."""


def selection_flops(
    name: str,
    text: TextShape,
    image_tokens: list[int],
    prompt: int,
    cached: bool = True,
    kept: list[int] | None = None,
) -> int:
    """A training-free pruner's own selection work in a prefill (it replaces the glimpse and the VIP).

    gprune: the [n, n] cosine similarities of the projector features (2 n^2 d) and 5 score propagations (2 n^2
    each, the selector's default); divprune: the similarities (its greedy max-min search only compares); cdpruner:
    the similarities, the relevance to the m instruction tokens (2 n m d, m <= the prompt's text tokens), the kernel
    (2 n^2) and the greedy search's residual updates (k picks: k^2 n + 2 k n); fastv: the last prompt token's query
    at layer K against the prompt's keys (read from the cache, recomputed without one); random: nothing.
    Normalisations, softmax and sorting are not counted, as everywhere here.
    """
    if name == "random":
        return 0
    if name == "cdpruner":
        text_tokens = prompt - sum(image_tokens)
        picks = kept or image_tokens
        return sum(
            2 * n * n * text.hidden + 2 * n * text_tokens * text.hidden + 2 * n * n + k * k * n + 2 * k * n
            for n, k in zip(image_tokens, picks)
        )
    if name in ("gprune", "divprune"):
        iterations = 5 if name == "gprune" else 0
        return sum(2 * n * n * text.hidden + iterations * 2 * n * n for n in image_tokens)
    if name == "fastv":
        q_out, kv_out = text.heads * text.head_dim, text.kv_heads * text.head_dim
        keys = 0 if cached else linear(prompt, text.hidden, kv_out)
        return linear(1, text.hidden, q_out) + keys + 2 * prompt * text.heads * text.head_dim
    raise ValueError(
        f"No FLOP count for pruner {name!r}; counted: glimpse, gprune, divprune, cdpruner, fastv, random."
    )


@dataclass
class PrefillFlops:
    vision: int
    decoder_full: int
    """Layers 0..K (pruned arm) or all layers (unpruned arm) on the full prompt."""
    glimpse: int
    vip: int
    decoder_pruned: int
    """Layers K+1.. on the pruned sequence (pruned arm only)."""
    lm_head: int
    selection: int = 0
    """A training-free pruner's selection work (`selection_flops`); 0 for the glimpse and unpruned."""

    @property
    def total(self) -> int:
        pruning = self.glimpse + self.vip + self.selection
        return self.vision + self.decoder_full + pruning + self.decoder_pruned + self.lm_head

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def prefill_flops(
    text: TextShape,
    vision: VisionShape,
    vip: VIPShape | None,
    grid_thw: list[tuple[int, int, int]],
    text_tokens: int,
    kept: list[int] | None = None,
    layer: int | None = None,
    pruner: str = "glimpse",
) -> PrefillFlops:
    """Prefill FLOPs of one sample: unpruned when `kept` is None, else pruned at `layer` keeping kept[i] tokens of
    image i, by the glimpse + VIP or by the training-free `pruner`. text_tokens counts every non-visual prompt
    token."""
    image_tokens = [t * h * w // vision.merge**2 for t, h, w in grid_thw]
    prompt = text_tokens + sum(image_tokens)
    common = dict(vision=vision_flops(vision, grid_thw), lm_head=linear(1, text.hidden, text.vocab))
    if kept is None:
        full = text.layers * decoder_layer_flops(text, prompt)
        return PrefillFlops(decoder_full=full, glimpse=0, vip=0, decoder_pruned=0, **common)
    if layer is None or (pruner == "glimpse" and vip is None):
        raise ValueError("A pruned count needs the pruning layer K (and the VIP shape for the glimpse).")
    glimpse = pruner == "glimpse"
    short = text_tokens + sum(kept)
    return PrefillFlops(
        decoder_full=(layer + 1) * decoder_layer_flops(text, prompt),
        glimpse=glimpse_flops(text, layer, prompt) if glimpse else 0,
        vip=vip_flops(vip, image_tokens) if glimpse else 0,
        decoder_pruned=(text.layers - layer - 1) * decoder_layer_flops(text, short),
        selection=0 if glimpse else selection_flops(pruner, text, image_tokens, prompt, kept=kept),
        **common,
    )


def simple_bound(layer: int, layers: int, kept_plus_text: int, all_tokens: int) -> float:
    """docs/method.md section 1's bound: (K+1)/L + (1 - (K+1)/L) * (kept + text) / all (decoder only, no overheads)."""
    before = (layer + 1) / layers
    return before + (1 - before) * kept_plus_text / all_tokens
