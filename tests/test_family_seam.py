"""The model-family seam: family internals stay in models/<family>/, every family folder has the same files, and
the family-agnostic code reaches every family through its adapter."""

import inspect
import re
from pathlib import Path

import pytest

from glimpserl.models import adapter_for_type, supported_model_types
from glimpserl.models.loading import BUILTIN_MODELS

ROOT = Path(__file__).resolve().parents[1]
FAMILY_FILES = {"__init__.py", "adapter.py", "modeling.py", "tiny.py"}
INTERNALS = re.compile(
    r"image_grid_thw|mrope|<\|image_pad\|>|\.visual\b|vision_tower|compute_3d_position_ids|get_rope_index|"
    r"rope_deltas|expand\(3,"
)
"""A family's inputs, modules and position layout (Qwen's grids, M-RoPE and pad token; LLaVA's CLIP tower)."""
BENCHMARK_SEAM = ROOT / "benchmarks/families.py"
"""The benchmarks' own family seam (how each family is built at a benchmark shape, fed and counted in FLOPs): the one
module outside models/ that names family internals, one entry per family."""


def _family_folders() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "models").glob("*/adapter.py"))


def _sources() -> list[Path]:
    families = _family_folders()
    skip = {ROOT / name for name in (".venv", ".cache", "tests", "outputs", ".git")}
    return [
        path
        for path in sorted(ROOT.rglob("*.py"))
        if not any(path.is_relative_to(s) for s in skip) and not any(path.is_relative_to(f) for f in families)
    ]


def test_no_family_internals_outside_the_family_folders():
    found = []
    for path in _sources():
        text = path.read_text()
        hits = sorted({m.group(0) for m in INTERNALS.finditer(text)})
        if not hits:
            continue
        if path != BENCHMARK_SEAM:
            found.append(f"{path.relative_to(ROOT)}: {hits}")
    assert not found, "family internals outside models/<family>/:\n" + "\n".join(found)


def test_the_grep_sees_what_it_looks_for():
    qwen = (ROOT / "models/qwen2_vl/modeling.py").read_text()
    llava = (ROOT / "models/llava/modeling.py").read_text()
    assert INTERNALS.search(qwen) and INTERNALS.search(llava)
    assert "vision_tower" in INTERNALS.findall("inner.vision_tower.encoder")
    assert ROOT / "models/forward.py" in _sources() and ROOT / "models/qwen2_vl/adapter.py" not in _sources()


def test_every_family_folder_has_the_same_files_and_ships():
    block = (ROOT / "pyproject.toml").read_text().split("packages = [", 1)[1].split("]", 1)[0]
    packages = set(re.findall(r'"([\w.]+)"', block))
    folders = _family_folders()
    assert {f.name for f in folders} >= {"qwen2_vl", "qwen3_vl", "llava"}
    for folder in folders:
        assert {p.name for p in folder.glob("*.py")} == FAMILY_FILES, folder
        assert f"glimpserl.models.{folder.name}" in packages, f"{folder.name} is missing from pyproject's packages"


def test_every_model_type_has_an_adapter_and_a_builtin_tiny_model():
    assert {"llava", "qwen2_5_vl", "qwen2_vl", "qwen3_vl"} <= set(supported_model_types())
    for model_type in supported_model_types():
        adapter = adapter_for_type(model_type)
        assert model_type in adapter.model_types
        assert BUILTIN_MODELS[f"builtin:tiny-{model_type}"] == model_type
        assert adapter.default_readout in ("logits", "log_softmax")
    assert adapter_for_type("llava").default_readout == "log_softmax"
    assert adapter_for_type("qwen2_5_vl").default_readout == "logits"
    with pytest.raises(ValueError, match=r"Unknown model family 'idefics3'.*llava"):
        adapter_for_type("idefics3")


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "llava", "qwen3_vl"])
def test_glimpse_classes_show_their_base_signature_plus_the_glimpse_keywords(model_type):
    """generate checks its model kwargs against forward signatures and prepares inputs by them: a glimpse class takes
    what its base takes (except precomputed encoder outputs: the glimpse runs the vision encoder itself)."""
    from glimpserl.models import PruneRequest, add_glimpse, get_adapter
    from glimpserl.models.tiny import build_tiny_model

    model = build_tiny_model(model_type)
    base_class = type(model)
    base_outer = inspect.signature(type(model).forward).parameters
    base_inner = inspect.signature(type(model.model).forward).parameters
    add_glimpse(model)
    glimpse = [f"glimpse_{name}" for name in PruneRequest.__dataclass_fields__]
    inner = get_adapter(model).inner_model(model)
    for base, cls in ((base_outer, type(model)), (base_inner, type(inner))):
        params = inspect.signature(cls.forward).parameters
        assert list(params) == [p for p in base if p not in ("mm_encoder_outputs", "kwargs")] + glimpse + ["kwargs"]
    assert issubclass(type(model), base_class) and type(model).__name__ == base_class.__name__  # saved configs


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "llava", "qwen3_vl"])
def test_side_path_projects_keys_as_each_familys_own_layer_does(model_type):
    """The side path recomputes a layer's rotated keys/values (a gradient-checkpointed layer hands over none): they
    equal what the layer itself caches, per-head q / k norms included (Qwen3's layers have them, the others not)."""
    import torch
    from transformers import DynamicCache

    from glimpserl.models import get_adapter
    from glimpserl.models.side_path import prompt_keys_values
    from glimpserl.models.tiny import build_tiny_model

    model = build_tiny_model(model_type)
    adapter = get_adapter(model)
    text = adapter.text_model(adapter.inner_model(model))
    layer = text.layers[1]
    hidden = torch.randn(2, 9, text.config.hidden_size, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(9).view(1, 1, -1).expand(3, 2, -1)
    rope = adapter.rotary_tables(text, hidden, positions)
    cache = DynamicCache(config=text.config)
    with torch.no_grad():
        layer(hidden, attention_mask=None, position_embeddings=rope, cache=cache, use_cache=True)
        keys, values = prompt_keys_values(layer, hidden, rope, adapter.rotary())
    assert hasattr(layer.self_attn, "k_norm") == (model_type == "qwen3_vl")
    assert (keys - cache.layers[1].keys).abs().max() <= 1e-5
    assert (values - cache.layers[1].values).abs().max() <= 1e-5
