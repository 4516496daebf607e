"""Caption-file formats: Flickr8k token files with split lists, COCO and Karpathy JSON, CSV, detection."""

import csv
import json
from pathlib import Path

import pytest
from conftest import SHARED

from kcap.data.caption_files import CaptionFileError, caption_formats, detect_format, find_caption_file, read_captions
from kcap.data.splits import assign_splits

FLICKR = SHARED / "data" / "flickr8k_1000"
SPLIT_LISTS = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}


def _rows(dataset):
    """What a user gets from a reader: each image's path, captions (in order) and split, in file order."""
    return [(image.path, image.captions, image.split) for image in dataset]


# Converters written here, not in kcap: the readers are checked against files made independently of them.
def _write_csv(images, path):
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "caption", "split"])
        for image in images:
            for caption in image.captions:
                writer.writerow([image.name, caption, image.split])


def _write_coco(images, path):
    entries = [{"id": 1000 + i, "file_name": image.name, "width": 500, "height": 375} for i, image in enumerate(images)]
    # Annotations interleaved across images (as in real COCO files); each image's captions keep their order.
    annotations = []
    for rank in range(max(len(image.captions) for image in images)):
        for i, image in enumerate(images):
            if rank < len(image.captions):
                annotations.append({"id": len(annotations), "image_id": 1000 + i, "caption": image.captions[rank]})
    path.write_text(json.dumps({"info": {}, "images": entries, "annotations": annotations}), encoding="utf-8")


def _write_karpathy(images, path, filepath):
    entries = []
    for i, image in enumerate(images):
        # Karpathy's COCO file calls part of the training data "restval"; use it for every other training image.
        split = "restval" if image.split == "train" and i % 2 else image.split
        sentences = [{"raw": c, "tokens": c.lower().split(), "imgid": i, "sentid": 5 * i + k} for k, c in enumerate(image.captions)]
        entries.append({"filepath": filepath, "filename": image.name, "imgid": i, "split": split, "sentences": sentences})
    path.write_text(json.dumps({"dataset": "flickr8k", "images": entries}), encoding="utf-8")


@pytest.fixture(scope="module")
def flickr():
    token_file = FLICKR / "Flickr8k.token.txt"
    if not token_file.is_file():
        pytest.skip(f"the shared Flickr8k subset is not at {FLICKR} (set KCAP_SHARED to the shared folder)")
    return read_captions(token_file, format="flickr8k")


def test_flickr8k_token_file_reads_the_official_splits(flickr):
    assert flickr.split_sizes() == {"train": 753, "val": 113, "test": 125}
    assert len(flickr.images) == 991 and len(flickr.excluded) == 9
    assert all(len(image.captions) == 5 for image in flickr.images + flickr.excluded)
    assert flickr.images[0].path == FLICKR / "Images" / "1000268201_693b08cb0e.jpg"
    assert flickr.images[0].captions[1] == "A girl going into a wooden building ."
    # Each split is exactly its list file; the excluded images are exactly those in no list.
    listed = {}
    for split, file in SPLIT_LISTS.items():
        names = (FLICKR / file).read_text().split()
        assert {image.name for image in flickr.subset(split)} == set(names)
        listed.update(dict.fromkeys(names, split))
    assert all(listed[image.name] == image.split for image in flickr.images)
    kaggle = read_captions(FLICKR / "captions.txt")
    assert [image.name for image in flickr.excluded] == [image.name for image in kaggle if image.name not in listed]
    assert all(image.split is None for image in flickr.excluded)
    # The same captions as the Kaggle-style CSV of the same images.
    assert {i.name: i.captions for i in flickr.images + flickr.excluded} == {i.name: i.captions for i in kaggle}
    # Kaggle's folder holds captions.txt and the token file; with the split lists beside them,
    # the folder reads as the token file, so its official splits apply.
    assert read_captions(FLICKR).source == str(FLICKR / "Flickr8k.token.txt")


