"""`glimpserl export`: adapter and merged forms of a LoRA run give the same pruned model; full runs; bad input."""

import json

import pytest
import torch
from helpers import batch, image
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import Qwen2_5_VLForConditionalGeneration

from glimpserl.cli import main
from glimpserl.models import GlimpseConfig, add_glimpse, glimpse_module, load_glimpse, save_glimpse
from glimpserl.models.loading import load_model
from glimpserl.models.tiny import save_tiny
from glimpserl.rl.runs import export
from glimpserl.rl.runs.export import load_exported

LORA_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def _perturb(params, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _inputs(processor) -> dict:
    return batch(
        processor,
        ["What colour is the square?", "Which digit is written in the box on the left?"],
        [[image(112, 112, 0)], [image(84, 168, 1)]],
    )


def _run(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits, out.glimpse.keep_mask


def _assert_same(a, b) -> None:
    assert (a[0] - b[0]).abs().max() <= 1e-5
    assert torch.equal(a[1], b[1])


def _keys(path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_processor):
    """A fake stage-2 LoRA run on a saved tiny base (seed 0, the built-in one) and the run's own logits."""
    root = tmp_path_factory.mktemp("export")
    base = save_tiny(root / "base", seed=0)
    model = add_glimpse(load_model(str(base)), GlimpseConfig(max_keep_ratio=0.3))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS))
    _perturb([p for n, p in peft_model.named_parameters() if "lora_B" in n], seed=1, scale=0.05)
    _perturb(glimpse_module(peft_model).parameters(), seed=2, scale=0.05)
    run = root / "run"
    peft_model.save_pretrained(run)
    save_glimpse(peft_model, run)
    tiny_processor.save_pretrained(run)
    inputs = _inputs(tiny_processor)
    return {"root": root, "base": base, "run": run, "inputs": inputs, "expected": _run(peft_model.eval(), inputs)}


def test_peft_wraps_and_merges_the_glimpse_model(lora_run):
    model = load_glimpse(load_model(str(lora_run["base"])), lora_run["run"])
    peft_model = PeftModel.from_pretrained(model, str(lora_run["run"]))
    with peft_model.disable_adapter():  # the adapter is not a no-op: it even changes which tokens are kept
        plain = _run(peft_model, lora_run["inputs"])
    expected_logits, expected_keep = lora_run["expected"]
    assert (plain[0] - expected_logits).abs().max() > 1e-2 and not torch.equal(plain[1], expected_keep)
    merged = peft_model.merge_and_unload()
    assert merged is model and type(merged)._is_glimpse_class and type(merged.model)._is_glimpse_class
    assert not [n for n, _ in merged.named_modules() if "lora" in n]
    _assert_same(_run(merged, lora_run["inputs"]), lora_run["expected"])


