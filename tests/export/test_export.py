"""`kcap export`: a SavedModel that captions image bytes with TensorFlow alone."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REPO, kcap_command

import kcap
from kcap.export import (
    CAPTION_DETAILS,
    DECODE_IMAGE,
    SERVING_DEFAULT,
    SERVING_IMAGES,
    captions_from_ids,
    export_run,
)
from kcap.inference import load_run
from kcap.model.samplers import BeamSampler
from kcap.text.vocabulary import Vocabulary

# Run by a fresh interpreter that has TensorFlow but not kcap: it proves the
# SavedModel serves on its own. It reads a JSON job and prints a JSON result.
SERVE_WITHOUT_KCAP = r"""
import json, os, sys

job = json.load(open(sys.argv[1]))
sys.path.extend(job["sys_path"])  # site-packages, without running its .pth hooks
try:
    import kcap  # noqa: F401
    kcap_importable = True
except ImportError:
    kcap_importable = False

import numpy as np
import tensorflow as tf

serving = tf.saved_model.load(job["export_dir"])
data = tf.constant([open(path, "rb").read() for path in job["files"]])
by_bytes = serving.signatures["serving_default"](image_bytes=data)
by_pixels = serving.signatures["serving_images"](images=tf.constant(np.load(job["pixels"])))
print(json.dumps({
    "kcap_importable": kcap_importable,
    "kcap_modules": sorted(m for m in sys.modules if m == "kcap" or m.startswith("kcap.")),
    "captions": [c.decode() for c in by_bytes["caption"].numpy()],
    "scores": by_bytes["score"].numpy().tolist(),
    "caption_dtype": by_bytes["caption"].dtype.name,
    "score_dtype": by_bytes["score"].dtype.name,
    "pixel_captions": [c.decode() for c in by_pixels["caption"].numpy()],
    "pixel_scores": by_pixels["score"].numpy().tolist(),
    "words": [w.decode() for w in serving.vocabulary_words[0].numpy()],
    "assets": {name: os.path.basename(asset.asset_path.numpy().decode())
               for name, asset in serving.kcap_assets.items()},
}))
"""


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    return export_run(trained_run, tmp_path_factory.mktemp("export") / "model")


@pytest.fixture(scope="module")
def test_images(trained_run, tmp_path_factory):
    """Real files in the formats and shapes users send: PNG, JPEG, grayscale, RGBA, other sizes."""
    folder = tmp_path_factory.mktemp("images")
    test = [i["image"] for i in json.loads((trained_run / "splits.json").read_text())["splits"]["test"]]
    files = [Path(p) for p in test[:3]]  # the run's own PNGs
    first, second, third, fourth = (Image.open(p).convert("RGB") for p in test[:4])
    first.save(folder / "first.jpg", quality=90)
    second.convert("L").save(folder / "second_gray.png")
    third.resize((100, 75)).save(folder / "third_wide.jpg", quality=85)
    rgba = fourth.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "fourth_rgba.png")
    files += [folder / n for n in ("first.jpg", "second_gray.png", "third_wide.jpg", "fourth_rgba.png")]
    return files


def _site_paths() -> list[str]:
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_captions_from_ids_reads_like_vocabulary_decode():
    vocabulary = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle"], max_length=5)
    rows = [
        [4, 5, 6, 2, 0, 0],  # a caption, <end>, padding
        [2, 4, 5, 0, 0, 0],  # <end> first: empty
        [4, 1, 5, 0, 6, 3],  # no <end>; <start> and <pad> inside are skipped, <unk> kept
        [6, 2, 4, 2, 5, 2],  # only up to the first <end>
    ]
    got = captions_from_ids(tf.constant(rows, tf.int32), tf.constant(vocabulary.words))
    assert [c.decode() for c in got.numpy()] == [vocabulary.decode(r) for r in rows]
    assert [c.decode() for c in got.numpy()] == ["a red circle", "", "a red circle <unk>", "circle"]


def test_export_serves_jpeg_and_png_bytes_in_a_process_without_kcap(
    exported, trained_run, test_images, tmp_path
):
    site = _site_paths()
    if any(Path(kcap.__file__).resolve().is_relative_to(Path(s).resolve()) for s in site):
        pytest.skip("kcap is installed inside site-packages (not editable): no kcap-free interpreter to test with")
    trained = load_run(trained_run)
    expected = trained.caption_files(test_images)

    # serving_images gets the run's own 64-px PNGs as float pixels.
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in test_images[:3]]).astype("float32")
    np.save(tmp_path / "pixels.npy", pixels)
    ids, _, scores = trained.model.generate({"images": pixels})
    expected_pixels = [trained.vocabulary.decode(row) for row in ids.numpy()]

    job = {"sys_path": site, "export_dir": str(exported), "files": [str(p) for p in test_images],
           "pixels": str(tmp_path / "pixels.npy")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    (tmp_path / "serve.py").write_text(SERVE_WITHOUT_KCAP)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I: no PYTHONPATH, no user site, no script dir; -S: site-packages' .pth hooks
    # (kcap's editable-install finder among them) never run.
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(tmp_path / "serve.py"), str(tmp_path / "job.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])

    assert served["kcap_importable"] is False and served["kcap_modules"] == []
    assert served["captions"] == [r["caption"] for r in expected]
    np.testing.assert_allclose(served["scores"], [r["score"] for r in expected], rtol=1e-5, atol=1e-5)
    assert (served["caption_dtype"], served["score_dtype"]) == ("string", "float32")
    assert served["pixel_captions"] == expected_pixels
    np.testing.assert_allclose(served["pixel_scores"], scores.numpy(), rtol=1e-5, atol=1e-5)
    # Something a user would call a caption: words of the vocabulary, not ids or specials.
    assert all(set(c.split()) <= set(trained.vocabulary.words[4:]) for c in served["captions"])
    assert served["words"] == trained.vocabulary.words
    assert served["assets"] == {"vocab": "vocab.json", "config": "config.json",
                                "kcap_version": "kcap_version.txt", "export": "export.json"}


def test_empty_requests_get_empty_answers_and_bad_bytes_a_clear_error(exported):
    serving = tf.saved_model.load(str(exported))
    out = serving.signatures[SERVING_DEFAULT](image_bytes=tf.constant([], tf.string))
    assert out["caption"].shape == (0,) and out["score"].shape == (0,)
    out = serving.signatures[SERVING_IMAGES](images=tf.zeros([0, 64, 64, 3]))
    assert out["caption"].shape == (0,) and out["score"].dtype == tf.float32
    with pytest.raises(tf.errors.InvalidArgumentError):
        serving.signatures[SERVING_DEFAULT](image_bytes=tf.constant([b"not an image"]))


def test_export_carries_vocabulary_config_and_version_as_assets(exported, trained_run):
    assets = exported / "assets"
    assert (assets / "vocab.json").read_bytes() == (trained_run / "vocab.json").read_bytes()
    assert (assets / "config.json").read_bytes() == (trained_run / "config.json").read_bytes()
    assert (assets / "kcap_version.txt").read_text().strip() == kcap.__version__
    info = json.loads((assets / "export.json").read_text())
    assert info["beam_size"] == 1 and info["checkpoint"] == "best"
    assert info["image_size"] == [64, 64] and info["kcap_version"] == kcap.__version__
    assert set(info["signatures"]) == {SERVING_DEFAULT, SERVING_IMAGES, DECODE_IMAGE, CAPTION_DETAILS}
    # A model server running as another user reads it: the modes a plain mkdir would give.
    umask = os.umask(0)
    os.umask(umask)
    assert (exported.stat().st_mode & 0o777) == 0o777 & ~umask


def test_export_stores_each_weight_once(exported, trained_run):
    # Every weight, once: ExportArchive.track(model) would store each twice (keras-team/keras#23553).
    checkpoint = tf.train.load_checkpoint(str(exported / "variables" / "variables"))
    shapes, dtypes = checkpoint.get_variable_to_shape_map(), checkpoint.get_variable_to_dtype_map()
    stored = sum(int(np.prod(shape)) for name, shape in shapes.items() if dtypes[name].is_floating)
    assert stored == load_run(trained_run).model.count_params()


def _saved_model_cli() -> str:
    found = shutil.which("saved_model_cli", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip(f"saved_model_cli is not installed beside {sys.executable}")
    return found


def test_saved_model_cli_lists_and_runs_serving_default(exported, trained_run, test_images):
    cli = _saved_model_cli()
    shown = subprocess.run(
        [cli, "show", "--all", "--dir", str(exported)], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    block = shown.split("signature_def['serving_default']:", 1)[1].split("signature_def[", 1)[0]
    assert re.search(r"inputs\['image_bytes'\] tensor_info:\s+dtype: DT_STRING\s+shape: \(-1\)", block)
    assert re.search(r"outputs\['caption'\] tensor_info:\s+dtype: DT_STRING\s+shape: \(-1\)", block)
    assert re.search(r"outputs\['score'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1\)", block)
    images_block = shown.split("signature_def['serving_images']:", 1)[1].split("signature_def[", 1)[0]
    assert re.search(r"inputs\['images'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 64, 64, 3\)", images_block)

    # --input_exprs goes through ast.literal_eval, so a bytes literal carries the file;
    # every byte escaped, because the CLI splits its argument on ';'.
    image = test_images[0]
    literal = "".join(f"\\x{b:02x}" for b in image.read_bytes())
    ran = subprocess.run(
        [cli, "run", "--dir", str(exported), "--tag_set", "serve", "--signature_def", "serving_default",
         "--input_exprs", f"image_bytes=[b'{literal}']"],
        capture_output=True, text=True, timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    caption = load_run(trained_run).caption_files([image])[0]["caption"]
    assert f"Result for output key caption:\n[b'{caption}']" in ran.stdout


def test_export_command_refuses_a_non_empty_output_unless_forced(trained_run, tmp_path):
    output = tmp_path / "model"
    first = subprocess.run(kcap_command("export", "--run-dir", str(trained_run), "--output", str(output)),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "serving_default" in first.stdout and (output / "saved_model.pb").is_file()
    # The saver's note on renaming the decoding loop's inputs is noise to a user (kilobytes of names).
    assert "contains input name(s)" not in first.stderr
    before = _hashes(output)

    again = subprocess.run(kcap_command("export", "--run-dir", str(trained_run), "--output", str(output)),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert f"kcap export: error: {output} is not empty" in again.stderr and "--force" in again.stderr
    assert _hashes(output) == before

    forced = subprocess.run(
        kcap_command("export", "--run-dir", str(trained_run), "--output", str(output), "--force",
                     "--checkpoint", "last"),
        capture_output=True, text=True, timeout=300,
    )
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert json.loads((output / "assets" / "export.json").read_text())["checkpoint"] == "last"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folders left

    # --force replaces an earlier export, never some other folder.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no saved_model.pb"):
        export_run(trained_run, other, force=True)
    assert (other / "todo.txt").read_text() == "keep me"
    # Nor is one export written inside another (README's version folders go below a plain one).
    with pytest.raises(ValueError, match=f"inside the SavedModel {output}"):
        export_run(trained_run, output / "1")
    assert not (output / "1").exists()


def test_an_output_written_meanwhile_by_another_export_is_not_replaced_without_force(tmp_path):
    from kcap.utils.files import atomic_directory

    output = tmp_path / "exported"
    # Two exports to one new --output, the other one finishing first: this one must not win in silence.
    with pytest.raises(FileExistsError, match=r"exported was written by another process while this one worked; it is left as it is"):
        with atomic_directory(output, replace=False) as staging:
            (staging / "saved_model.pb").write_text("mine")
            output.mkdir()
            (output / "saved_model.pb").write_text("theirs")
    assert (output / "saved_model.pb").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no staging folder left
    with atomic_directory(output, replace=True) as staging:  # --force
        (staging / "saved_model.pb").write_text("mine")
    assert (output / "saved_model.pb").read_text() == "mine"


def test_the_current_folder_or_one_above_it_is_never_replaced(trained_run, tmp_path, monkeypatch):
    from kcap.utils.files import atomic_directory

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    # `kcap export --output .` from an empty folder: it once failed on its own staging folders inside it,
    # and with --force left one behind; replaced whole, it would leave the shell in a deleted folder.
    with pytest.raises(ValueError, match=rf"{here} is the current folder, which would be replaced whole; give a folder below it"):
        export_run(trained_run, ".", force=True)
    assert list(here.iterdir()) == []
    with pytest.raises(ValueError, match="is the current folder or holds it"):
        with atomic_directory(".."):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def test_failed_export_leaves_the_previous_export_untouched(exported, trained_run, tmp_path):
    output = tmp_path / "model"
    shutil.copytree(exported, output)
    before = _hashes(output)

    broken = tmp_path / "broken-run"
    shutil.copytree(trained_run, broken, ignore=shutil.ignore_patterns("logs"))
    for model_file in (broken / "model.keras", broken / "checkpoints" / "best.keras"):
        model_file.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="best.keras"):
        export_run(broken, output, force=True)
    assert _hashes(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken-run", "model"]

    missing = subprocess.run(
        kcap_command("export", "--run-dir", str(tmp_path / "nowhere"), "--output", str(output), "--force"),
        capture_output=True, text=True, timeout=300,
    )
    assert missing.returncode == 2 and "is not a kcap run directory" in missing.stderr
    assert _hashes(output) == before


def test_beam_size_above_one_serves_beam_search_with_its_ngram_guard(trained_run, tmp_path):
    output = tmp_path / "beam"
    # A guard that changes captions here: the synthetic ones say "a" twice.
    export_run(trained_run, output, beam_size=3, no_repeat_ngram=1)
    trained = load_run(trained_run)
    test = [i["image"] for i in trained.run.load_splits()["splits"]["test"]]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in test]).astype("float32")
    ids, _, scores = trained.model.decode(
        trained.model.encode({"images": pixels}), BeamSampler(beam_size=3, no_repeat_ngram=1)
    )
    served = tf.saved_model.load(str(output)).signatures["serving_images"](images=tf.constant(pixels))
    assert [c.decode() for c in served["caption"].numpy()] == [trained.vocabulary.decode(r) for r in ids.numpy()]
    np.testing.assert_allclose(served["score"].numpy(), scores.numpy(), rtol=1e-5, atol=1e-5)
    info = json.loads((output / "assets" / "export.json").read_text())
    assert info["beam_size"] == 3 and info["no_repeat_ngram"] == 1


def test_export_rejects_bad_arguments_before_writing(trained_run, tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        export_run(trained_run, tmp_path / "a", checkpoint="newest")
    with pytest.raises(ValueError, match="beam_size"):
        export_run(trained_run, tmp_path / "b", beam_size=0)
    with pytest.raises(ValueError, match="would replace the run directory"):
        export_run(trained_run, trained_run.parent, force=True)
    assert sorted(tmp_path.iterdir()) == []


def test_bench_script_reports_size_and_latency(exported, trained_run, test_images):
    folder = test_images[-1].parent
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_export.py"),
         str(exported), str(folder), "--images", "3", "--repeats", "1", "--warmup", "1", "--batch-sizes", "1", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["size_bytes"]["total"] == sum(p.stat().st_size for p in exported.rglob("*") if p.is_file())
    assert report["images"] == 3 and report["export"]["beam_size"] == 1
    assert [(r["batch_size"], r["calls"]) for r in report["latency"]] == [(1, 3), (2, 2)]
    assert all(r["per_image_ms"]["median"] > 0 for r in report["latency"])
    first = sorted(p for p in folder.iterdir())[0]
    assert report["example"]["caption"] == load_run(trained_run).caption_files([first])[0]["caption"]
