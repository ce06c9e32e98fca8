"""The `glimpserl` command line: help texts and the visualize job on the built-in defaults."""

import json

import pytest
from PIL import Image

from glimpserl.cli import build_parser, main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "visualize" in out and "data" in out


def test_visualize_writes_png_with_capped_keep(tmp_path, capsys):
    out = tmp_path / "vis.png"
    assert main(["visualize", "--out", str(out), "--max-keep-ratio", "0.1", "--max-new-tokens", "2"]) == 0
    stdout = capsys.readouterr().out
    # DeepSpeed announces its accelerator on stdout when first imported; the report is the JSON object after it.
    report = json.loads(stdout[stdout.index("{") :])
    assert report["kept_tokens"] == int(0.1 * report["visual_tokens"])
    with Image.open(out) as png:
        assert png.width == 448 and png.height > 448


def test_visualize_rejects_missing_image(tmp_path, capsys):
    missing = tmp_path / "nope.png"
    assert main(["visualize", "--image", str(missing), "--out", str(tmp_path / "v.png")]) == 2
    assert "glimpserl visualize: error:" in capsys.readouterr().err
    assert not (tmp_path / "v.png").exists()


def test_unknown_subcommand_is_an_error():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["trian"])