def test_images_in_no_split_list_never_get_a_random_split(flickr):
    from kcap.data.loading import load_checked_dataset
    from kcap.training.config import TrainConfig

    # The path the trainer takes: a folder holding the token file, format named.
    config = TrainConfig(data=str(FLICKR), format="flickr8k", val_fraction=0.3, test_fraction=0.3)
    dataset, _ = load_checked_dataset(config.data_settings(), progress=False)
    assert dataset.split_sizes() == {"train": 753, "val": 113, "test": 125}
    assert _rows(dataset) == _rows(flickr)
    excluded = {image.path for image in dataset.excluded}
    assert len(excluded) == 9 and not excluded & {image.path for image in dataset}
    assert assign_splits(flickr).split_sizes() == {"train": 753, "val": 113, "test": 125}


def test_csv_coco_and_karpathy_conversions_read_back_the_same(flickr, tmp_path):
    images_dir = FLICKR / "Images"
    # CSV with a split column: images, captions and splits.
    _write_csv(flickr.images, tmp_path / "flickr.csv")
    for format in ("csv", "auto"):
        assert _rows(read_captions(tmp_path / "flickr.csv", images_dir, format)) == _rows(flickr)

    # Karpathy JSON with filepath "Images": paths are images_dir / filepath / filename.
    _write_karpathy(flickr.images, tmp_path / "dataset_flickr8k.json", "Images")
    for format in ("karpathy", "auto"):
        assert _rows(read_captions(tmp_path / "dataset_flickr8k.json", FLICKR, format)) == _rows(flickr)

    # COCO has no split field: one COCO file per split, as COCO ships train and val; each
    # reads back that split's images and captions with no split set (the random split applies).
    for split in ("train", "val", "test"):
        coco_file = tmp_path / f"captions_{split}.json"
        _write_coco(flickr.subset(split), coco_file)
        expected = [(image.path, image.captions, None) for image in flickr.subset(split)]
        for format in ("coco", "auto"):
            assert _rows(read_captions(coco_file, images_dir, format)) == expected


# --- small generated files: detection and errors -------------------------------------------------------


def _images(folder, names=("a.jpg", "b.jpg")):
    (folder / "Images").mkdir(exist_ok=True)
    for name in names:
        (folder / "Images" / name).write_bytes(b"")
    return folder / "Images"


TOKEN = "a.jpg#0\tA dog runs .\na.jpg#1\tA brown dog .\nb.jpg#0\tA cat sleeps .\n"
COCO = {
    "images": [{"id": 7, "file_name": "a.jpg"}, {"id": 3, "file_name": "b.jpg"}, {"id": 9, "file_name": "c.jpg"}],
    "annotations": [
        {"id": 1, "image_id": 3, "caption": "A cat sleeps ."},
        {"id": 2, "image_id": 7, "caption": "A dog runs ."},
        {"id": 3, "image_id": 7, "caption": " A brown dog . "},
    ],
}
KARPATHY = {
    "images": [
        {"filename": "a.jpg", "split": "test", "sentences": [{"raw": "A dog runs ."}, {"raw": "A brown dog ."}]},
        {"filename": "b.jpg", "split": "restval", "sentences": [{"raw": "A cat sleeps ."}]},
    ]
}
EXPECTED = [(["A dog runs .", "A brown dog ."]), (["A cat sleeps ."])]


def _write(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=1), encoding="utf-8")
    return path


def _assert_refused(path, format, content, message):
    """`content` written to `path` beside images a.jpg and b.jpg: reading it as `format` fails with `message`."""
    _images(path.parent)
    _write(path, content)
    with pytest.raises(CaptionFileError, match=message):
        read_captions(path, format=format)


