"""The synthetic glimpse dataset: deterministic, answerable only from the boxed region, loadable."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from glimpserl.cli import synth_main
from glimpserl.rl.data.synth import write_synth
from glimpserl.rl.data.synth.drawing import COLOURS, draw_object
from glimpserl.rl.data.synth.glimpse import KINDS, TARGET_AREA, make_sample

SIZE = 112


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("synth"), n_train=9, n_test=3, image_size=SIZE, seed=0)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_gives_identical_files(synth_dir, tmp_path):
    again = write_synth(tmp_path / "again", n_train=9, n_test=3, image_size=SIZE, seed=0)
    for name in ("train.jsonl", "test.jsonl", "dataset.json"):
        assert (again / name).read_bytes() == (synth_dir / name).read_bytes(), name
    for image in (synth_dir / "images").iterdir():
        assert (again / "images" / image.name).read_bytes() == image.read_bytes(), image.name


def test_other_seed_differs_and_splits_are_disjoint(synth_dir, tmp_path):
    other = write_synth(tmp_path / "other", n_train=9, n_test=3, image_size=SIZE, seed=1)
    assert (other / "train.jsonl").read_bytes() != (synth_dir / "train.jsonl").read_bytes()
    images = {
        split: {p.read_bytes() for p in (synth_dir / "images").glob(f"{split}_*.png")} for split in ("train", "test")
    }
    assert len(images["train"]) == 9 and len(images["test"]) == 3
    assert not images["train"] & images["test"]


def test_rows_are_well_formed(synth_dir):
    card = json.loads((synth_dir / "dataset.json").read_text())
    assert card["counts"] == {"train": 9, "test": 3} and card["box_format"] == "xyxy_pixel" and card["seed"] == 0
    train = _rows(synth_dir / "train.jsonl")
    assert {row["kind"] for row in train} == set(KINDS)
    for row in train + _rows(synth_dir / "test.jsonl"):
        assert row["answer"] and " " not in row["answer"]
        with Image.open(synth_dir / row["image"]) as image:
            width, height = image.size
        assert (width, height) == (SIZE, SIZE)
        [[x0, y0, x1, y1]] = row["boxes"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert TARGET_AREA[0] * 0.8 <= (x1 - x0) * (y1 - y0) / (width * height) <= TARGET_AREA[1] * 1.2


@pytest.mark.parametrize("index", range(6))
def test_box_covers_the_target_and_only_it(index):
    sample = make_sample(seed=3, split="train", index=index, image_size=(160, SIZE))
    target = sample.target
    assert sample.image.size == (160, SIZE)
    # Drawn alone on a blank canvas, the target's ink fills its box edge to edge and never leaves it.
    canvas = Image.new("RGB", sample.image.size, (0, 0, 0))
    draw_object(ImageDraw.Draw(canvas), target)
    assert canvas.getbbox() == target.box
    # No distractor overlaps the target, and none answers to the same description.
    for other in sample.objects[1:]:
        ox0, oy0, ox1, oy1 = other.box
        assert ox1 <= target.box[0] or target.box[2] <= ox0 or oy1 <= target.box[1] or target.box[3] <= oy0
        if sample.kind == "colour":
            assert other.shape != target.shape
        else:
            assert (other.shape, other.colour) != (target.shape, target.colour)
            assert other.label != target.label


@pytest.mark.parametrize("index", range(6))
def test_answer_is_visible_in_the_box(index):
    sample = make_sample(seed=5, split="test", index=index, image_size=SIZE)
    target = sample.target
    if sample.kind == "colour":
        assert sample.answer == target.colour and target.shape in sample.question
        crop = np.asarray(sample.image.crop(target.box), dtype=np.float32)
        distance = np.abs(crop - np.array(COLOURS[sample.answer], dtype=np.float32)).max(axis=-1)
        assert (distance < 40).mean() > 0.25  # a triangle fills about half its box; noise is sigma 6
    else:
        assert sample.answer == target.label
        assert target.colour in sample.question
        crop = np.asarray(sample.image.crop(target.box).convert("L"), dtype=np.float32)
        assert crop.std() > 20  # text was drawn inside


def test_cli_writes_files_and_refuses_to_clobber(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--n-train", "3", "--n-test", "2", "--image-size", "128x96", "--seed", "7"]
    assert synth_main(argv) == 0
    assert len(_rows(out / "train.jsonl")) == 3 and len(_rows(out / "test.jsonl")) == 2
    assert len(list((out / "images").glob("*.png"))) == 5
    assert json.loads((out / "dataset.json").read_text())["image_size"] == {"width": 128, "height": 96}
    with pytest.raises(SystemExit) as err:
        synth_main(argv)
    assert err.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert synth_main([*argv, "--overwrite", "--n-train", "1"]) == 0
    assert len(list((out / "images").glob("train_*.png"))) == 1  # stale images from the bigger run are gone
    with pytest.raises(SystemExit) as err:
        synth_main(["--help"])
    assert err.value.code == 0 and "--image-size" in capsys.readouterr().out


def test_bad_sizes_fail_with_advice():
    with pytest.raises(ValueError, match="at least"):
        write_synth("/nonexistent-never-written", image_size=32)
    with pytest.raises(SystemExit):
        synth_main(["--out", "/tmp/x", "--image-size", "big"])


def test_synth_set_loads_with_the_data_loader(synth_dir):
    from glimpserl.rl.data import DataConfig, load_vqa

    dataset, report = load_vqa(DataConfig(dataset=str(synth_dir / "test.jsonl")))
    assert len(dataset) == 3 and report.rows_skipped == 0
    assert dataset[0]["boxes"] == [[float(v) for v in _rows(synth_dir / "test.jsonl")[0]["boxes"][0]]]


# ---------------------------------------------------------------- the shapes task (builtin:shapes)
@pytest.mark.parametrize("index", range(8))
def test_shapes_target_is_the_only_coloured_object_and_fills_its_tokens(index):
    from glimpserl.rl.data.synth.shapes import CELLS, GREYS, KINDS, OBJECTS, TOKEN, make_shapes_sample

    sample = make_shapes_sample(seed=2, split="test", index=index, image_size=336)
    target, others = sample.target, sample.objects[1:]
    assert sample.kind == KINDS[index % 2] and OBJECTS[0] <= len(sample.objects) <= OBJECTS[1]
    assert target.colour in COLOURS and all(o.colour in GREYS for o in others)
    answer = target.colour if sample.kind == "colour" else target.shape
    assert (sample.question, sample.answer) == (f"What {sample.kind} is the coloured object?", answer)
    # The box lies inside CELLS x CELLS token cells, and the target's colour is there and nowhere else.
    x0, y0, x1, y1 = target.box
    assert x0 // TOKEN == (x1 - 1) // TOKEN - CELLS + 1 and y0 // TOKEN == (y1 - 1) // TOKEN - CELLS + 1
    pixels = np.asarray(sample.image, dtype=np.int32)
    hit = (np.abs(pixels - np.array(COLOURS[target.colour])).max(-1) == 0).nonzero()
    assert x0 <= hit[1].min() and hit[1].max() < x1 and y0 <= hit[0].min() and hit[0].max() < y1
    # Every distractor's ink is where its box says (a pruner scoring what tokens look like sees it as much).
    for other in others:
        ox0, oy0, ox1, oy1 = other.box
        region = pixels[oy0:oy1, ox0:ox1]
        assert (np.abs(region - np.array(GREYS[other.colour])).max(-1) == 0).any()


def test_shapes_curriculum_grows_the_canvas_and_the_count_on_the_train_split_only():
    from glimpserl.rl.data.synth.shapes import OBJECTS, canvas_size, make_shapes_sample, object_range

    assert object_range("train", 0, 600) == (1, 1)
    assert object_range("train", 300, 600) == (1, 1 + OBJECTS[1] * 300 // 600)
    assert object_range("train", 600, 600) == OBJECTS and object_range("test", 0, 600) == OBJECTS
    assert canvas_size("train", 0, (336, 336), 600) == (168, 168)
    assert canvas_size("train", 300, (336, 336), 600) == (252, 252)
    assert canvas_size("train", 600, (336, 336), 600) == (336, 336) == canvas_size("val", 0, (336, 336), 600)
    first = make_shapes_sample(0, "train", 0, 336, curriculum=600)
    assert len(first.objects) == 1 and first.image.size == (168, 168)
    held_out = make_shapes_sample(0, "test", 0, 336, curriculum=600)
    assert len(held_out.objects) >= OBJECTS[0] and held_out.image.size == (336, 336)


def test_shapes_task_through_the_cli_with_a_validation_split(tmp_path, capsys):
    out = tmp_path / "shapes"
    argv = ["--out", str(out), "--task", "shapes", "--n-train", "4", "--n-val", "2", "--n-test", "2"]
    assert synth_main([*argv, "--image-size", "168", "--curriculum", "4"]) == 0
    card = json.loads((out / "dataset.json").read_text())
    assert card["counts"] == {"train": 4, "val": 2, "test": 2} and card["task"] == "shapes"
    assert card["curriculum_rows"] == 4 and card["name"] == "glimpserl-shapes"
    assert {row["kind"] for row in _rows(out / "val.jsonl")} <= {"colour", "shape"}
    assert "4 train + 2 val + 2 test shapes samples" in capsys.readouterr().out
    with pytest.raises(ValueError, match="curriculum is a feature of the shapes and places tasks"):
        write_synth(tmp_path / "bad", 2, 2, 112, 0, task="glimpse", curriculum=2)


# ---------------------------------------------------------------- the places task (builtin:places)
@pytest.mark.parametrize("index", range(6))
def test_places_question_names_the_object_by_place_and_every_object_looks_alike(index):
    from glimpserl.rl.data.synth.places import CELLS, GRID, KINDS, PALETTE, PLACE, SHAPES, TOKEN, make_places_sample

    sample = make_places_sample(seed=3, split="test", index=index)
    assert sample.image.size == (GRID * PLACE * TOKEN,) * 2 and len(sample.objects) == GRID * GRID
    assert sample.kind == KINDS[index % 2]
    assert all(o.colour in PALETTE and o.shape in SHAPES for o in sample.objects)
    pixels = np.asarray(sample.image, dtype=np.int32)
    for obj in sample.objects:  # each object sits inside its own place, on CELLS x CELLS whole tokens, ink visible
        x0, y0, x1, y1 = obj.box
        assert x0 // TOKEN == (x1 - 1) // TOKEN - CELLS + 1 and y0 // TOKEN == (y1 - 1) // TOKEN - CELLS + 1
        assert x0 // (PLACE * TOKEN) == (x1 - 1) // (PLACE * TOKEN)
        assert (np.abs(pixels[y0:y1, x0:x1] - np.array(COLOURS[obj.colour])).max(-1) == 0).any()
    places = {(o.box[1] // (PLACE * TOKEN), o.box[0] // (PLACE * TOKEN)) for o in sample.objects}
    assert places == {(r, c) for r in range(GRID) for c in range(GRID)}
    colours = [o.colour for o in sample.objects]
    if sample.kind == "majority":
        assert sample.question == "What colour are most of the objects?"
        assert colours.count(sample.answer) > len(colours) / 2
        assert sample.boxes == [list(o.box) for o in sample.objects]
    else:
        target = sample.target
        row, col = target.box[1] // (PLACE * TOKEN), target.box[0] // (PLACE * TOKEN)
        number = row * GRID + col + 1
        assert sample.question == f"What colour is the object in place {number}?"
        assert sample.answer == f"{number} {target.colour}"  # the place restated, then its colour
        assert sample.boxes == [list(target.box)]


def test_places_no_object_stands_out_the_asked_one_is_any_of_them():
    """Over many rows the asked object's place is spread over the whole board, and its colour is no rarer or commoner
    than the others' (what a pruner that keeps the odd one out would exploit)."""
    from collections import Counter

    from glimpserl.rl.data.synth.places import PLACE, TOKEN, make_places_sample

    asked, same_colour = Counter(), []
    for index in range(0, 400, 2):  # colour questions
        sample = make_places_sample(0, "train", index)
        asked[(sample.target.box[1] // (PLACE * TOKEN), sample.target.box[0] // (PLACE * TOKEN))] += 1
        same_colour.append(sum(o.colour == sample.target.colour for o in sample.objects[1:]) / 8)
    assert len(asked) == 9 and min(asked.values()) >= 10
    assert 0.15 <= sum(same_colour) / len(same_colour) <= 0.35  # about 1 in 4 others share its colour


def test_places_curriculum_fills_more_places_on_the_train_split_only_and_bad_sizes_are_refused():
    from glimpserl.rl.data.synth.places import PLACE, TOKEN, filled_places, make_places_sample

    assert filled_places("train", 0, 700) == 2 and filled_places("train", 350, 700) == 5
    assert filled_places("train", 700, 700) == 9 == filled_places("test", 0, 700)
    for index in range(0, 700, 70):  # a question only ever names a filled place
        sample = make_places_sample(0, "train", index, curriculum=700)
        assert len(sample.objects) == filled_places("train", index, 700) and sample.image.size == (288, 288)
        if sample.kind != "majority":
            number = int(sample.question.rstrip("?").split()[-1])
            row, col = sample.target.box[1] // (PLACE * TOKEN), sample.target.box[0] // (PLACE * TOKEN)
            assert number == row * 3 + col + 1
    assert len(make_places_sample(0, "val", 0, curriculum=700).objects) == 9
    with pytest.raises(ValueError, match="multiple of 96 px"):
        make_places_sample(0, "test", 0, image_size=336)
    with pytest.raises(ValueError, match="square image"):
        make_places_sample(0, "test", 0, image_size=(288, 192))
    with pytest.raises(ValueError, match="too small for the places task: use at least 192"):
        make_places_sample(0, "test", 0, image_size=96)


def test_places_task_through_the_cli_writes_every_region_a_majority_answer_needs(tmp_path):
    out = tmp_path / "places"
    argv = ["--out", str(out), "--task", "places", "--n-train", "3", "--n-val", "3", "--n-test", "3"]
    assert synth_main([*argv, "--image-size", "288"]) == 0
    card = json.loads((out / "dataset.json").read_text())
    assert card["task"] == "places" and card["name"] == "glimpserl-places"
    rows = _rows(out / "test.jsonl")
    assert [row["kind"] for row in rows] == ["colour", "majority", "colour"]
    assert [len(row["boxes"]) for row in rows] == [1, 9, 1]


def test_builtin_data_follows_synth_seed_not_the_training_seed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from glimpserl.rl.data.synth.builtin import SynthArguments
    from glimpserl.rl.data.synth.writer import builtin_split

    monkeypatch.setenv("GLIMPSERL_CACHE", str(tmp_path))
    args = SimpleNamespace(
        seed=5,
        synth_seed=3,
        synth_train=2,
        synth_test=1,
        synth_val=0,
        synth_image_size=84,
        synth_curriculum=0,
    )
    folder = builtin_split("builtin:shapes", "train", args).parent
    assert json.loads((folder / "dataset.json").read_text())["seed"] == 3 and "seed3" in folder.name
    # A bare builtin name in `glimpserl eval` means the recipes' default set, not a seed of its own.
    default = builtin_split("builtin:synth", "test").parent
    assert json.loads((default / "dataset.json").read_text())["seed"] == SynthArguments().synth_seed == 0


def test_random_object_prior_by_hand():
    from glimpserl.rl.data.synth.drawing import SynthObject, SynthSample
    from glimpserl.rl.data.synth.places import random_object_prior

    def sample(kind, answer, objects):
        objects = tuple(SynthObject(shape, colour, (0, 0, 1, 1)) for shape, colour in objects)
        return SynthSample(None, "q", answer, kind, objects[0], objects)

    board = [("circle", "red"), ("circle", "blue"), ("square", "red"), ("cross", "red")]
    prior = random_object_prior(
        [sample("colour", "2 blue", board), sample("colour", "4 red", board), sample("majority", "red", board)]
    )
    assert prior["by_kind"] == {"colour": 0.5, "majority": 0.75}
    assert prior["exact_match"] == pytest.approx((0.25 + 0.75 + 0.75) / 3)


def test_cached_set_is_renamed_into_place_and_a_job_that_finished_first_wins(tmp_path, monkeypatch):
    """Two jobs sharing the cache: each writes beside the folder and renames; the one that finds the folder complete
    keeps it (rows name images relative to the folder) and leaves no temporary folder behind."""
    from glimpserl.rl.data.synth import writer

    monkeypatch.setenv("GLIMPSERL_CACHE", str(tmp_path))
    real = writer.write_synth

    def other_job_finishes_first(out_dir, *args):
        real(out_dir, *args)
        real(tmp_path / "places-v2-seed0-n2-2-288", *args)  # the other job's complete copy lands first

    monkeypatch.setattr(writer, "write_synth", other_job_finishes_first)
    folder = writer.cached_synth(2, 2, 288, 0, task="places")
    assert (folder / "dataset.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [folder.name]
    rows = _rows(folder / "train.jsonl")
    assert all((folder / row["image"]).is_file() for row in rows)
