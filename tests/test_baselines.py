"""Training-free token selectors: hand-computed selections and scores, the contract, the registry errors."""

import math

import pytest
import torch

from glimpserl.models.baselines import (
    SELECTORS,
    build_selector,
    cdpruner_kernel,
    cdpruner_relevance,
    divprune_order,
    dpp_greedy,
    gprune_scores,
    gprune_transition,
    keep_count,
    merge_into_kept,
    register_selector,
    visionzip_split,
)


def unit_at(degrees: float, norm: float = 1.0) -> list[float]:
    rad = math.radians(degrees)
    return [norm * math.cos(rad), norm * math.sin(rad)]


# ---------------------------------------------------------------- G-Prune
# Four 2D tokens: A at 0 deg (norm 2), B at 60 deg (norm 1), C at 120 deg (norm 1), D at 270 deg (norm 3).
# Cosines: A-B = 0.5, B-C = 0.5, A-C = -0.5, D-anything <= 0. With edge_threshold 0.4 the edges are
# A-B, B-C and every self-loop (cos 1); D only has its self-loop.
# Temperature T = 0.5 / ln 3 makes exp(1/T) / exp(0.5/T) = exp(0.5/T) = 3: a self-loop weighs 3, a
# neighbour 1. Row-normalised transition W (row = where a node's score goes):
#   A: [3/4, 1/4, 0, 0]   B: [1/5, 3/5, 1/5, 0]   C: [0, 1/4, 3/4, 0]   D: [0, 0, 0, 1]
# s0 = norms = [2, 1, 1, 3]; s_new[j] = sum_i W[i, j] s[i]:
#   s1 = [3/4*2 + 1/5*1, 1/4*2 + 3/5*1 + 1/4*1, 1/5*1 + 3/4*1, 3] = [1.7, 1.35, 0.95, 3]
#   s2 = [3/4*1.7 + 1/5*1.35, 1/4*1.7 + 3/5*1.35 + 1/4*0.95, 1/5*1.35 + 3/4*0.95, 3]
#      = [1.545, 1.4725, 0.9825, 3]
#   s3 = [3/4*1.545 + 1/5*1.4725, 1/4*1.545 + 3/5*1.4725 + 1/4*0.9825, 1/5*1.4725 + 3/4*0.9825, 3]
#      = [1.45325, 1.515375, 1.031375, 3]
# Every step conserves the total (7). B, the hub, overtakes A at the third step.
GRAPH = torch.tensor([unit_at(0, 2.0), unit_at(60), unit_at(120), unit_at(270, 3.0)])
GRAPH_KNOBS = {"edge_threshold": 0.4, "temperature": 0.5 / math.log(3)}


def test_gprune_transition_by_hand():
    expected = torch.tensor([[3 / 4, 1 / 4, 0, 0], [1 / 5, 3 / 5, 1 / 5, 0], [0, 1 / 4, 3 / 4, 0], [0, 0, 0, 1]])
    torch.testing.assert_close(gprune_transition(GRAPH, **GRAPH_KNOBS), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("iterations", "expected"),
    [
        (0, [2.0, 1.0, 1.0, 3.0]),
        (1, [1.7, 1.35, 0.95, 3.0]),
        (2, [1.545, 1.4725, 0.9825, 3.0]),
        (3, [1.45325, 1.515375, 1.031375, 3.0]),
    ],
)
def test_gprune_scores_by_hand(iterations, expected):
    scores = gprune_scores(GRAPH, iterations=iterations, **GRAPH_KNOBS)
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-5, rtol=0)


def test_gprune_selection_follows_propagation():
    two_steps = build_selector("gprune", iterations=2, **GRAPH_KNOBS)
    three_steps = build_selector("gprune", iterations=3, **GRAPH_KNOBS)
    assert two_steps.select(features=GRAPH, keep=2).tolist() == [True, False, False, True]
    assert three_steps.select(features=GRAPH, keep=2).tolist() == [False, True, False, True]


