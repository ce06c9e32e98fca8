"""The layout is the design (docs/layout.md): rl/ holds rooms, not files; nothing in the package imports in a
circle; every setting is declared in one dataclass; the glimpse's recipe keys are GlimpseConfig's fields."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import typing
from pathlib import Path

import glimpserl

ROOT = Path(__file__).resolve().parents[1]
ROOMS = {"config", "data", "eval", "runs", "trainers"}


def test_rl_holds_rooms_and_the_stage_mains_only():
    assert sorted(p.name for p in (ROOT / "rl").glob("*.py")) == ["__init__.py", "train.py"]
    assert {p.name for p in (ROOT / "rl").iterdir() if p.is_dir() and p.name != "__pycache__"} == ROOMS
    assert not (ROOT / "rl" / "ship.py").exists() and (ROOT / "scripts" / "ship.py").is_file()


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (the repository root is the package `glimpserl`)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0] in ("tests", "scripts", ".venv", ".cache", "outputs") or "__pycache__" in parts:
            continue
        name = ".".join(("glimpserl", *parts))[: -len(".py")]
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path], unresolved: list | None = None) -> set[str]:
    """The package's modules `name` imports anywhere in its file (function-level imports included: they form a
    cycle as surely as top-level ones, only later). `unresolved` collects imports from the package that name no
    module of it (a stale path left by a move)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if unresolved is not None and base.startswith("glimpserl") and base not in modules:
                unresolved.append(f"{name}: from {base} import ...")
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(modules)
            targets.update(submodules)
            if len(submodules) < len(node.names):  # a name defined in `base` itself
                targets.add(base)
    return {t for t in targets if t in modules and t != name}


def test_no_import_cycles_in_the_package():
    modules = _modules()
    unresolved: list[str] = []
    graph = {name: _imports(name, path, modules, unresolved) for name, path in modules.items()}
    assert not unresolved, unresolved
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert "glimpserl.rl.data.loading" in graph and len(graph) > 60


def test_rooms_import_downwards_only():
    """data -> config -> runs -> trainers -> eval -> the stage mains: a room never imports one to its right."""
    order = ["data", "config", "runs", "trainers", "eval", "train"]
    modules = _modules()
    for name, path in modules.items():
        parts = name.split(".")
        if parts[:2] != ["glimpserl", "rl"] or len(parts) < 3:
            continue
        room = order.index(parts[2])
        for target in _imports(name, path, modules):
            tparts = target.split(".")
            if tparts[:2] == ["glimpserl", "rl"] and len(tparts) > 2:
                assert order.index(tparts[2]) <= room, f"{name} imports {target}"


def _config_dataclasses() -> list[type]:
    """The settings dataclasses of glimpserl.rl (those whose every field has a help text): recipe keys and eval
    options. GlimpseConfig, the glimpse's own config saved with its weights, is checked against its recipe keys by
    test_glimpse_recipe_keys_are_glimpse_config_fields."""
    import glimpserl.rl

    found = {}
    for info in pkgutil.walk_packages(glimpserl.rl.__path__, "glimpserl.rl."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and dataclasses.is_dataclass(cls):
                fields = dataclasses.fields(cls)
                if fields and all("help" in f.metadata for f in fields):
                    found[cls.__qualname__] = cls
    return list(found.values())


def test_no_setting_is_declared_twice():
    """No two settings dataclasses declare a field of the same name unless one inherits it from the other (a
    re-declared default in a subclass, as TRL's configs do)."""
    owners: dict[str, list[type]] = {}
    classes = _config_dataclasses()
    for cls in classes:
        fields = {f.name for f in dataclasses.fields(cls)}  # ClassVars are not fields
        for name in cls.__dict__.get("__annotations__", {}):
            if name in fields:
                owners.setdefault(name, []).append(cls)
    clashes = [
        f"{name}: {a.__qualname__} and {b.__qualname__}"
        for name, declared in owners.items()
        for i, a in enumerate(declared)
        for b in declared[i + 1 :]
        if not (issubclass(a, b) or issubclass(b, a))
    ]
    assert not clashes, clashes
    assert len(classes) >= 12  # the stage configs, their mixins, the data, eval and recipe settings


def test_glimpse_recipe_keys_are_glimpse_config_fields():
    """GlimpseArguments is written out for readers; its keys, types, defaults and help are GlimpseConfig's."""
    from glimpserl.models import GlimpseConfig
    from glimpserl.rl.config.glimpse import GlimpseArguments, recipe_key

    ours = {f.name: f for f in dataclasses.fields(GlimpseArguments)}
    theirs = {recipe_key(f.name): f for f in dataclasses.fields(GlimpseConfig)}
    assert list(ours) == list(theirs)
    our_types, their_types = typing.get_type_hints(GlimpseArguments), typing.get_type_hints(GlimpseConfig)
    for key, field in theirs.items():
        assert our_types[key] == their_types[field.name], key
        assert ours[key].default == field.default and ours[key].metadata["help"] == field.metadata["help"], key


def test_the_synth_command_offers_every_task():
    from glimpserl.cli import SYNTH_TASKS
    from glimpserl.rl.data.synth.writer import TASKS

    assert SYNTH_TASKS == tuple(TASKS)


def test_readme_import_paths_work():
    """The names the README and the command help point users at import from where they say."""
    from glimpserl.rl import DataConfig, EvalSettings, load_exported, parse_recipe, run_eval, write_synth

    assert all(callable(x) for x in (DataConfig, EvalSettings, load_exported, parse_recipe, run_eval, write_synth))
    assert glimpserl.__name__ == "glimpserl"


def test_every_package_folder_is_installed():
    """pyproject lists the packages one by one: a new room missing there would import here and not once installed."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert found == listed


def test_each_stage_keeps_its_defaults():
    """The TRL defaults each stage re-declares, pinned: moving a declaration between mixins must not move a value."""
    from glimpserl.rl.config.stages import GlimpseGRPOConfig, VIPTrainingConfig, VLMSFTConfig

    keys = ("learning_rate", "lr_scheduler_type", "warmup_steps", "num_train_epochs", "logging_steps", "save_steps")
    defaults = {
        cls: tuple(cls.__dataclass_fields__[k].default for k in keys) for cls in (VIPTrainingConfig, VLMSFTConfig)
    }
    assert defaults[VIPTrainingConfig] == (1e-4, "cosine", 0.1, 1.0, 1, 50)
    assert defaults[VLMSFTConfig] == (2e-5, "cosine", 0.05, 1.0, 10, 500)
    grpo = {
        k: GlimpseGRPOConfig.__dataclass_fields__[k].default for k in ("learning_rate", "logging_steps", "save_steps")
    }
    assert grpo == {"learning_rate": 1e-4, "logging_steps": 1, "save_steps": 50}
    assert GlimpseGRPOConfig.__dataclass_fields__["lr_scheduler_type"].default == "linear"  # TRL's own
    for cls in (VIPTrainingConfig, VLMSFTConfig, GlimpseGRPOConfig):
        assert cls.__dataclass_fields__["remove_unused_columns"].default is False
        assert cls.__dataclass_fields__["bf16"].default is False