@pytest.mark.parametrize(
    "file_name, content, format, splits, folder_formats",
    [
        ("captions.csv", "image,caption\na.jpg,A dog runs .\na.jpg,A brown dog .\nb.jpg,A cat sleeps .\n", "csv", [None, None], ("auto", None)),
        ("Flickr8k.token.txt", TOKEN, "flickr8k", [None, None], ("auto", None)),
        ("results_20130124.token", TOKEN, "flickr8k", [None, None], ("auto", None)),
        ("captions_val2014.json", COCO, "coco", [None, None], ("auto", None)),
        ("dataset_flickr8k.json", KARPATHY, "karpathy", ["test", "train"], ("auto", None)),
        # Detection goes by content, not by name.
        ("captions.txt", TOKEN, "flickr8k", [None, None], ("auto",)),  # --format flickr8k looks for token names
        ("annotations.txt", COCO, "coco", [None, None], ()),  # not a name a folder is searched for
        # Names may hold spaces (the token reader splits at the tab).
        ("Flickr8k.token.txt", TOKEN.replace("a.jpg", "my a.jpg"), "flickr8k", [None, None], ("auto", None)),
    ],
)
def test_auto_detects_each_format_in_a_file_or_its_folder(tmp_path, file_name, content, format, splits, folder_formats):
    images_dir = _images(tmp_path, ["my a.jpg", "a.jpg", "b.jpg"])
    path = _write(tmp_path / file_name, content)
    assert detect_format(path) == format
    readings = [read_captions(path), read_captions(path, format=format)]
    for folder_format in folder_formats:  # None: the file's own format
        assert find_caption_file(tmp_path, folder_format or format) == path
        readings.append(read_captions(tmp_path, format=folder_format or format))
    first = "my a.jpg" if "my a.jpg" in str(content) else "a.jpg"
    for dataset in readings:
        assert [i.path for i in dataset] == [images_dir / first, images_dir / "b.jpg"]
        assert [i.captions for i in dataset] == EXPECTED
        assert [i.split for i in dataset] == splits
    assert set(caption_formats()) >= {"auto", "csv", "flickr8k", "coco", "karpathy"}


def test_flickr8k_split_lists_beside_the_token_file(tmp_path):
    images_dir = _images(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    _write(tmp_path / "Flickr8k.token.txt", TOKEN + "c.jpg#0\tA bird .\r\n")
    _write(tmp_path / "Flickr_8k.trainImages.txt", "b.jpg\n\nunknown.jpg\n")  # names without captions are ignored
    _write(tmp_path / "Flickr_8k.testImages.txt", "c.jpg\n")  # no dev list: the lists present decide
    dataset = read_captions(tmp_path)
    assert [(i.name, i.split) for i in dataset] == [("b.jpg", "train"), ("c.jpg", "test")]
    assert [i.path for i in dataset.excluded] == [images_dir / "a.jpg"]
    assert dataset.images[1].captions == ["A bird ."]
    # Twice in one list: a warning, the split is the same.
    _write(tmp_path / "Flickr_8k.testImages.txt", "c.jpg\nc.jpg\n")
    problems = []
    assert [(i.name, i.split) for i in read_captions(tmp_path, errors=problems)] == [("b.jpg", "train"), ("c.jpg", "test")]
    assert [(str(p), p.severity) for p in problems] == [
        (f"{tmp_path / 'Flickr_8k.testImages.txt'}:2: 'c.jpg' is already listed at line 1.", "warning")
    ]
    assert read_captions(tmp_path).split_sizes()["test"] == 1
    # The same image in two lists is refused.
    _write(tmp_path / "Flickr_8k.devImages.txt", "a.jpg\nc.jpg\n")
    with pytest.raises(CaptionFileError, match=r"Flickr_8k.testImages.txt:1: 'c.jpg' is already listed in .*devImages.txt:2"):
        read_captions(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("a.jpg#0\tA dog .\na.jpg#1 A dog without a tab .\n", r"Flickr8k.token.txt:2: expected NAME#N<TAB>caption, found no tab"),
        ("a.jpg\tA dog .\n", r"Flickr8k.token.txt:1: expected NAME#N before the tab .* found 'a.jpg'"),
        ("a.jpg#x\tA dog .\n", r"Flickr8k.token.txt:1: expected NAME#N before the tab"),
        ("a.jpg#0\tA dog .\n\nb.jpg#0\t  \n", r"Flickr8k.token.txt:3: the caption of 'b.jpg' is empty"),
        ("#0\tA dog .\n", r"Flickr8k.token.txt:1: the image name before '#' is empty"),
        ("a.jpg#0\tA dog .\na.jpg#1\t. . .\n", r"Flickr8k.token.txt:2: the caption of 'a.jpg' has no words, only punctuation: '\. \. \.'"),
        ("a.jpg#0\tA dog .\na.jpg#0\tA cat .\n", r"Flickr8k.token.txt:2: caption #0 of 'a.jpg' was already given at line 1"),
        ("a.jpg#0\tA dog .\n../../etc/passwd#0\tA secret .\n", r"Flickr8k.token.txt:2: image path '../../etc/passwd' resolves outside"),
        ("\n\n", r"Flickr8k.token.txt: no caption lines"),
    ],
)
def test_bad_token_lines_name_file_line_and_reason(tmp_path, content, message):
    _assert_refused(tmp_path / "Flickr8k.token.txt", "flickr8k", content, message)