def test_gprune_defaults_conserve_score_and_break_ties_low():
    feats = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    scores = gprune_scores(feats)  # threshold 0.5, T 0.03, 5 iterations
    torch.testing.assert_close(scores.sum(), feats.norm(dim=-1).sum())
    # Three identical tokens: identical scores; keep=2 takes the two lower indices.
    same = torch.ones(3, 4)
    assert build_selector("gprune").select(features=same, keep=2).tolist() == [True, True, False]


# ---------------------------------------------------------------- DivPrune
def test_divprune_greedy_order_by_hand():
    # Angles 0, 10, 90, 180, 95 deg (norms vary; only directions matter).
    feats = torch.tensor([unit_at(0, 5.0), unit_at(10), unit_at(90, 2.0), unit_at(180), unit_at(95, 0.5)])
    # Nearest-other cosine distances: 0:1-cos10=.015, 1:.015, 2:1-cos5=.004, 3:1-cos85=.913, 4:.004 -> start 3.
    # Distance to {3}: 0:2, 1:1.985, 2:1, 4:.913 -> add 0.
    # Distance to {3,0}: 1:.015, 2:min(1, 1)=1, 4:min(.913, 1.087)=.913 -> add 2.
    # Distance to {3,0,2}: 1:.015, 4:min(.913, 1.087, .004)=.004 -> add 1; then 4.
    assert divprune_order(feats, 5).tolist() == [3, 0, 2, 1, 4]
    mask = build_selector("divprune").select(features=feats, keep=3)
    assert mask.tolist() == [True, False, True, True, False]


def test_divprune_duplicates_are_not_picked_twice():
    feats = torch.ones(4, 3)
    assert divprune_order(feats, 4).tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------- FastV
def test_fastv_keeps_most_attended():
    feats = torch.zeros(5, 2)
    attn = torch.tensor([0.1, 0.5, 0.2, 0.15, 0.05])
    fastv = build_selector("fastv")
    assert fastv.select(features=feats, keep=2, attn_last=attn).tolist() == [False, True, True, False, False]
    ties = torch.tensor([0.3, 0.1, 0.3, 0.3, 0.0])
    assert fastv.select(features=feats, keep=2, attn_last=ties).tolist() == [True, False, True, False, False]


# ---------------------------------------------------------------- VisionZip
def test_visionzip_dominant_then_evenly_spaced_contextual():
    feats = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    attn = torch.tensor([0.05, 0.30, 0.02, 0.20, 0.01, 0.10, 0.03, 0.25, 0.02, 0.02])
    # keep 5, fraction 0.6 -> 3 dominant: tokens 1, 7, 3. Rest = [0, 2, 4, 5, 6, 8, 9] (7 tokens);
    # 2 contextual at floor((2j+1) * 7 / 4) = 1, 5 -> rest[1] = 2, rest[5] = 8.
    dominant, contextual = visionzip_split(feats, 5, attn, 0.6)
    assert torch.nonzero(dominant).squeeze(1).tolist() == [1, 3, 7]
    assert torch.nonzero(contextual).squeeze(1).tolist() == [2, 8]
    mask = build_selector("visionzip", dominant_fraction=0.6).select(features=feats, keep=5, vision_attn=attn)
    assert torch.nonzero(mask).squeeze(1).tolist() == [1, 2, 3, 7, 8]


def test_visionzip_default_fraction_matches_paper_split():
    feats = torch.zeros(200, 2)
    dominant, contextual = visionzip_split(feats, 64, torch.rand(200), 54 / 64)
    assert (int(dominant.sum()), int(contextual.sum())) == (54, 10)


def test_merge_into_kept_by_hand():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 1.0]])
    keep = torch.tensor([True, False, True, False])
    # 1 is closest to 0, 3 to 2: row 0 = mean(f0, f1), row 1 = mean(f2, f3).
    expected = torch.tensor([[0.95, 0.05], [0.1, 1.0]])
    torch.testing.assert_close(merge_into_kept(feats, keep), expected)
    # Only token 2 may absorb: token 0 unchanged, token 2 = mean(f2, f1, f3).
    only_2 = torch.tensor([False, False, True, False])
    expected = torch.tensor([[1.0, 0.0], [1.1 / 3, 2.1 / 3]])
    torch.testing.assert_close(merge_into_kept(feats, keep, receivers=only_2), expected)
    with pytest.raises(ValueError, match="subset of keep_mask"):
        merge_into_kept(feats, keep, receivers=torch.tensor([False, True, False, False]))


