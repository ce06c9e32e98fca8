"""`glimpserl eval`: one table comparing the glimpse with keep-ratio-matched baselines on the tiny model, the
downsampling arm, and the bad inputs that must fail with a clear message before any model loads."""

import json

import pytest

from glimpserl import cli
from glimpserl.rewards import build_reward

TOKENS = 16  # a 112 px image is a 4 x 4 grid of 28 px visual tokens


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from glimpserl.rl.data.synth import write_synth

    return write_synth(tmp_path_factory.mktemp("synth"), 0, 6, 112, 0) / "test.jsonl"


@pytest.fixture(scope="module")
def glimpse_dir(tmp_path_factory):
    from glimpserl.models import GlimpseConfig, add_glimpse, save_glimpse
    from glimpserl.models.loading import load_model

    # A fresh VIP keeps every token (its bias starts high); the cap makes it keep int(0.4 * 16) = 6 of 16.
    model = add_glimpse(load_model("builtin:tiny-qwen2_5_vl"), GlimpseConfig(max_keep_ratio=0.4))
    return save_glimpse(model, tmp_path_factory.mktemp("glimpse"))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["eval", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_glimpse_against_matched_baselines(synth, glimpse_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    pruners = ["glimpse", "gprune", "random", "fastv", "none"]
    code, stdout, _ = run_cli(
        capsys,
        *("--glimpse", str(glimpse_dir), "--dataset", str(synth), "--pruners", ",".join(pruners)),
        *("--batch-size", "4", "--max-new-tokens", "3", "--out", str(out)),
    )
    assert code == 0
    report = json.loads(out.read_text())
    rows = {r["pruner"]: r for r in report["results"]}
    assert list(rows) == pruners
    assert report["table"] in stdout
    assert all(f"| {name} |" in stdout for name in pruners)

    glimpse, unpruned = rows["glimpse"], rows["none"]
    assert glimpse["keep_ratio"] == pytest.approx(6 / TOKENS)
    assert report["baseline_keep_ratio"] == pytest.approx(glimpse["keep_ratio"])
    assert unpruned["keep_ratio"] == 1.0 and unpruned["box_recall"] is None
    for name in ("gprune", "random", "fastv"):
        assert rows[name]["target_keep_ratio"] == pytest.approx(glimpse["keep_ratio"])
        assert rows[name]["keep_ratio"] == pytest.approx(glimpse["keep_ratio"], abs=0.5 / TOKENS)
    for name in ("glimpse", "gprune", "random", "fastv"):
        row = rows[name]
        assert row["kv_length"] < unpruned["kv_length"]
        assert row["box_rows"] == 6 and 0.0 <= row["box_recall"] <= 1.0
        assert row["prefill_ms"] > 0 and row["decode_ms_per_token"] > 0
        # After prefill the cache holds exactly the text and the kept visual tokens of each row.
        for sample, full in zip(row["per_sample"], unpruned["per_sample"], strict=True):
            assert sample["visual_tokens"] == TOKENS
            assert sample["kv_length"] == full["kv_length"] - TOKENS + sample["kept_tokens"]

    # The metric is the reward's own score of each prediction against its row's answers.
    answers = [json.loads(line)["answer"] for line in synth.read_text().splitlines()]
    reward = build_reward("exact_match")
    for row in rows.values():
        samples = row["per_sample"]
        expected = reward(
            completions=[s["prediction"] for s in samples], answer=[[answers[s["row"]]] for s in samples]
        )
        assert [s["score"] for s in samples] == expected
        assert row["scored"] == 6 and row["metric"] == pytest.approx(sum(expected) / 6)


def test_downsample_and_fixed_keep_ratio(synth, capsys):
    from glimpserl.rl.eval.compare import run_eval
    from glimpserl.rl.eval.settings import EvalSettings

    settings = EvalSettings(
        dataset=str(synth), pruners="downsample,divprune,none", keep_ratio=0.25, max_samples=2, max_new_tokens=2
    )
    report = run_eval(settings)
    rows = {r["pruner"]: r for r in report["results"]}
    assert report["settings"]["keep_ratio_mode"] == "fixed" and "fixed keep ratio 0.250" in report["table"]
    # 112 px shrunk by sqrt(0.25) per side = 56 px = 2 x 2 tokens: a quarter of the original 16.
    assert rows["downsample"]["visual_tokens"] == TOKENS and rows["downsample"]["kept_tokens"] == 4
    assert rows["downsample"]["kv_length"] == rows["none"]["kv_length"] - TOKENS + 4
    assert rows["divprune"]["keep_ratio"] == 0.25 and rows["divprune"]["kv_length"] == rows["downsample"]["kv_length"]


def test_downsample_shrinks_a_processor_pinned_to_one_size(synth):
    """min_pixels == max_pixels (every image exactly one size, as the mini recipes set it) must not scale the
    shrunk image back up: both bounds move with the keep ratio."""
    from glimpserl.rl.eval.compare import run_eval
    from glimpserl.rl.eval.settings import EvalSettings

    pinned = 112 * 112
    settings = EvalSettings(
        dataset=str(synth),
        pruners="downsample,none",
        keep_ratio=0.25,
        max_samples=2,
        max_new_tokens=1,
        min_pixels=pinned,
        max_pixels=pinned,
    )
    rows = {r["pruner"]: r for r in run_eval(settings)["results"]}
    assert rows["none"]["kept_tokens"] == TOKENS and rows["downsample"]["kept_tokens"] == 4


def test_lora_run_folder_with_max_pixels(synth, tmp_path, tiny_processor, capsys):
    """--run loads a stage-2 LoRA run (adapter + glimpse + processor); --max-pixels reaches its processor."""
    from peft import LoraConfig, get_peft_model

    from glimpserl.models import GlimpseConfig, add_glimpse, save_glimpse
    from glimpserl.models.loading import load_model
    from glimpserl.models.tiny import save_tiny

    base = save_tiny(tmp_path / "base", seed=0)
    model = add_glimpse(load_model(str(base)), GlimpseConfig(max_keep_ratio=0.5))
    run = tmp_path / "run"
    get_peft_model(
        model, LoraConfig(r=4, target_modules=r"model\.language_model\.layers\.\d+\.mlp\.up_proj")
    ).save_pretrained(run)
    save_glimpse(model, run)
    tiny_processor.save_pretrained(run)
    out = tmp_path / "results.json"
    argv = ["--run", str(run), "--dataset", str(synth), "--pruners", "glimpse,none", "--max-pixels", str(28 * 28 * 4)]
    code, _, _ = run_cli(capsys, *argv, "--max-samples", "2", "--max-new-tokens", "2", "--out", str(out))
    assert code == 0
    rows = {r["pruner"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["none"]["visual_tokens"] == 4 and rows["glimpse"]["kept_tokens"] == 2  # int(0.5 * 4) of 2 x 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pruners", "gprune,foo"], "unknown pruner 'foo' in --pruners; valid pruners: glimpse, none, downsample,"),
        (["--pruners", "visionzip"], "needs vision-encoder attention"),
        (["--keep-ratio", "0"], "--keep-ratio must be in (0, 1]"),
        (["--keep-ratio", "1.5"], "--keep-ratio must be in (0, 1]"),
        (["--pruners", "glimpse,gprune"], "--pruners includes 'glimpse' but no glimpse weights were given"),
        (["--matched", "--pruners", "gprune"], "--pruners must include 'glimpse'"),
        (["--metric", "exact_matc"], "unknown --metric 'exact_matc'; valid metrics:"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--dataset", "builtin:shapes", "--split", "validation"], "builtin:shapes has the splits 'train', 'val' and"),
    ],
)
def test_bad_settings_fail_clearly(argv, message, capsys):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err


def test_dataset_without_the_metric_column(tmp_path, capsys):
    data = tmp_path / "no_answers.jsonl"
    data.write_text(json.dumps({"image": "a.png", "question": "What colour?"}) + "\n")
    code, _, err = run_cli(capsys, "--dataset", str(data), "--pruners", "none")
    assert code == 2
    assert "the metric 'exact_match' needs the column 'answer', which the dataset lacks" in err


def test_eval_asks_its_questions_the_way_the_run_trained(synth, glimpse_dir, tmp_path):
    """A run's glimpserl_run.json sets eval's default data, prompt template, system prompt and pixel bounds; flags
    given on the command line still win. Without a card eval uses the data loader's defaults."""
    from glimpserl.rl.eval.compare import load_samples, resolve_settings
    from glimpserl.rl.eval.settings import EvalSettings
    from glimpserl.rl.runs.card import RUN_CARD

    run = tmp_path / "run"
    run.mkdir()
    for name in ("glimpse.safetensors", "glimpse_config.json"):
        (run / name).write_bytes((glimpse_dir / name).read_bytes())
    card = {
        "stage": "vip",
        "model_name_or_path": "builtin:tiny-qwen2_5_vl",
        "data": {
            "question_template": "Q: {question} A:",
            "system_prompt": "Be brief.",
            "max_pixels": 12544,
            "image_position": "after",
        },
        "eval_dataset": str(synth),
    }
    (run / RUN_CARD).write_text(json.dumps(card))
    settings = resolve_settings(EvalSettings(glimpse=str(run), pruners="glimpse,none"))
    assert (settings.dataset, settings.question_template, settings.max_pixels) == (
        str(synth),
        "Q: {question} A:",
        12544,
    )
    assert settings.model == "builtin:tiny-qwen2_5_vl"
    samples, _ = load_samples(settings, build_reward("exact_match"))
    messages = samples[0]["prompt"]
    assert messages[0]["content"][0]["text"] == "Be brief."
    assert messages[-1]["content"][0]["text"].startswith("Q: ") and messages[-1]["content"][0]["text"].endswith(" A:")
    assert messages[-1]["content"][-1] == {"type": "image"}  # the run asked with the question before the image
    override = resolve_settings(
        EvalSettings(glimpse=str(run), pruners="glimpse", question_template="{question}?", max_pixels=3136)
    )
    assert (override.question_template, override.max_pixels) == ("{question}?", 3136)
    bare = resolve_settings(EvalSettings(glimpse=str(glimpse_dir), pruners="glimpse", dataset=str(synth)))
    assert bare.question_template is None and not bare.run_card


def test_another_split_of_the_runs_held_out_set(synth, glimpse_dir, tmp_path):
    """--split reads that split of the set the run's card names (its held-out file's sibling), and a card whose
    held-out data is one file of another name cannot give another split: an error, not the held-out rows again."""
    from glimpserl.rl.eval.compare import resolve_settings
    from glimpserl.rl.eval.settings import EvalSettings
    from glimpserl.rl.runs.card import RUN_CARD

    run = tmp_path / "run"
    run.mkdir()
    for name in ("glimpse.safetensors", "glimpse_config.json"):
        (run / name).write_bytes((glimpse_dir / name).read_bytes())
    folder = tmp_path / "set"  # a built-in set's files: one per split, named for it
    folder.mkdir()
    for split in ("test", "val"):
        (folder / f"{split}.jsonl").write_text(synth.read_text())
    card = {"stage": "vip", "model_name_or_path": "builtin:tiny-qwen2_5_vl", "data": {}}
    (run / RUN_CARD).write_text(json.dumps({**card, "eval_dataset": str(folder / "test.jsonl")}))
    for split in ("val", "test"):
        settings = resolve_settings(EvalSettings(glimpse=str(run), pruners="glimpse", split=split))
        assert settings.dataset == str(folder / f"{split}.jsonl")
    with pytest.raises(ValueError, match="held-out set has no train.jsonl beside .*test.jsonl; pass --dataset"):
        resolve_settings(EvalSettings(glimpse=str(run), pruners="glimpse", split="train"))
    own = tmp_path / "held_out.jsonl"
    own.write_text(synth.read_text())
    (run / RUN_CARD).write_text(json.dumps({**card, "eval_dataset": str(own)}))
    assert resolve_settings(EvalSettings(glimpse=str(run), pruners="glimpse")).dataset == str(own)
    with pytest.raises(ValueError, match=r"--split val: the run's held-out data is the single file .*held_out.jsonl"):
        resolve_settings(EvalSettings(glimpse=str(run), pruners="glimpse", split="val"))
    (run / RUN_CARD).write_text(json.dumps({**card, "eval_dataset": str(folder)}))  # a folder: its reader splits
    assert resolve_settings(EvalSettings(glimpse=str(run), pruners="glimpse", split="val")).dataset == str(folder)


def test_arms_sharing_kept_batches_score_as_arms_that_make_their_own(synth, glimpse_dir, monkeypatch):
    """Batches(keep=True) (the reproduction's many arms on one set): every arm's records equal those of arms that
    load and encode their own batches, each batch (and each shrink) is encoded once, and a processor of other settings
    gets its own inputs."""
    from glimpserl.models import load_glimpse
    from glimpserl.models.loading import load_model, load_processor
    from glimpserl.rl.eval import arms
    from glimpserl.rl.eval.compare import load_samples, resolve_settings
    from glimpserl.rl.eval.settings import EvalSettings

    settings = resolve_settings(EvalSettings(dataset=str(synth), glimpse=str(glimpse_dir), batch_size=2))
    samples, _ = load_samples(settings, build_reward("exact_match"))
    model = load_glimpse(load_model("builtin:tiny-qwen2_5_vl").eval(), glimpse_dir)
    processor = load_processor("builtin:tiny-qwen2_5_vl", max_pixels=112 * 112)
    names = ["glimpse", "none", "fastv", "divprune", "downsample", "glimpse"]
    setups = [arms.pruner_setup(name, None if name in ("glimpse", "none") else 0.25, 0) for name in names]

    def records(batches):
        rows = []
        for arm in setups:
            result = arms.run_arm(model, processor, samples, arm, build_reward("exact_match"), 2, 3, None, batches)
            rows.append([{k: v for k, v in r.items() if not k.endswith("_s")} for r in result["per_sample"]])
        return rows

    own = records(None)
    calls = []
    real = arms.encode
    monkeypatch.setattr(
        arms, "encode", lambda processor, rows, shrink=None: calls.append(shrink) or real(processor, rows, shrink)
    )
    kept = arms.Batches(samples, 2, keep=True)
    assert records(kept) == own
    assert calls.count(None) == len(kept.ranges) and calls.count(0.25) == len(kept.ranges)  # each once
    other = load_processor("builtin:tiny-qwen2_5_vl", max_pixels=56 * 56)
    assert kept.inputs(other, 0)["input_ids"].shape != kept.inputs(processor, 0)["input_ids"].shape
    with pytest.raises(ValueError, match="another sample set or batch size"):
        arms.run_arm(model, processor, samples, setups[0], build_reward("exact_match"), 4, 3, None, kept)
