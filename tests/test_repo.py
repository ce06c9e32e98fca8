"""Repository promises: the README's set-up commands, CI running the README's test command, shipped recipes."""

from pathlib import Path

import pytest
import torch

from glimpserl.rl.config.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert all(c.startswith("python3 -m venv .venv") and "pip install torch==2.13.0" in c for c in commands)
    assert (
        "glimpserl train recipes/mini_places/vip.yaml" in commands[0]
        and "glimpserl eval --glimpse outputs/mini-places-vip" in commands[0]
        and "glimpserl bench" in commands[0]
    )
    assert "python -m pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    assert _readme_commands()[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml")))
def test_every_shipped_recipe_parses(recipe):
    # GPU recipes ask for bf16, which transformers only accepts on this CPU machine with use_cpu. Only the tiny
    # recipes' paths exist here: the others name a cluster's files or an earlier run's output (glimpse_init).
    overrides = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    parsed = parse_recipe(ROOT / recipe, overrides, check_files="tiny" in recipe)
    assert parsed[0].stage in ("sft", "vip", "grpo")


def test_recipe_typo_is_a_clear_error(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text((ROOT / "recipes/tiny/vip.yaml").read_text() + "lerning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown key 'lerning_rate'.*Did you mean 'learning_rate'"):
        parse_recipe(recipe)


def test_command_line_typo_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Command line: unknown key 'max_stpes'.*'max_steps'"):
        parse_recipe(ROOT / "recipes/tiny/vip.yaml", ["--max_stpes", "3"])


def test_recipe_headers_state_the_launch_command():
    for path in (ROOT / "recipes").rglob("*.yaml"):
        head = path.read_text().splitlines()[:6]
        launch = [line for line in head if "Launch:" in line]
        assert launch and f"train {path.relative_to(ROOT)}" in launch[0], path


def test_ruff_lint_and_format_are_clean():
    import subprocess
    import sys

    for args in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