def test_non_utf8_token_file_and_split_list(tmp_path):
    _images(tmp_path)
    path = tmp_path / "Flickr8k.token.txt"
    path.write_bytes(b"a.jpg#0\tA dog .\nb.jpg#0\tA caf\xe9 .\n")
    with pytest.raises(CaptionFileError, match=r"Flickr8k.token.txt:2: text is not UTF-8"):
        read_captions(tmp_path)  # auto: detected as a token file despite the bad byte
    _write(path, TOKEN)
    (tmp_path / "Flickr_8k.testImages.txt").write_bytes(b"a.jpg\n\xff.jpg\n")
    with pytest.raises(CaptionFileError, match=r"Flickr_8k.testImages.txt:2: text is not UTF-8"):
        read_captions(path)


def _with(base, path, value):
    """A deep copy of `base` with the entry at `path` (keys and indices) replaced, or deleted for `...`."""
    data = json.loads(json.dumps(base))
    *parents, last = path
    target = data
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return data


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"images": [],\n "annotations": [}', r"captions.json:2:18: not valid JSON"),
        ([COCO], r"captions.json: expected a JSON object with an 'images' list, found a list"),
        (_with(COCO, ["annotations"], ...), r"captions.json: no 'annotations' key at the top level"),
        (_with(COCO, ["images"], {"a": 1}), r"captions.json: 'images' must be a list, found an object"),
        (_with(COCO, ["images", 1, "file_name"], ...), r"captions.json: images\[1\]: no 'file_name' key"),
        (_with(COCO, ["images", 2], "c.jpg"), r"captions.json: images\[2\]: expected a JSON object, found a string"),
        (_with(COCO, ["images", 1, "id"], True), r"captions.json: images\[1\]: 'id' must be int or str, found a boolean"),
        (_with(COCO, ["images", 2, "id"], 7), r"captions.json: images\[2\]: image id 7 is already used by images\[0\]"),
        (_with(COCO, ["images", 2, "file_name"], "a.jpg"), r"images\[2\]: file_name 'a.jpg' is already used by images\[0\]"),
        # Another spelling of the same file is the same image: it could otherwise be in two splits.
        (_with(COCO, ["images", 2, "file_name"], "./x/../a.jpg"), r"images\[2\]: file_name 'a.jpg' is already used by images\[0\]"),
        (_with(COCO, ["images", 0, "file_name"], "../a.jpg"), r"captions.json: images\[0\]: image path '../a.jpg' resolves outside"),
        (_with(COCO, ["annotations", 2, "caption"], ...), r"captions.json: annotations\[2\]: no 'caption' key"),
        (_with(COCO, ["annotations", 1, "caption"], " "), r"captions.json: annotations\[1\]: 'caption' is empty"),
        (_with(COCO, ["annotations", 1, "caption"], "--"), r"annotations\[1\]: the caption has no words, only punctuation: '--'"),
        (_with(COCO, ["annotations", 0, "caption"], 5), r"annotations\[0\]: 'caption' must be str, found a number"),
        (_with(COCO, ["annotations", 2, "image_id"], 8), r"annotations\[2\]: image_id 8 is not the id of any entry"),
        (_with(COCO, ["annotations"], []), r"captions.json: no image has a caption \(3 images, 0 annotations\)"),
    ],
)
def test_bad_coco_files_name_file_entry_and_reason(tmp_path, content, message):
    _assert_refused(tmp_path / "captions.json", "coco", content, message)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"images": [\n{"filename": "a.jpg",}]}', r"dataset.json:2:22: not valid JSON"),
        ({"images": []}, r"dataset.json: 'images' is empty"),
        (_with(KARPATHY, ["images", 0, "filename"], ...), r"dataset.json: images\[0\]: no 'filename' key"),
        (_with(KARPATHY, ["images", 1, "split"], ...), r"dataset.json: images\[1\]: no 'split' key"),
        (_with(KARPATHY, ["images", 1, "split"], "dev"), r"images\[1\]: unknown split 'dev'; expected one of \('train', 'val', 'test'\) or restval"),
        (_with(KARPATHY, ["images", 1, "sentences"], []), r"images\[1\]: 'sentences' is empty"),
        (_with(KARPATHY, ["images", 0, "sentences", 1], {"tokens": ["a", "dog"]}), r"images\[0\].sentences\[1\]: no 'raw' key"),
        (_with(KARPATHY, ["images", 0, "sentences", 0, "raw"], ["A", "dog"]), r"images\[0\].sentences\[0\]: 'raw' must be str, found a list"),
        (_with(KARPATHY, ["images", 0, "sentences", 0, "raw"], " ."), r"images\[0\].sentences\[0\]: the caption has no words, only punctuation: '\.'"),
        (_with(KARPATHY, ["images", 1, "filename"], "a.jpg"), r"images\[1\]: image 'a.jpg' already appears at images\[0\]"),
        (_with(KARPATHY, ["images", 1, "filename"], "./a.jpg"), r"images\[1\]: image 'a.jpg' already appears at images\[0\]"),
        (_with(KARPATHY, ["images", 1, "filepath"], ".."), r"dataset.json: images\[1\]: image path '../b.jpg' resolves outside"),
        (_with(KARPATHY, ["images", 1, "filepath"], 3), r"images\[1\]: 'filepath' must be str, found a number"),
    ],
)
def test_bad_karpathy_files_name_file_entry_and_reason(tmp_path, content, message):
    _assert_refused(tmp_path / "dataset.json", "karpathy", content, message)