# ---------------------------------------------------------------- Random
def test_random_is_reproducible_by_seed_with_exact_count():
    feats = torch.zeros(100, 2)
    rand = build_selector("random")
    first = rand.select(features=feats, keep=37, generator=torch.Generator().manual_seed(7))
    again = rand.select(features=feats, keep=37, generator=torch.Generator().manual_seed(7))
    other = rand.select(features=feats, keep=37, generator=torch.Generator().manual_seed(8))
    assert int(first.sum()) == 37
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# ---------------------------------------------------------------- CDPruner
# Four 2D tokens: f0 = (1, 0), f1 = (1, 0) (a duplicate of f0), f2 = (0, 1), f3 = (1, 1)/sqrt(2); cosines
# f0.f3 = f2.f3 = 1/sqrt(2), f0.f2 = 0. Qualities q = (1, 0.5, 0.8, 0.9), L = diag(q) S diag(q):
#   diag L = (1, 0.25, 0.64, 0.81); L[0] = (1, 0.5, 0, 0.9/sqrt 2); L[2] = (0, 0, 0.64, 0.72/sqrt 2)
# Step 1: largest gain is f0 (1). Residual e0 = L[0] / 1, gains - e0^2 = (0, 0, 0.64, 0.81 - 0.405 = 0.405).
# Step 2: f2 (0.64). e2 = (L[2] - e0[2] e0) / 0.8 = (0, 0, 0.8, 0.9/sqrt 2), gains - e2^2 = (., 0, ., 0): f1 and f3
# lie in the span of f0 and f2 and add no volume. Step 3+: filled by quality, f3 (0.9) before f1 (0.5).
# Brute force over pairs agrees with the greedy pair: det L_{0,2} = 0.64 > det L_{0,3} = 0.405 > det L_{2,3} = 0.2592.
DPP_FEATURES = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2**-0.5, 2**-0.5]])
DPP_QUALITY = torch.tensor([1.0, 0.5, 0.8, 0.9])


def test_cdpruner_kernel_and_greedy_map_by_hand():
    kernel = cdpruner_kernel(DPP_FEATURES, DPP_QUALITY)
    assert torch.allclose(kernel.diagonal(), torch.tensor([1.0, 0.25, 0.64, 0.81]))
    assert kernel[0, 3].item() == pytest.approx(0.9 / math.sqrt(2), abs=1e-6)
    assert dpp_greedy(kernel, 4, fallback=DPP_QUALITY).tolist() == [0, 2, 3, 1]
    pairs = {(i, j): torch.linalg.det(kernel[[i, j]][:, [i, j]].double()).item() for i in range(4) for j in range(i)}
    assert max(pairs, key=pairs.get) == (2, 0)
    assert pairs[(2, 0)] == pytest.approx(0.64) and pairs[(3, 0)] == pytest.approx(0.405, abs=1e-6)


