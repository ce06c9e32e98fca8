"""Loading and validating VQA tables, and turning rows into TRL's conversational VLM samples."""

import csv
import json
import logging

import datasets
import pytest
from PIL import Image

from glimpserl.rl.data import DataConfig, check_prompt_fits, conversation_dataset, load_vqa, to_conversation


@pytest.fixture
def folder(tmp_path):
    """Three 112x96 images and rows in the canonical layout (relative paths, mixed answer/box spellings)."""
    (tmp_path / "img").mkdir()
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (112, 96), colour).save(tmp_path / "img" / f"{i}.png")
    return tmp_path


ROWS = [
    {"image": "img/0.png", "question": "What colour?", "answer": "red", "boxes": [[0, 0, 56, 48]]},
    {"image": "img/1.png", "question": "Which one?", "answer": ["green", "lime"], "boxes": [10, 10, 20, 20]},
    {"image": ["img/2.png", "img/0.png"], "question": "How many?", "answer": 2, "boxes": []},
]
EXPECTED = [
    (["red"], [[0.0, 0.0, 56.0, 48.0]]),
    (["green", "lime"], [[10.0, 10.0, 20.0, 20.0]]),
    (["2"], []),
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: v if isinstance(v, str) else json.dumps(v) for k, v in row.items()})
    return path


def _write(folder, kind, rows=ROWS):
    if kind == "jsonl":
        return _jsonl(folder / "data.jsonl", rows)
    if kind == "json":
        (folder / "data.json").write_text(json.dumps(rows))
        return folder / "data.json"
    if kind == "csv":
        return _csv(folder / "data.csv", rows)
    # Arrow needs one type per column: store every answer as a list, every image as a list.
    uniform = [{**r, "image": r["image"] if isinstance(r["image"], list) else [r["image"]]} for r in rows]
    uniform = [
        {**r, "answer": [str(a) for a in (r["answer"] if isinstance(r["answer"], list) else [r["answer"]])]}
        for r in uniform
    ]
    uniform = [
        {**r, "boxes": r["boxes"] if not r["boxes"] or isinstance(r["boxes"][0], list) else [r["boxes"]]}
        for r in uniform
    ]
    ds = datasets.Dataset.from_list(uniform)
    if kind == "parquet":
        ds.to_parquet(str(folder / "data.parquet"))
        return folder / "data.parquet"
    datasets.DatasetDict({"train": ds}).save_to_disk(str(folder / "saved"))
    return folder / "saved"


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "save_to_disk"])
def test_every_format_loads_to_the_same_canonical_rows(folder, kind):
    dataset, report = load_vqa(DataConfig(dataset=str(_write(folder, kind)), image_root=str(folder)))
    assert report.rows_read == report.rows_kept == 3 and report.skipped == {}
    assert dataset.column_names == ["image", "question", "answer", "boxes", "source_row"]
    for row, (answers, boxes), raw in zip(dataset, EXPECTED, ROWS, strict=True):
        assert row["answer"] == answers and row["boxes"] == boxes and row["question"] == raw["question"]
        paths = raw["image"] if isinstance(raw["image"], list) else [raw["image"]]
        assert row["image"] == [str(folder / p) for p in paths]


def test_image_root_defaults_to_the_files_folder(folder):
    dataset, _ = load_vqa(DataConfig(dataset=str(_write(folder, "jsonl"))))
    assert dataset[0]["image"] == [str(folder / "img" / "0.png")]


def test_embedded_image_bytes_are_cached_as_files(folder, tmp_path_factory):
    features = datasets.Features(
        {"picture": datasets.Image(), "q": datasets.Value("string"), "a": datasets.Value("string")}
    )
    png = (folder / "img" / "1.png").read_bytes()
    ds = datasets.Dataset.from_dict(
        {"picture": [{"bytes": png, "path": None}], "q": ["colour?"], "a": ["green"]}, features=features
    )
    ds.to_parquet(str(folder / "embedded.parquet"))
    cache = tmp_path_factory.mktemp("cache")
    config = DataConfig(
        dataset=str(folder / "embedded.parquet"),
        image_column="picture",
        question_column="q",
        answer_column="a",
        image_cache_dir=str(cache),
    )
    dataset, _ = load_vqa(config)
    [path] = dataset[0]["image"]
    assert path.startswith(str(cache)) and Image.open(path).getpixel((0, 0)) == (0, 128, 0)
    assert dataset[0]["boxes"] == []  # no boxes column: rows get none


def _fails(folder, rows, *fragments, **config):
    with pytest.raises(ValueError) as err:
        load_vqa(DataConfig(dataset=str(_jsonl(folder / "bad.jsonl", rows)), **config))
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    return str(err.value)


def test_missing_image_names_row_and_path(folder):
    rows = [ROWS[0], {**ROWS[0], "image": "img/nope.png"}]
    _fails(folder, rows, "bad.jsonl: row 1, line 2", "nope.png does not exist", "image_root")