def test_skipping_bad_json_entries_leaves_out_what_they_name_and_no_more(tmp_path):
    from PIL import Image

    from kcap.data.check import check_data

    for name in _images(tmp_path).iterdir():
        Image.new("RGB", (32, 32), "red").save(name, format="JPEG")
    # Karpathy: one sentence without words costs that sentence, as a bad CSV row does, not its image.
    _write(tmp_path / "dataset.json", _with(KARPATHY, ["images", 0, "sentences", 0, "raw"], "..."))
    report = check_data(tmp_path / "dataset.json", progress=False)
    assert [str(p) for p in report.errors] == [
        f"{tmp_path / 'dataset.json'}: images[0].sentences[0]: the caption has no words, only punctuation: '...'."
    ]
    assert [(i.name, i.captions) for i in report.dataset] == [("a.jpg", ["A brown dog ."]), ("b.jpg", ["A cat sleeps ."])]
    (tmp_path / "dataset.json").unlink()
    # COCO: an image entry refused takes its annotations with it, without an error for each.
    _write(tmp_path / "captions.json", _with(COCO, ["images", 0, "file_name"], "../a.jpg"))
    report = check_data(tmp_path / "captions.json", progress=False)
    assert [str(p) for p in report.errors] == [
        f"{tmp_path / 'captions.json'}: images[0]: image path '../a.jpg' resolves outside {tmp_path / 'Images'}."
    ]
    assert [(i.name, i.captions) for i in report.dataset] == [("b.jpg", ["A cat sleeps ."])]
    # An image entry with no caption is left out, and said to be (a conversion may have lost them).
    assert [str(p) for p in report.warnings] == [
        f"{tmp_path / 'captions.json'}: 1 of the 2 entries of 'images' have no caption in 'annotations' "
        f"and are left out (the first: c.jpg)."
    ]
    # A float id is refused once; its annotations (naming it as an int) go with it, without an error each.
    _write(tmp_path / "captions.json", _with(COCO, ["images", 0, "id"], 7.0))
    report = check_data(tmp_path / "captions.json", progress=False)
    assert [str(p) for p in report.errors] == [
        f"{tmp_path / 'captions.json'}: images[0]: 'id' must be int or str, found a number."
    ]


