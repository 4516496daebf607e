import json

import keras
import numpy as np
from PIL import Image

from kcap.data.images import load_image
from kcap.data.normalization import channel_statistics
from kcap.model.preprocessing import ImagePreprocessing


def test_channel_statistics_equal_numpy_over_all_pixels(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        image = rng.normal([120, 80, 200], [30, 10, 20], (20 + i, 30, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(path)
        paths.append(str(path))
    mean, std = channel_statistics(paths, (16, 16), batch_size=3, progress=False)
    pixels = np.concatenate([load_image(p, (16, 16)).numpy().reshape(-1, 3) for p in paths]).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-9)

    # The dataset mode divides by the standard deviation, not the variance.
    normalised = np.asarray(ImagePreprocessing("dataset", mean, std)(pixels.reshape(1, -1, 1, 3)))
    np.testing.assert_allclose(normalised.reshape(-1, 3).std(0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(normalised.reshape(-1, 3).mean(0), 0.0, atol=1e-3)


def test_preview_augmentation_writes_a_png_with_every_version(tmp_path):
    import subprocess

    from conftest import kcap_command

    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "preview.png"
    result = subprocess.run(
        kcap_command("preview-augmentation", str(image), "--output", str(out), "--image-size", "64",
                     "--zoom", "0.2", "--brightness", "0.3", "--count", "6"),
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(out) as picture:
        picture.verify()
    with Image.open(out) as picture:
        # original + normalised + 6 augmented, four to a row: two rows of 300-px panels.
        assert picture.size == (1200, 600)


def test_preview_augmentation_refuses_a_name_without_a_figure_suffix_and_a_broken_image(tmp_path, capsys):
    from kcap.cli import main

    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((60, 80, 3), dtype=np.uint8)).save(image)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"garbage")
    for source, output, message in [
        (image, tmp_path / "preview", "file name must end in one of .png, .jpg, .jpeg, .pdf, .svg"),
        (broken, tmp_path / "preview.png", f"{broken}: not an image"),
    ]:
        assert main(["preview-augmentation", str(source), "--output", str(output), "--image-size", "64"]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jpg", "in.png"]


def test_a_dataset_normalized_run_records_its_statistics_and_its_model_applies_them(tmp_path, tiny_config):
    import dataclasses

    from kcap.inference import load_run
    from kcap.training.trainer import train

    config = dataclasses.replace(tiny_config, normalize="dataset", epochs=1, val_captions=0)
    run_dir = tmp_path / "run"
    train(config, run_dir, verbose=0)
    recorded = json.loads((run_dir / "config.json").read_text())["normalization"]
    train_paths = [i["image"] for i in json.loads((run_dir / "splits.json").read_text())["splits"]["train"]]
    mean, std = channel_statistics(train_paths, (64, 64), progress=False)
    np.testing.assert_allclose(recorded["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(recorded["std"], std, rtol=1e-6)
    # The saved model normalises with them (so `kcap caption` and the export do), and a resumed
    # run keeps them.
    train(dataclasses.replace(config, epochs=2), run_dir, verbose=0)
    assert json.loads((run_dir / "config.json").read_text())["normalization"] == recorded
    model = load_run(run_dir, "last").model
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    expected = (pixels - np.array(recorded["mean"])) / np.array(recorded["std"])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.preprocessing(pixels)), expected, rtol=1e-5, atol=1e-5)
