import json

import pytest

from kcap.data.caption_files import CaptionFileError, read_captions
from kcap.data.dataset import CaptionDataset, CaptionedImage
from kcap.data.splits import assign_splits


def _write(tmp_path, text, images=("a.jpg", "b.jpg")):
    (tmp_path / "Images").mkdir(exist_ok=True)
    for name in images:
        (tmp_path / "Images" / name).write_bytes(b"")
    path = tmp_path / "captions.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_groups_captions_by_image_and_resolves_paths(tmp_path):
    path = _write(tmp_path, 'image,caption\na.jpg,"A dog, running."\na.jpg,a dog\nb.jpg,a cat\n')
    dataset = read_captions(tmp_path)  # the folder holding the file works too
    assert [i.name for i in dataset] == ["a.jpg", "b.jpg"]
    assert dataset.images[0].captions == ["A dog, running.", "a dog"]
    assert dataset.images[0].path == tmp_path / "Images" / "a.jpg"
    assert dataset.num_captions == 3
    assert read_captions(path).num_captions == 3


def test_two_spellings_of_one_image_are_one_image(tmp_path):
    # As two images, they could land in train and test, leaking its captions into training.
    _write(tmp_path, "image,caption\na.jpg,a dog\n./a.jpg,a brown dog\nsub/../b.jpg,a cat\nb.jpg,a grey cat\n")
    dataset = read_captions(tmp_path / "captions.csv")
    assert [(i.name, i.captions) for i in dataset] == [("a.jpg", ["a dog", "a brown dog"]), ("b.jpg", ["a cat", "a grey cat"])]
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("a.jpg#0\ta dog .\n./a.jpg#1\ta brown dog .\n")
    assert [(i.name, len(i.captions)) for i in read_captions(token)] == [("a.jpg", 2)]


def test_an_absolute_path_inside_the_images_folder_is_the_same_image_as_its_name(tmp_path):
    images = tmp_path / "Images"
    csv_path = _write(tmp_path, f"image,caption\na.jpg,a dog\n{images / 'a.jpg'},a brown dog\nb.jpg,a cat\n")
    dataset = read_captions(csv_path)
    assert [(i.path, i.captions) for i in dataset] == [(images / "a.jpg", ["a dog", "a brown dog"]), (images / "b.jpg", ["a cat"])]
    # An absolute name alone keeps its path: runs whose caption files name every image so read on.
    _write(tmp_path, f"image,caption\n{images / 'a.jpg'},a dog\n")
    assert [i.path for i in read_captions(csv_path)] == [images / "a.jpg"]
    # The token file, and its split lists, which may spell names as "./a.jpg".
    csv_path.unlink()
    (tmp_path / "Flickr8k.token.txt").write_text(f"a.jpg#0\ta dog .\n{images / 'a.jpg'}#1\ta brown dog .\nb.jpg#0\ta cat .\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("./a.jpg\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("b.jpg\n")
    dataset = read_captions(tmp_path)
    assert [(i.name, len(i.captions), i.split) for i in dataset] == [("a.jpg", 2, "train"), ("b.jpg", 1, "test")]
    # COCO: the second spelling of a file is refused as the file it is.
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": str(images / "a.jpg")}],
        "annotations": [{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "a brown dog"}],
    }))
    with pytest.raises(CaptionFileError, match=r"images\[1\]: file_name 'a.jpg' is already used by images\[0\]"):
        read_captions(coco)


def test_images_that_are_symbolic_links_to_another_folder_are_read(tmp_path):
    # A data set laid out as links into a shared folder; a name with ".." is still refused (below).
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "dog.jpg").write_bytes(b"jpeg bytes")
    (tmp_path / "mine").mkdir()
    path = _write(tmp_path / "mine", "image,caption\na.jpg,a dog\n", images=())
    (tmp_path / "mine" / "Images" / "a.jpg").symlink_to(shared / "dog.jpg")
    dataset = read_captions(path)
    assert dataset.images[0].path == tmp_path / "mine" / "Images" / "a.jpg"
    assert dataset.images[0].path.read_bytes() == b"jpeg bytes"