def test_a_token_file_with_good_lines_but_bad_paths_gets_each_lines_reason(tmp_path):
    _images(tmp_path)
    path = _write(tmp_path / "Flickr8k.token.txt", "".join(f"/data/flickr/{i}.jpg#0\tA dog runs .\n" for i in range(12)))
    problems = []
    read_captions(path, errors=problems)
    assert len(problems) == 12
    assert str(problems[0]) == f"{path}:1: image path '/data/flickr/0.jpg' resolves outside {tmp_path / 'Images'}."


def test_data_check_counts_the_images_in_no_split_list(tmp_path):
    from PIL import Image

    from kcap.data.check import check_data

    for name in _images(tmp_path, ["a.jpg", "b.jpg", "c.jpg"]).iterdir():
        Image.new("RGB", (32, 32), "red").save(name, format="JPEG")
    _write(tmp_path / "Flickr8k.token.txt", TOKEN + "c.jpg#0\tA bird .\n")
    _write(tmp_path / "Flickr_8k.trainImages.txt", "a.jpg\nb.jpg\n")
    report = check_data(tmp_path, progress=False)
    token = tmp_path / "Flickr8k.token.txt"
    assert report.summary() == f"{token}: 2 images, 3 captions (1 more image in no split list, left out); 0 bad images, 0 bad caption rows, 0 warnings."
    assert report.to_json()["images_in_no_split_list"] == 1


def test_a_folder_with_split_lists_reads_its_token_file_and_says_where_splits_come_from(tmp_path, caplog):
    import dataclasses

    from PIL import Image

    from kcap.data.loading import load_checked_dataset
    from kcap.training.config import TrainConfig

    for name in _images(tmp_path, names=[f"{i}.jpg" for i in range(6)]).iterdir():
        Image.new("RGB", (32, 32), "red").save(name, format="JPEG")
    _write(tmp_path / "captions.txt", "image,caption\n" + "".join(f"{i}.jpg,A dog number {i} .\n" for i in range(6)))
    _write(tmp_path / "Flickr8k.token.txt", "".join(f"{i}.jpg#0\tA dog number {i} .\n" for i in range(6)))
    config = TrainConfig(data=str(tmp_path), backbone="small_cnn")
    with caplog.at_level("INFO", logger="kcap"):
        dataset, _ = load_checked_dataset(config.data_settings(), progress=False)
    assert dataset.source == str(tmp_path / "captions.txt")
    assert "splits drawn at random by image (--seed 0, --val-fraction 0.1, --test-fraction 0.1)" in caplog.text

    _write(tmp_path / "Flickr_8k.trainImages.txt", "0.jpg\n1.jpg\n2.jpg\n3.jpg\n")
    _write(tmp_path / "Flickr_8k.testImages.txt", "4.jpg\n")
    caplog.clear()
    with caplog.at_level("INFO", logger="kcap"):
        dataset, _ = load_checked_dataset(dataclasses.replace(config, val_fraction=0.3).data_settings(), progress=False)
    assert dataset.source == str(tmp_path / "Flickr8k.token.txt")
    assert dataset.split_sizes() == {"train": 4, "val": 0, "test": 1}
    assert f"Data: {tmp_path / 'Flickr8k.token.txt'}, 5 images (train 4, val 0, test 1; 1 in no split list, left out); splits as the data gives them" in caplog.text
    assert "--val-fraction and --test-fraction do not apply" in caplog.text