def test_corrupt_image_names_row(folder):
    (folder / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    _fails(folder, [{**ROWS[0], "image": "img/broken.png"}], "row 0", "cannot read", "broken.png")


def test_truncated_png_is_caught_by_verify(folder):
    data = (folder / "img" / "0.png").read_bytes()
    (folder / "img" / "cut.png").write_bytes(data[: len(data) // 2])
    _fails(folder, [{**ROWS[0], "image": "img/cut.png"}], "row 0", "cannot read")


@pytest.mark.parametrize("answer", [None, "", "  ", [], [""]])
def test_empty_answer_names_row_and_column(folder, answer):
    _fails(folder, [ROWS[0], ROWS[1], {**ROWS[0], "answer": answer}], "row 2", "'answer'", "no non-empty answer")


def test_row_without_answer_key(folder):
    row = {k: v for k, v in ROWS[0].items() if k != "answer"}
    _fails(folder, [ROWS[0], row], "row 1", "'answer'")


@pytest.mark.parametrize(
    ("boxes", "fragment"),
    [
        ([[0, 0, 200, 50]], "not inside the 112x96 image"),
        ([[-5, 0, 20, 20]], "not inside"),
        ([[30, 10, 20, 20]], "x0 < x1"),
        ([[1, 2, 3]], "x0 < x1"),
        ("here", "expected a list"),
    ],
)
def test_bad_boxes_fail(folder, boxes, fragment):
    _fails(folder, [{**ROWS[0], "boxes": boxes}], "row 0", fragment)


def test_clip_boxes_and_normalised_boxes(folder):
    rows = [{**ROWS[0], "boxes": [[-4, 0, 200, 50]]}]
    dataset, _ = load_vqa(DataConfig(dataset=str(_jsonl(folder / "a.jsonl", rows)), clip_boxes=True))
    assert dataset[0]["boxes"] == [[0.0, 0.0, 112.0, 50.0]]
    rows = [{**ROWS[0], "boxes": [[0.25, 0.5, 0.75, 1.0]]}]
    dataset, _ = load_vqa(DataConfig(dataset=str(_jsonl(folder / "b.jsonl", rows)), box_format="xyxy_norm"))
    assert dataset[0]["boxes"] == [[28.0, 48.0, 84.0, 96.0]]
    # The same boxes read as pixels are legal but tiny: caught at the dataset level.
    _fails(folder, rows, "look normalised", "xyxy_norm")
    _fails(folder, [{**ROWS[0], "boxes": [[0, 0, 50, 50]]}], "outside [0, 1]", box_format="xyxy_norm")


def test_missing_column_lists_the_columns_found(folder):
    rows = [{"img": "img/0.png", "question": "q", "answer": "a"}]
    message = _fails(folder, rows, "no column 'image'", "['img', 'question', 'answer']", "image_column='img'")
    assert "row" not in message
    _fails(folder, [ROWS[0]], "no column 'bbox'", boxes_column="bbox")


def test_skip_mode_counts_each_reason(folder, caplog):
    (folder / "img" / "broken.png").write_bytes(b"garbage")
    rows = [
        ROWS[0],
        {**ROWS[0], "image": "img/gone.png"},
        {**ROWS[1], "answer": ""},
        {**ROWS[0], "image": "img/gone2.png"},
        {**ROWS[0], "image": "img/broken.png"},
        {**ROWS[0], "boxes": [[0, 0, 999, 10]]},
        ROWS[1],
    ]
    with caplog.at_level(logging.WARNING, logger="glimpserl.rl.data"):
        dataset, report = load_vqa(DataConfig(dataset=str(_jsonl(folder / "s.jsonl", rows)), on_bad_row="skip"))
    assert dataset["source_row"] == [0, 6]
    assert (report.rows_read, report.rows_kept, report.rows_skipped) == (7, 2, 5)
    assert report.skipped == {"missing image": 2, "empty answer": 1, "unreadable image": 1, "box outside image": 1}
    assert report.examples["missing image"] == [1, 3]
    assert "skipped 5 of 7 rows: 2 missing image" in report.summary()
    assert report.summary() in caplog.text


def test_skip_mode_with_nothing_left_fails(folder):
    _fails(folder, [{**ROWS[0], "answer": ""}], "no usable rows", "1 empty answer", on_bad_row="skip")


def test_max_samples_stops_early(folder):
    rows = [ROWS[0], ROWS[1], {**ROWS[0], "image": "img/never-checked.png"}]
    dataset, report = load_vqa(DataConfig(dataset=str(_jsonl(folder / "m.jsonl", rows)), max_samples=2))
    assert len(dataset) == 2 and report.rows_read == 2


def test_extra_columns_pass_through(folder):
    rows = [{**row, "choices": ["a", "b"]} for row in ROWS[:2]]
    config = DataConfig(dataset=str(_jsonl(folder / "x.jsonl", rows)), extra_columns=["choices"])
    dataset, _ = load_vqa(config)
    assert dataset["choices"] == [["a", "b"], ["a", "b"]]
    assert to_conversation(dataset[0], config)["choices"] == ["a", "b"]


def test_config_errors_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match=r"\{question\}"):
        DataConfig(dataset="x.jsonl", question_template="Q: {q}")
    with pytest.raises(ValueError, match="larger than max_pixels"):
        DataConfig(dataset="x.jsonl", min_pixels=100, max_pixels=10)
    with pytest.raises(ValueError, match="on_bad_row"):
        DataConfig(dataset="x.jsonl", on_bad_row="ignore")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vqa(DataConfig(dataset=str(tmp_path / "missing.jsonl")))
    (tmp_path / "d.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_vqa(DataConfig(dataset=str(tmp_path / "d.txt")))
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_vqa(DataConfig(dataset=str(tmp_path / "bad.jsonl")))


def test_plain_saved_dataset_and_non_dataset_folder(folder):
    datasets.Dataset.from_list([{**ROWS[0], "answer": ["red"]}]).save_to_disk(str(folder / "plain"))
    dataset, _ = load_vqa(DataConfig(dataset=str(folder / "plain"), image_root=str(folder)))
    assert dataset[0]["answer"] == ["red"]
    with pytest.raises(ValueError, match="not one written by datasets' save_to_disk"):
        load_vqa(DataConfig(dataset=str(folder / "img")))
    _write(folder, "save_to_disk")
    with pytest.raises(ValueError, match=r"no split 'test'; set split to one of \['train'\]"):
        load_vqa(DataConfig(dataset=str(folder / "saved"), split="test"))


def test_config_parses_from_the_command_line():
    from trl import TrlParser

    argv = ["--dataset", "d.jsonl", "--on_bad_row", "skip", "--extra_columns", "a", "b", "--boxes_column", ""]
    (config,) = TrlParser((DataConfig,)).parse_args_into_dataclasses(argv)
    assert (config.on_bad_row, config.extra_columns, config.boxes_column) == ("skip", ["a", "b"], None)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="hub is offline"):
        load_vqa(DataConfig(dataset="someone/some-vqa-set"))


def test_to_conversation_matches_trl(folder):
    from trl.data_utils import prepare_multimodal_messages

    config = DataConfig(
        dataset=str(_write(folder, "jsonl")), system_prompt="Be brief.", question_template="Q: {question}"
    )
    dataset, _ = load_vqa(config)
    sample = to_conversation(dataset[2], config)
    system, user = sample["prompt"]
    assert system == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert user["content"] == [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q: How many?"}]
    assert [im.mode for im in sample["images"]] == ["RGB", "RGB"] and sample["images"][0].size == (112, 96)
    assert sample["answer"] == ["2"] and sample["boxes"] == [] and "image" not in sample
    filled = prepare_multimodal_messages(sample["prompt"], images=sample["images"])  # what GRPOTrainer does
    assert filled[1]["content"][0]["image"] is sample["images"][0]

    lazy = conversation_dataset(dataset, DataConfig(dataset=config.dataset))
    assert [m["role"] for m in lazy[0]["prompt"]] == ["user"] and len(lazy[1:3]["images"]) == 2
    # image_position: after puts the question first, so that the visual tokens follow it.
    after = to_conversation(dataset[2], DataConfig(dataset=config.dataset, image_position="after"))
    assert after["prompt"][0]["content"] == [
        {"type": "text", "text": "How many?\nAnswer with a single word or phrase."},
        {"type": "image"},
        {"type": "image"},
    ]
    with pytest.raises(ValueError, match="image_position"):
        DataConfig(dataset=config.dataset, image_position="middle")


@pytest.fixture(scope="module")
def processor():
    tiny = pytest.importorskip("glimpserl.models.tiny")
    return tiny.build_tiny_processor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)


def test_check_prompt_fits_catches_cut_image_tokens(folder, processor):
    config = DataConfig(dataset=str(_write(folder, "jsonl")))
    dataset, _ = load_vqa(config)
    sample = to_conversation(dataset[0], config)
    length = check_prompt_fits(processor, sample, None, max_length=4096)
    assert length > 12  # 112x96 resizes to 112x84: 12 merged visual tokens, plus the text
    assert check_prompt_fits(processor, sample["prompt"], sample["images"], max_length=length) == length
    # Losing only text (the end of the question, or the system turn) is allowed; losing part of the image is not.
    assert check_prompt_fits(processor, sample, None, max_length=length - 3, truncation_side="right") == length
    assert check_prompt_fits(processor, sample, None, max_length=length - 3, truncation_side="left") == length
    for side in ("left", "right"):
        with pytest.raises(ValueError, match=r"row 0: .* image tokens; cutting it to max_length=10") as err:
            check_prompt_fits(processor, sample, None, max_length=10, truncation_side=side)
        assert f"at least {length}" in str(err.value)


def test_csv_unclosed_quote_is_an_error_naming_its_line(folder):
    """Python's lenient CSV reading merged every line after an unclosed quote into one question."""
    text = (
        "image,question,answer\n"
        "img/0.png,What colour?,red\n"
        'img/1.png,"Which one?,green\n'
        "img/2.png,How many?,2\n"
        "img/0.png,What colour?,red\n"
    )
    (folder / "q.csv").write_text(text)
    for mode in ("error", "skip"):
        with pytest.raises(ValueError, match=r"q\.csv: line 3: .*not valid CSV.*close it"):
            load_vqa(DataConfig(dataset=str(folder / "q.csv"), on_bad_row=mode))


def test_csv_row_with_extra_or_missing_cells_is_a_bad_row(folder):
    text = (
        "image,question,answer\n"
        "img/0.png,What colour?,red\n"
        "img/1.png,Which one, the left?,green\n"
        "img/2.png,How many?\n"
        "img/0.png,What colour?,red\n"
    )
    (folder / "c.csv").write_text(text)
    _fails_csv = pytest.raises(ValueError, match=r"c\.csv: row 1, line 3: 4 cells but the header has 3")
    with _fails_csv:
        load_vqa(DataConfig(dataset=str(folder / "c.csv")))
    dataset, report = load_vqa(DataConfig(dataset=str(folder / "c.csv"), on_bad_row="skip"))
    assert dataset["source_row"] == [0, 3] and dataset["question"] == ["What colour?", "What colour?"]
    assert (report.rows_read, report.skipped) == (4, {"malformed CSV row": 2})
    assert "skipped 2 of 4 rows" in report.summary()


def test_csv_quoted_cells_with_commas_and_newlines_still_load(folder):
    text = 'image,question,answer\nimg/0.png,"Left, or right?",red\nimg/1.png,"Two\nlines",green\n\ufeff'
    (folder / "ok.csv").write_bytes(("\ufeff" + text[:-1]).encode())  # an Excel BOM before the header
    dataset, report = load_vqa(DataConfig(dataset=str(folder / "ok.csv")))
    assert dataset["question"] == ["Left, or right?", "Two\nlines"] and report.rows_kept == 2


def test_non_utf8_jsonl_line_names_file_and_line(folder):
    lines = [json.dumps(row).encode() for row in ROWS[:2]]
    lines.insert(1, b'{"image": "img/0.png", "question": "caf\xe9?", "answer": "x"}')
    (folder / "latin.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=r"latin\.jsonl: row 1, line 2: the line is not UTF-8 \(byte 0xe9"):
        load_vqa(DataConfig(dataset=str(folder / "latin.jsonl")))
    dataset, report = load_vqa(DataConfig(dataset=str(folder / "latin.jsonl"), on_bad_row="skip"))
    assert dataset["source_row"] == [0, 2] and report.skipped == {"not UTF-8": 1}


def test_non_utf8_csv_cell_names_the_row(folder):
    (folder / "latin.csv").write_bytes(b"image,question,answer\nimg/0.png,caf\xe9?,red\nimg/1.png,ok?,green\n")
    with pytest.raises(ValueError, match=r"latin\.csv: row 0, line 2: the row holds bytes that are not UTF-8"):
        load_vqa(DataConfig(dataset=str(folder / "latin.csv")))


@pytest.mark.parametrize(
    ("name", "content"), [("e.jsonl", ""), ("e.jsonl", "\n\n"), ("e.csv", "image,question,answer\n")]
)
def test_empty_dataset_file_says_it_is_empty(folder, name, content):
    (folder / name).write_text(content)
    with pytest.raises(ValueError, match=rf"{name} holds no rows \(an empty file"):
        load_vqa(DataConfig(dataset=str(folder / name)))


def test_extreme_aspect_ratio_is_a_bad_row(folder):
    Image.new("RGB", (2000, 5), "red").save(folder / "img" / "strip.png")
    rows = [ROWS[0], {**ROWS[0], "image": "img/strip.png", "boxes": []}, ROWS[1]]
    _fails(folder, rows, "row 1", "strip.png is 2000x5", "max_aspect_ratio=200")
    dataset, report = load_vqa(DataConfig(dataset=str(_jsonl(folder / "s.jsonl", rows)), on_bad_row="skip"))
    assert dataset["source_row"] == [0, 2] and report.skipped == {"extreme aspect ratio": 1}
    dataset, _ = load_vqa(DataConfig(dataset=str(folder / "s.jsonl"), max_aspect_ratio=500))
    assert len(dataset) == 3