@pytest.mark.parametrize(
    "text, message",
    [
        ("img,text\na.jpg,x\n", r"captions.csv:1: .*no 'image' column"),
        ("image,caption\na.jpg,ok\na.jpg,\n", r"captions.csv:3: the caption of 'a.jpg' is empty"),
        ("image,caption\na.jpg,ok\na.jpg,\"?!\"\n", r"captions.csv:3: the caption of 'a.jpg' has no words, only punctuation: '\?!'"),
        ("image,caption\n,a dog\n", r"captions.csv:2: the image field is empty"),
        ("image,caption\na.jpg,a,dog\n", r"captions.csv:2: expected 2 fields, found 3; quote captions that contain commas"),
        ("image,caption,split\na.jpg,a dog\n", r"captions.csv:2: expected 3 fields \(image, caption, split\), found 2\.$"),
        ("\n\nimg,text\na.jpg,x\n", r"captions.csv:3: the header \['img', 'text'\] has no 'image' column"),
        ("image,caption\n../secret.jpg,a dog\n", r"captions.csv:2: image path '../secret.jpg' resolves outside"),
        # An unclosed quote would swallow every later row into one caption: named where it opened.
        ("image,caption\na.jpg,ok\nb.jpg,\"a dog\nc.jpg,a cat\nd.jpg,a bird\n",
         r"captions.csv:3: a quote \(\"\) opened on this line is not closed on it, so lines 3-5 read as one caption"),
        ("image,caption\na.jpg,\"a dog\nb.jpg,a cat\"\nc.jpg,ok\n", r"captions.csv:2: .* so lines 2-3 read as one caption"),
        ("", r"captions.csv: the file is empty"),
        ("image,caption,caption\na.jpg,a dog,a cat\n", r"captions.csv:1: the header \['image', 'caption', 'caption'\] names 'caption' twice"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, text, message):
    _write(tmp_path, text)
    with pytest.raises(CaptionFileError, match=message):
        read_captions(tmp_path / "captions.csv")


def test_non_utf8_text_is_reported_with_its_line(tmp_path):
    path = _write(tmp_path, "")
    path.write_bytes(b"image,caption\na.jpg,a dog\nb.jpg,caf\xe9\n")
    with pytest.raises(CaptionFileError, match=r"captions.csv:3: text is not UTF-8"):
        read_captions(path)


def test_a_quote_left_open_costs_its_own_row_only(tmp_path):
    # Image names without a suffix (kcap decodes by content): the rows swallowed are told by their files.
    (tmp_path / "Images").mkdir()
    for name in ("img0", "img1", "img2", "img3"):
        (tmp_path / "Images" / name).write_bytes(b"")
    path = _write(tmp_path, 'image,caption\nimg0,one\nimg1,"two, unclosed\nimg2,three\nimg3,\n')
    problems = []
    dataset = read_captions(path, errors=problems)
    assert [(image.name, image.captions) for image in dataset] == [("img0", ["one"]), ("img2", ["three"])]
    assert [(p.line, p.reason.split(";")[0]) for p in problems] == [
        (3, 'a quote (") opened on this line is not closed on it, so lines 3-5 read as one caption'),
        (5, "the caption of 'img3' is empty."),  # read on after the bad row, lines still right
    ]


def test_a_quote_left_open_in_a_long_file_costs_its_own_row_only(tmp_path):
    # Past 131,072 characters the csv module gives up on the field before the swallowed rows are seen.
    names = [f"{i}.jpg" for i in range(3000)]
    rows = [f"{name},A dog number {i} runs across the green grass in the park ." for i, name in enumerate(names)]
    rows[1] = rows[1].replace(",", ',"', 1)
    path = _write(tmp_path, "image,caption\n" + "\n".join(rows) + "\n", images=names)
    problems = []
    dataset = read_captions(path, errors=problems)
    assert [str(p) for p in problems] == [
        f'{path}:3: a quote (") opened on this line is not closed, so the lines after it read as one caption '
        f"of over 131072 characters; close the quote (a caption is one line)."
    ]
    assert [i.name for i in dataset] == names[:1] + names[2:]


def test_old_mac_line_endings_read_like_any_others(tmp_path):
    # Excel for Mac's "CSV (Macintosh)" ends lines with a lone CR.
    text = 'image,caption\na.jpg,"A dog, running ."\nb.jpg,a cat\n\nb.jpg,b\xe9b\xe9 cat\n'
    lf = [(i.name, i.captions) for i in read_captions(_write(tmp_path, text))]
    assert lf == [("a.jpg", ["A dog, running ."]), ("b.jpg", ["a cat", "b\xe9b\xe9 cat"])]
    assert [(i.name, i.captions) for i in read_captions(_write(tmp_path, text.replace("\n", "\r")))] == lf
    # A quote left open is still found, on its line.
    with pytest.raises(CaptionFileError, match=r"captions.csv:2: a quote"):
        read_captions(_write(tmp_path, "image,caption\ra.jpg,\"a dog\rb.jpg,a cat\r"))
    # A token file and its split lists too.
    (tmp_path / "captions.csv").unlink()
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog .\ra.jpg#1\tA brown dog .\rb.jpg#0\tA cat .\r")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\rb.jpg\r")
    assert [(i.name, i.captions, i.split) for i in read_captions(tmp_path)] == [
        ("a.jpg", ["A dog .", "A brown dog ."], "train"), ("b.jpg", ["A cat ."], "train"),
    ]


def test_a_stray_carriage_return_inside_a_line_keeps_the_line_numbers(tmp_path):
    _write(tmp_path, "", images=("a.jpg", "b.jpg"))
    path = tmp_path / "Flickr8k.token.txt"
    path.write_text("a.jpg#0\ta dog\rin the park .\nb.jpg#0\t\n")
    with pytest.raises(CaptionFileError, match=r"Flickr8k.token.txt:2: the caption of 'b.jpg' is empty"):
        read_captions(path)


def test_a_space_after_the_comma_leaves_a_quoted_caption_quoted(tmp_path):
    path = _write(tmp_path, 'image, caption\na.jpg, "A dog, brown, runs ."\nb.jpg, A cat sits .\n')
    assert [(i.name, i.captions) for i in read_captions(path)] == [("a.jpg", ["A dog, brown, runs ."]), ("b.jpg", ["A cat sits ."])]


def test_a_json_file_read_as_csv_gets_a_short_message_that_says_so(tmp_path):
    # COCO's captions_train2014.json is 66 MB on one line: the header, for a CSV reader.
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(20_000)], "annotations": []}
    path = _write(tmp_path, json.dumps(coco))
    with pytest.raises(CaptionFileError) as caught:
        read_captions(path, format="csv")
    message = str(caught.value)
    assert len(message) < 500 and "fields) has no 'image' column" in message, message[:1000]
    assert message.endswith("this looks like JSON: pass --format coco or karpathy, or leave --format auto.")