def test_coco_and_karpathy_ids_travel_to_the_runs_manifest(tmp_path):
    _images(tmp_path)
    _write(tmp_path / "captions.json", COCO)
    manifest = read_captions(tmp_path / "captions.json").to_manifest(splits=[None])
    assert [(Path(i["image"]).name, i["id"]) for i in manifest["splits"][None]] == [("a.jpg", 7), ("b.jpg", 3)]
    (tmp_path / "captions.json").unlink()
    with_cocoid = _with(KARPATHY, ["images", 0, "cocoid"], 391895)
    dataset = read_captions(_write(tmp_path / "dataset.json", with_cocoid))
    assert [i.source_id for i in dataset] == [391895, None]  # the Flickr files have no cocoid
    assert "id" not in dataset.to_manifest()["splits"]["train"][0]


def test_a_csv_read_as_a_token_file_is_one_error_not_one_per_line(tmp_path):
    from kcap.data.check import check_data

    _images(tmp_path)
    path = _write(tmp_path / "captions.txt", "image,caption\n" + "a.jpg,A dog runs .\n" * 5000)
    with pytest.raises(CaptionFileError, match=r"captions.txt: not a Flickr8k token file: none of its first 10 caption lines is NAME#N<TAB>caption \(the first is 'image,caption'\). Check --format"):
        check_data(path, format="flickr8k", progress=False)


def test_non_utf8_json_is_reported_with_its_line(tmp_path):
    _images(tmp_path)
    path = tmp_path / "captions.json"
    path.write_bytes(b'{"images": [{"id": 1, "file_name": "a.jpg"}],\n "annotations": [{"image_id": 1, "caption": "caf\xe9"}]}')
    with pytest.raises(CaptionFileError, match=r"captions.json:2: text is not UTF-8"):
        read_captions(path)


def test_auto_detection_failures_say_what_was_looked_for(tmp_path):
    _images(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"No caption file in .*: looked for captions.csv, captions.txt, Flickr8k.token.txt, \*.token.txt, \*.token, \*.json"):
        read_captions(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"looked for \*.json"):
        read_captions(tmp_path, format="coco")
    _write(tmp_path / "dataset.json", {"images": [{"path": "a.jpg"}]})
    with pytest.raises(CaptionFileError, match=r"dataset.json: cannot tell which caption format .* found top-level keys \['images'\]"):
        read_captions(tmp_path)
    _write(tmp_path / "other.json", COCO)
    with pytest.raises(FileNotFoundError, match=r"Several caption files match \*.json .*\(dataset.json, other.json\)"):
        read_captions(tmp_path)
    # A named format reads the file as that format and says what is wrong with it.
    with pytest.raises(CaptionFileError, match=r"other.json: images\[0\]: no 'filename' key"):
        read_captions(tmp_path / "other.json", format="karpathy")
    with pytest.raises(ValueError, match=r"Unknown caption format 'flickr30k'; expected one of \('auto', 'csv', 'flickr8k', 'coco', 'karpathy'\)"):
        read_captions(tmp_path / "other.json", format="flickr30k")


def test_csv_rows_of_one_image_must_agree_on_its_split(tmp_path):
    _images(tmp_path)
    path = _write(tmp_path / "captions.csv", "image,caption,split\na.jpg,A dog .,train\nb.jpg,A cat .,restval\na.jpg,A brown dog .,test\n")
    with pytest.raises(CaptionFileError, match=r"captions.csv:4: 'a.jpg' is in split 'test' here but in 'train' at line 2"):
        read_captions(path)
    _write(path, "image,caption,split\na.jpg,A dog .,train\nb.jpg,A cat .,restval\na.jpg,A brown dog .,TRAIN\n")
    assert [(i.name, i.split, len(i.captions)) for i in read_captions(path)] == [("a.jpg", "train", 2), ("b.jpg", "train", 1)]
