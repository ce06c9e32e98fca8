"""`glimpserl eval`'s settings: every option is an EvalSettings field whose help, flag and default live beside it."""

import argparse
import dataclasses

from glimpserl.rl.eval.settings import EvalSettings, add_eval_arguments


def test_every_option_is_a_field_and_takes_its_help_from_it():
    parser = add_eval_arguments(argparse.ArgumentParser())
    options = {action.dest: action for action in parser._actions if action.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(EvalSettings)}
    assert set(options) == set(fields)
    for name, f in fields.items():
        assert f.metadata["help"], name
        assert (options[name].help, options[name].default) == (f.metadata["help"], f.default), name
    assert options["run_dir"].option_strings == ["--run"]
    assert vars(parser.parse_args(["--run", "r", "--keep-ratio", "0.5"])) | {"run_dir": "r"} == {
        **{name: f.default for name, f in fields.items()},
        "run_dir": "r",
        "keep_ratio": 0.5,
    }