def test_adapter_and_merged_exports_reload_to_the_same_pruned_model(lora_run, capsys):
    run, root, inputs = lora_run["run"], lora_run["root"], lora_run["inputs"]
    assert main(["export", str(run), "--out", str(root / "adapter")]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "adapter"
    assert main(["export", str(run), "--out", str(root / "merged"), "--merge"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "merged" and report["base_model"] == str(lora_run["base"])
    assert {"config.json", "model.safetensors", "glimpse.safetensors", "processor_config.json"} <= set(report["files"])
    assert not any(name.startswith("adapter_") for name in report["files"])

    adapter_dir, merged_dir = root / "adapter", root / "merged"
    base = load_glimpse(load_model(str(lora_run["base"])), adapter_dir)
    adapter = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    merged = load_glimpse(Qwen2_5_VLForConditionalGeneration.from_pretrained(merged_dir).eval(), merged_dir)
    for model in (adapter, merged):
        _assert_same(_run(model, inputs), lora_run["expected"])
    for path in (adapter_dir, merged_dir):
        model, processor = load_exported(path)  # through AutoModelForImageTextToText
        assert processor.chat_template and processor.tokenizer.padding_side == "left"
        _assert_same(_run(model, inputs), lora_run["expected"])

    keys = _keys(merged_dir / "model.safetensors")
    assert keys and not [k for k in keys if "lora_" in k or "glimpse" in k]
    assert not list(root.glob(".*partial*"))


def test_merge_onto_builtin_base_in_bfloat16(lora_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLIMPSERL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "merged-bf16"
    args = ["export", str(lora_run["run"]), "--out", str(out), "--merge", "--base", "builtin:tiny-qwen2_5_vl"]
    assert main([*args, "--dtype", "bfloat16"]) == 0
    assert json.loads(capsys.readouterr().out)["base_model"] == "builtin:tiny-qwen2_5_vl"
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    model, _ = load_exported(out)
    logits, keep = _run(model, lora_run["inputs"])
    assert logits.dtype == torch.float32 and keep.shape == lora_run["expected"][1].shape
    # The adapter form records the --base it was exported with, so it reloads on its own.
    assert main([*args[:3], str(tmp_path / "a"), "--base", "builtin:tiny-qwen2_5_vl"]) == 0
    adapter_config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "builtin:tiny-qwen2_5_vl"
    _assert_same(_run(load_exported(tmp_path / "a")[0], lora_run["inputs"]), lora_run["expected"])


def test_full_run_exports_a_standard_checkpoint(lora_run, tmp_path, tiny_processor):
    model = add_glimpse(load_model(str(lora_run["base"])), GlimpseConfig(max_keep_ratio=0.3))
    _perturb(model.parameters(), seed=3, scale=0.01)
    run = tmp_path / "full-run"
    model.save_pretrained(run)
    save_glimpse(model, run)
    tiny_processor.save_pretrained(run)
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    assert not [k for k in _keys(tmp_path / "out" / "model.safetensors") if "glimpse" in k]
    exported, _ = load_exported(tmp_path / "out")
    _assert_same(_run(exported, lora_run["inputs"]), _run(model, lora_run["inputs"]))


def _error(args, capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("glimpserl export: error:")
    return err


def test_bad_inputs_are_clear_errors(lora_run, tmp_path, capsys):
    run = lora_run["run"]
    no_glimpse = tmp_path / "no-glimpse"
    no_glimpse.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "glimpse_config.json"):
        (no_glimpse / name).write_bytes((run / name).read_bytes())
    assert "glimpse.safetensors missing" in _error(["export", str(no_glimpse), "--out", str(tmp_path / "o")], capsys)

    assert "does not exist" in _error(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for name in ("glimpse.safetensors", "glimpse_config.json"):
        (no_weights / name).write_bytes((run / name).read_bytes())
    assert "neither a LoRA adapter" in _error(["export", str(no_weights), "--out", str(tmp_path / "o")], capsys)

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("old")
    assert "--overwrite" in _error(["export", str(run), "--out", str(busy)], capsys)
    assert (busy / "keep.txt").read_text() == "old"
    assert main(["export", str(run), "--out", str(busy), "--overwrite"]) == 0
    assert not (busy / "keep.txt").exists() and (busy / "adapter_model.safetensors").is_file()

    assert "--dtype" in _error(["export", str(run), "--out", str(tmp_path / "o"), "--dtype", "bfloat16"], capsys)
    assert "replace the run folder" in _error(["export", str(run), "--out", str(run), "--overwrite"], capsys)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".*partial*"))


def test_adapter_base_problems_are_clear_errors(lora_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for path in lora_run["run"].iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    assert "pass --base" in _error(["export", str(run), "--out", str(tmp_path / "o"), "--merge"], capsys)
    (run / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/gone/base"}))
    err = _error(["export", str(run), "--out", str(tmp_path / "o"), "--merge"], capsys)
    assert "Cannot load the base model '/gone/base'" in err and "pass --base" in err
    assert not (tmp_path / "o").exists()


def test_failed_export_leaves_nothing_behind(lora_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def broken(run, tmp):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_copy_processor", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_run(lora_run["run"], out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "keep.txt").read_text() == "old"


def test_export_killed_between_its_renames_puts_the_previous_export_back(lora_run, tmp_path, capsys):
    """A kill after the previous export was moved aside and before the new one took its place leaves only the hidden
    `.old` folder; the next export puts it back (and still asks for --overwrite before replacing it)."""
    out = tmp_path / "out"
    assert main(["export", str(lora_run["run"]), "--out", str(out)]) == 0
    aside = tmp_path / ".out.old-0123abcd"
    out.rename(aside)  # the state such a kill leaves
    assert "--overwrite" in _error(["export", str(lora_run["run"]), "--out", str(out)], capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and export.inspect_run(out).kind == "adapter"