def test_utf16_text_is_named_as_such(tmp_path):
    path = _write(tmp_path, "")
    path.write_bytes("image,caption\na.jpg,a dog\n".encode("utf-16"))
    with pytest.raises(CaptionFileError, match=r"captions.csv: the file is UTF-16 text; save it as UTF-8"):
        read_captions(path)


def test_missing_images_folder_says_what_to_do(tmp_path):
    (tmp_path / "captions.csv").write_text("image,caption\na.jpg,x\n")
    with pytest.raises(FileNotFoundError, match="--images"):
        read_captions(tmp_path / "captions.csv")
    with pytest.raises(NotADirectoryError, match=r"captions.csv is a file; --images takes the folder"):
        read_captions(tmp_path / "captions.csv", images_dir=tmp_path / "captions.csv")


def _dataset(num_images, captions_per_image=5):
    images = [
        CaptionedImage(path=f"img{i}.jpg", captions=[f"caption {j} of {i}" for j in range(captions_per_image)])
        for i in range(num_images)
    ]
    return CaptionDataset(images, images_dir=".", source="test")


def test_splits_are_by_image_and_never_share_one():
    dataset = assign_splits(_dataset(200), val_fraction=0.1, test_fraction=0.15, seed=3)
    by_split = {s: {i.path for i in dataset.subset(s)} for s in ("train", "val", "test")}
    assert len(by_split["val"]) == 20 and len(by_split["test"]) == 30 and len(by_split["train"]) == 150
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"] or by_split["val"] & by_split["test"])
    # All five captions of an image stay with it.
    assert all(len(i.captions) == 5 for i in dataset)


def test_splits_depend_only_on_the_seed_and_keep_given_splits():
    first = [i.split for i in assign_splits(_dataset(50), seed=7)]
    second = [i.split for i in assign_splits(_dataset(50), seed=7)]
    other = [i.split for i in assign_splits(_dataset(50), seed=8)]
    assert first == second and first != other
    dataset = _dataset(10)
    dataset.images[0].split = "test"
    assign_splits(dataset, 0.0, 0.0)
    assert dataset.images[0].split == "test" and all(i.split == "train" for i in dataset.images[1:])