def test_cdpruner_relevance_by_hand():
    # cosines to the instruction (1, 0): 1, 0, 1/sqrt(2); min-max rescaled to (0, 1], the least relevant ~0.
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    relevance = cdpruner_relevance(features, torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(relevance, torch.tensor([1.0, 0.0, 2**-0.5]) + 1e-6, atol=1e-6)
    flipped = cdpruner_relevance(features, torch.tensor([[1.0, 0.0]]), negate=True)
    assert torch.allclose(flipped, torch.tensor([0.0, 1.0, 1 - 2**-0.5]) + 1e-6, atol=1e-6)


def test_cdpruner_follows_the_instruction_and_then_diversity():
    """Two clusters of look-alike tokens; the instruction points at the second cluster. Keeping 2: the most relevant
    token first, then the one that adds the most volume (the other cluster), never its own duplicate."""
    features = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    selector = build_selector("cdpruner")
    one = selector.select(features=features, keep=1, instruction=torch.tensor([[0.0, 1.0]]))
    assert one.nonzero().flatten().tolist() == [2]
    two = selector.select(features=features, keep=2, instruction=torch.tensor([[0.05, 1.0]]))
    assert two[[2, 3]].sum() == 1 and two[[0, 1]].sum() == 1
    with pytest.raises(ValueError, match="needs instruction"):
        selector.select(features=features, keep=2)
    with pytest.raises(ValueError, match=r"instruction must have shape \[m >= 1, 2\]"):
        selector.select(features=features, keep=2, instruction=torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"theta must be in \(0, 1\)"):
        build_selector("cdpruner", theta=1.0)


# ---------------------------------------------------------------- The contract, for every selector
SIGNAL_INPUTS = {"features": torch.randn(12, 6, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)}
SIGNAL_INPUTS["attn_last"] = torch.softmax(torch.randn(12, generator=torch.Generator().manual_seed(2)), 0)
SIGNAL_INPUTS["vision_attn"] = torch.rand(12, generator=torch.Generator().manual_seed(3))
SIGNAL_INPUTS["instruction"] = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize("keep", [1, 5, 12])
def test_every_selector_keeps_exactly_keep(name, keep):
    selector = build_selector(name)
    mask = selector.select(keep=keep, generator=torch.Generator().manual_seed(0), **SIGNAL_INPUTS)
    assert mask.dtype == torch.bool and mask.shape == (12,) and int(mask.sum()) == keep


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_rejects_bad_keep_and_missing_signals(name):
    selector = build_selector(name)
    for keep in (0, 13):
        with pytest.raises(ValueError, match=r"keep must be an int in \[1, 12\]"):
            selector.select(keep=keep, **SIGNAL_INPUTS)
    for signal in selector.needs:
        with pytest.raises(ValueError, match=f"needs {signal}"):
            selector.select(keep=3, **{**SIGNAL_INPUTS, signal: None})


def test_needs():
    assert {name: set(cls.needs) for name, cls in SELECTORS.items()} == {
        "cdpruner": {"instruction"},
        "divprune": set(),
        "fastv": {"attn_last"},
        "gprune": set(),
        "random": set(),
        "visionzip": {"vision_attn"},
    }


# ---------------------------------------------------------------- keep_count and the registry errors
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"keep_ratio": 0.5}, 5),
        ({"keep_ratio": 0.25}, 3),  # 2.5 rounds half up
        ({"keep_ratio": 1.0}, 10),
        ({"keep_ratio": 0.01}, 1),  # at least one token
        ({"budget": 4}, 4),
        ({"budget": 50}, 10),  # at most n
    ],
)
def test_keep_count(kwargs, expected):
    assert keep_count(10, **kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_ratio": 0.0}, r"keep_ratio must be in \(0, 1\]"),
        ({"keep_ratio": 1.5}, r"keep_ratio must be in \(0, 1\]"),
        ({"budget": 0}, "budget must be an int >= 1"),
        ({}, "exactly one of"),
        ({"keep_ratio": 0.5, "budget": 3}, "exactly one of"),
    ],
)
def test_keep_count_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keep_count(10, **kwargs)


def test_unknown_selector_lists_valid_names():
    with pytest.raises(
        ValueError, match="unknown token selector 'tome'; valid names: cdpruner, divprune, fastv, gprune, random"
    ):
        build_selector("tome")


def test_bad_param_is_named():
    with pytest.raises(ValueError, match="no parameter 'temprature'; valid parameters: edge_threshold, temperature"):
        build_selector("gprune", temprature=0.1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        build_selector("gprune", temperature=0.0)
    with pytest.raises(ValueError, match=r"dominant_fraction must be in \[0, 1\]"):
        build_selector("visionzip", dominant_fraction=1.2)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_selector("gprune")(type("Other", (), {"needs": frozenset()}))
