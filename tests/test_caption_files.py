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
        ("image,caption\na.jpg,a,dog\n", r"captions.csv:2: expected 2 fields, found 3"),
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
