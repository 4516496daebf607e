import csv
import os
import filecmp

import numpy as np
import pytest
from PIL import Image

from kcap.data.caption_files import read_captions
from kcap.data.synthetic import COLORS, SHAPES, cached_synthetic_dataset, make_example, write_synthetic_dataset
from kcap.text import tokenize


def test_same_seed_same_files(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", num_images=12, seed=5, image_size=64)
    b = write_synthetic_dataset(tmp_path / "b", num_images=12, seed=5, image_size=64)
    c = write_synthetic_dataset(tmp_path / "c", num_images=12, seed=6, image_size=64)
    assert a.read_text() == b.read_text() != c.read_text()
    assert filecmp.cmp(a.parent / "images" / "00003.png", b.parent / "images" / "00003.png", shallow=False)


def test_writing_the_set_never_deletes_a_users_files(tmp_path):
    mine = tmp_path / "mydata"
    (mine / "images").mkdir(parents=True)
    (mine / "images" / "photo.jpg").write_bytes(b"my photo")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious")
    for output in (mine, a_file):
        with pytest.raises(FileExistsError, match=f"{output} exists and is not an earlier synthetic set"):
            write_synthetic_dataset(output, num_images=4, seed=0, image_size=64)
    assert (mine / "images" / "photo.jpg").read_bytes() == b"my photo" and a_file.read_text() == "precious"
    # An empty folder may be written; an earlier set is kept when the settings are the same, and
    # replaced only with force when they are not (runs trained on it read its images).
    (tmp_path / "empty").mkdir()
    first = write_synthetic_dataset(tmp_path / "empty", num_images=4, seed=0, image_size=64)
    written_at = first.stat().st_mtime_ns
    assert write_synthetic_dataset(tmp_path / "empty", num_images=4, seed=0, image_size=64).stat().st_mtime_ns == written_at
    with pytest.raises(FileExistsError, match=r"holds a synthetic set of other settings \(num_images 4 → 6, seed 0 → 1\).*--force"):
        write_synthetic_dataset(tmp_path / "empty", num_images=6, seed=1, image_size=64)
    assert len(read_captions(first)) == 4
    rewritten = write_synthetic_dataset(tmp_path / "empty", num_images=6, seed=1, image_size=64, force=True)
    assert len(read_captions(rewritten)) == 6
    # A damaged set of the same settings is written again: files missing, or with force.
    (tmp_path / "empty" / "images" / "00001.png").unlink()
    (tmp_path / "empty" / "images" / "00002.png").write_bytes(b"cut")
    write_synthetic_dataset(tmp_path / "empty", num_images=6, seed=1, image_size=64)
    assert (tmp_path / "empty" / "images" / "00001.png").is_file()
    (tmp_path / "empty" / "images" / "00002.png").write_bytes(b"cut")
    write_synthetic_dataset(tmp_path / "empty", num_images=6, seed=1, image_size=64, force=True)
    assert (tmp_path / "empty" / "images" / "00002.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="num_images must be at least 1"):
        write_synthetic_dataset(tmp_path / "none", num_images=0)


def test_the_cached_set_comes_back_whole_after_losing_or_damaging_an_image(tmp_path, monkeypatch):
    monkeypatch.setenv("KCAP_CACHE_DIR", str(tmp_path / "cache"))
    captions = cached_synthetic_dataset(num_images=3, image_size=64)
    (captions.parent / "images" / "00001.png").unlink()
    assert cached_synthetic_dataset(num_images=3, image_size=64) == captions
    assert (captions.parent / "images" / "00001.png").is_file()
    # A file damaged in place: training on the set writes it again rather than asking the
    # user to fix a file in kcap's cache.
    from kcap.data.loading import load_checked_dataset
    from kcap.training.config import TrainConfig

    intact = (captions.parent / "images" / "00002.png").read_bytes()
    (captions.parent / "images" / "00002.png").write_bytes(intact[: len(intact) // 2])
    dataset, report = load_checked_dataset(TrainConfig(data="synthetic", synthetic_images=3, synthetic_image_size=64).data_settings())
    assert report.ok and len(dataset.images) == 3
    assert (captions.parent / "images" / "00002.png").read_bytes() == intact


@pytest.mark.parametrize("damage", ["captions cut short", "a caption changed", "synthetic.json cut short"])
def test_the_cached_set_comes_back_whole_after_its_caption_file_or_marker_is_damaged(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("KCAP_CACHE_DIR", str(tmp_path / "cache"))
    captions = cached_synthetic_dataset(num_images=3, image_size=64)
    whole = captions.read_bytes()
    if damage == "captions cut short":  # a row lost: training would quietly see fewer captions
        captions.write_bytes(whole[: whole.rindex(b"\n", 0, len(whole) - 1) + 1])
    elif damage == "a caption changed":
        last_word = whole.rstrip().rindex(b" ") + 1
        captions.write_bytes(whole[:last_word] + b"zebra\r\n")
    else:
        marker = captions.parent / "synthetic.json"
        marker.write_bytes(marker.read_bytes()[:10])
    assert captions.read_bytes() != whole or damage == "synthetic.json cut short"
    assert cached_synthetic_dataset(num_images=3, image_size=64) == captions
    assert captions.read_bytes() == whole and len(read_captions(captions)) == 3


def test_a_named_set_whose_synthetic_json_cannot_be_read_is_replaced_only_with_force(tmp_path):
    captions = write_synthetic_dataset(tmp_path / "shapes", num_images=2, image_size=64)
    (tmp_path / "shapes" / "synthetic.json").write_text("{not json")
    with pytest.raises(FileExistsError, match=r"synthetic.json cannot be read.*--force to write the set there again"):
        write_synthetic_dataset(tmp_path / "shapes", num_images=2, image_size=64)
    assert write_synthetic_dataset(tmp_path / "shapes", num_images=2, image_size=64, force=True) == captions
    assert len(read_captions(captions)) == 2


def test_written_set_reads_back_with_five_captions_per_image(tmp_path):
    path = write_synthetic_dataset(tmp_path / "shapes", num_images=20, seed=0, image_size=96)
    dataset = read_captions(path)
    assert len(dataset) == 20 and all(len(i.captions) == 5 for i in dataset)
    umask = os.umask(0)
    os.umask(umask)
    assert ((tmp_path / "shapes").stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's 0700
    with Image.open(dataset.images[0].path) as image:
        assert image.size == (96, 96) and image.mode == "RGB"
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == ["image", "caption"]


def test_captions_name_every_object_and_the_layout():
    for index in range(60):
        image, objects, layout, captions = make_example(index, seed=1, image_size=96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert 1 <= len(objects) <= 3 and len(set(objects)) == len(objects)
        for caption in captions:
            words = tokenize(caption)
            for obj in objects:
                assert obj.color in words and obj.shape in words
            if len(objects) > 1:
                sides = {"left", "right", "above", "below", "top", "bottom", "shapes"}
                assert sides & set(words), caption
            if any(w in words for w in ("left", "right")):
                assert layout == "horizontal"


def test_the_set_varies_colours_shapes_counts_and_layouts():
    examples = [make_example(i, seed=0) for i in range(200)]
    colours = {o.color for _, objs, _, _ in examples for o in objs}
    shapes = {o.shape for _, objs, _, _ in examples for o in objs}
    sizes = {o.size for _, objs, _, _ in examples for o in objs}
    counts = {len(objs) for _, objs, _, _ in examples}
    templates = {tuple(tokenize(c))[:2] for _, _, _, caps in examples for c in caps}
    assert colours == set(COLORS) and shapes == set(SHAPES) and sizes == {"small", "large"}
    assert counts == {1, 2, 3} and len(templates) > 10


def test_objects_have_their_colour_where_drawn():
    # The object's colour must be the most common saturated colour in the picture.
    for index in range(10):
        image, objects, _, _ = make_example(index, seed=2, image_size=96)
        pixels = image.reshape(-1, 3).astype(float)
        for obj in objects:
            target = np.asarray(COLORS[obj.color], float)
            assert (np.linalg.norm(pixels - target, axis=1) < 40).sum() > 20


def test_a_path_given_as_flag_equals_tilde_is_under_home(tmp_path, monkeypatch, capsys):
    from kcap.cli import main

    # `--output=~/shapes` reaches kcap unexpanded (a shell expands ~ only at a word's start).
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert main(["data", "synthetic", "--output=~/shapes", "--num-images", "12", "--image-size", "64"]) == 0
    assert (tmp_path / "home" / "shapes" / "captions.csv").is_file()
    assert not (tmp_path / "work" / "~").exists()
    assert f"in {tmp_path / 'home' / 'shapes' / 'captions.csv'}" in capsys.readouterr().out
