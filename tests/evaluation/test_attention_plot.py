import json

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from kcap.evaluation.attention_plot import attention_figure, attention_map, grid_shape, plot_attention
from kcap.inference import load_run

FLICKR_IMAGES = SHARED / "data" / "flickr8k_1000" / "Images"


def test_attention_map_puts_the_heat_where_the_weight_is():
    weights = np.zeros(12, np.float32)
    weights[1 * 4 + 3] = 1.0  # row 1, column 3 of a 3x4 feature map
    heat = attention_map(weights, (3, 4, 128), (30, 40))
    assert heat.shape == (30, 40) and 0.9 < heat.max() <= 1.0 and heat.min() >= 0.0
    row, column = np.unravel_index(np.argmax(heat), heat.shape)
    assert 10 <= row < 20 and 30 <= column < 40
    # Upsampled smoothly: the heat falls off towards the neighbouring cell instead of stepping.
    assert 0.0 < heat[15, 28] < heat[15, 32] < 1.0
    with pytest.raises(ValueError, match=r"does not fit a 3x3 feature map"):
        attention_map(weights, (3, 3), (30, 30))


def test_the_grid_has_at_most_four_columns():
    assert [grid_shape(n) for n in (1, 4, 5, 9)] == [(1, 1), (1, 4), (2, 4), (3, 4)]
    assert grid_shape(5, columns=2) == (3, 2)


def test_plot_of_a_real_caption_has_one_panel_per_word_and_is_a_png(trained_run, tmp_path):
    trained = load_run(trained_run)
    splits = json.loads((trained_run / "splits.json").read_text())["splits"]
    paths = [i["image"] for i in splits["test"][:4]]
    h, w = trained.model.feature_shape[:2]
    plotted = 0
    for result in trained.caption_files(paths):
        words = result["caption"].split()
        attention = result["attention"]
        # caption_files returns a row per word and one for <end>; each is a softmax over locations.
        assert attention.shape == (len(words) + 1, h * w)
        np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-5)
        if not words:
            continue
        pixels = np.asarray(Image.open(result["image"]).convert("RGB"))

        fig = attention_figure(pixels, words, attention, trained.model.feature_shape)
        assert len(fig.axes) == len(words)
        assert [ax.get_title() for ax in fig.axes] == words
        rows, columns = grid_shape(len(words))
        assert {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes} == {(rows, columns)}

        out = tmp_path / f"{plotted}.png"
        array = plot_attention(pixels, words, attention, trained.model.feature_shape, path=out)
        with Image.open(out) as png:
            assert png.format == "PNG"
            assert png.size == (array.shape[1], array.shape[0])
            np.testing.assert_array_equal(np.asarray(png.convert("RGB")), array)
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
        assert array.std() > 10  # a picture, not a blank canvas
        plotted += 1
    assert plotted, "the tiny run gave only empty captions; nothing was plotted"


def test_a_real_photo_keeps_its_aspect_ratio(trained_run, tmp_path):
    if not FLICKR_IMAGES.is_dir():
        pytest.skip(f"the Flickr8k subset is not at {FLICKR_IMAGES} (set KCAP_SHARED)")
    photo = sorted(FLICKR_IMAGES.glob("*.jpg"))[0]
    trained = load_run(trained_run)
    result = trained.caption_files([photo])[0]
    words = result["caption"].split() or ["<end>"]
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    assert pixels.shape[0] != pixels.shape[1]
    fig = attention_figure(pixels, words, result["attention"], trained.model.feature_shape)
    drawn = fig.axes[0].get_images()[0].get_array()
    assert max(drawn.shape[:2]) == 256  # shrunk to 256 px on its longest side
    assert drawn.shape[0] / drawn.shape[1] == pytest.approx(pixels.shape[0] / pixels.shape[1], abs=0.01)
    plot_attention(pixels, words, result["attention"], trained.model.feature_shape, path=tmp_path / "photo.png")
    with Image.open(tmp_path / "photo.png") as png:
        png.verify()


def test_bad_input_is_refused_with_the_reason(tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    attention = np.full((3, 4), 0.25, np.float32)
    with pytest.raises(ValueError, match="does not hold a row for each of the 4 words"):
        plot_attention(image, ["a", "b", "c", "d"], attention, (2, 2))
    with pytest.raises(ValueError, match="caption is empty"):
        plot_attention(image, [], attention, (2, 2))
    with pytest.raises(ValueError, match=r"RGB image of shape \(height, width, 3\)"):
        plot_attention(np.zeros((32, 32), np.uint8), ["a"], attention, (2, 2))
    with pytest.raises(ValueError, match=r"plot.txt: a figure's file name must end in one of .png, .jpg"):
        plot_attention(image, ["a"], attention, (2, 2), path=tmp_path / "plot.txt")
    assert not (tmp_path / "plot.txt").exists()


def test_the_plot_is_written_in_the_format_its_name_says(tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    attention = np.full((2, 4), 0.25, np.float32)
    for name, format in [("plot.jpg", "JPEG"), ("plot.JPEG", "JPEG"), ("plot.png", "PNG")]:
        plot_attention(image, ["a"], attention, (2, 2), path=tmp_path / name)
        with Image.open(tmp_path / name) as written:
            assert written.format == format
    plot_attention(image, ["a"], attention, (2, 2), path=tmp_path / "plot.svg")
    assert (tmp_path / "plot.svg").read_text().lstrip().startswith("<?xml")
    plot_attention(image, ["a"], attention, (2, 2), path=tmp_path / "plot.pdf")
    assert (tmp_path / "plot.pdf").read_bytes().startswith(b"%PDF")


def test_the_picture_behind_the_heat_is_what_the_model_saw_even_for_16_bit_png(tmp_path):
    from kcap.evaluation.attention_plot import image_pixels

    gradient = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "deep.png")
    pixels = image_pixels(tmp_path / "deep.png")
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., 0], (gradient >> 8).astype(np.uint8))  # not clipped to white
