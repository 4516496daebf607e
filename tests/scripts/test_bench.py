"""scripts/bench.py, run for real at tiny sizes: one JSON object with every figure.

Only the shape of the report is checked here; the speeds themselves are
measured by the lead on a quiet machine (see the script's docstring).
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SHARED

BENCH = REPO / "scripts" / "bench.py"
# Tiny sizes: the baseline's train step is traced once per decoder call in its
# Python loop, so --pad-length 4 (3 calls) keeps its trace to seconds.
TINY = [
    "--steps", "2", "--warmup", "1", "--batch-size", "4", "--embedding-dim", "16", "--units", "32",
    "--vocab-size", "60", "--locations", "4", "--channels", "8", "--tokens", "4", "--pad-length", "4",
    "--greedy-repeats", "1", "--latency-repeats", "2", "--extract-images", "4",
    "--jit-compile", "off", "--device", "cpu",
]
KCAP_KEYS = {"train_captions_per_s", "greedy_captions_per_s", "latency_ms_batch1",
             "extract_images_per_s", "backbone_images_per_s", "peak_rss_mb"}
BASELINE_KEYS = {"train_captions_per_s", "greedy_captions_per_s", "latency_ms_batch1"}


def run_bench(*args, shared=SHARED, timeout=300):
    env = {**os.environ, "KCAP_SHARED": str(shared), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, str(BENCH), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), done  # json.loads: stdout is one JSON object and nothing else


def assert_positive(section, keys):
    for key in keys:
        value = section[key]
        assert isinstance(value, float) and value > 0, (key, value)


def test_bench_reports_kcap_and_the_baseline(tmp_path):
    captions = SHARED / "data" / "flickr8k_1000" / "captions.txt"
    backbone = SHARED / "weights" / "mobilenet_v2_imagenet_features.keras"
    if not (captions.is_file() and backbone.is_file()):
        pytest.skip(f"shared Flickr8k captions or backbone missing under {SHARED} (set KCAP_SHARED)")
    output = tmp_path / "bench.json"
    report, _ = run_bench(*TINY, "--output", str(output))

    assert set(report) == {"kcap", "transformer", "self_critical", "baseline", "ratios", "config", "machine"}
    assert KCAP_KEYS <= set(report["kcap"])
    assert_positive(report["kcap"], KCAP_KEYS)
    assert BASELINE_KEYS <= set(report["baseline"])
    assert_positive(report["baseline"], BASELINE_KEYS)
    kcap, baseline, ratios = report["kcap"], report["baseline"], report["ratios"]
    assert ratios["train"] == pytest.approx(kcap["train_captions_per_s"] / baseline["train_captions_per_s"], rel=2e-3)
    transformer = report["transformer"]
    assert_positive(transformer, ["train_captions_per_s"])
    assert transformer["settings"]["decoder"] == "transformer" and transformer["jit_compile"] is False
    assert ratios["train_transformer"] == pytest.approx(
        transformer["train_captions_per_s"] / baseline["train_captions_per_s"], rel=2e-3)
    assert ratios["transformer_vs_gru"] == pytest.approx(
        transformer["train_captions_per_s"] / kcap["train_captions_per_s"], rel=2e-3)
    self_critical = report["self_critical"]
    assert_positive(self_critical, ["train_images_per_s", "cross_entropy_images_per_s"])
    assert ratios["self_critical_vs_cross_entropy"] == pytest.approx(
        self_critical["train_images_per_s"] / self_critical["cross_entropy_images_per_s"], rel=2e-3)
    assert ratios["greedy"] == pytest.approx(kcap["greedy_captions_per_s"] / baseline["greedy_captions_per_s"], rel=2e-3)
    assert ratios["extract"] == pytest.approx(kcap["extract_images_per_s"] / kcap["backbone_images_per_s"], rel=2e-3)

    config = report["config"]
    assert config["captions_source"] == str(captions)
    assert (config["batch_size"], config["units"], config["vocab_size"], config["locations"]) == (4, 32, 60, 4)
    assert config["greedy_decoder_steps"] == 4 and config["device_used"] == "/CPU:0"
    assert kcap["extract_images"] == 4 and kcap["extract_feature_shape"] == [7, 7, 1280]
    # One ratio per round of (bare backbone, cache build); the reported figures are the medians.
    assert len(kcap["extract_round_ratios"]) == config["extract_repeats"] == 3
    # The extractor and the pipeline alone, and the best ratio they leave when they share the cores.
    pipeline_s = kcap["extract_images"] / kcap["pipeline_images_per_s"]
    extractor_s = kcap["extract_images"] / kcap["extractor_images_per_s"]
    assert kcap["extract_ratio_if_sharing_cores"] == pytest.approx(
        kcap["backbone_seconds"] / (extractor_s + pipeline_s), rel=1e-2)
    assert kcap["extract_vs_extractor"] == pytest.approx(extractor_s / kcap["extract_seconds"], rel=1e-2)
    assert_positive(kcap, ["extract_unwritten_images_per_s"])
    assert kcap["jit_compile"] is False and kcap["greedy_jit_compile"] is False
    # Captions cut to --pad-length: kcap's trimmed batches are never longer.
    assert 3 <= kcap["train_mean_batch_length"] <= 4 and baseline["train_batch_length"] == 4
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["tensorflow"]
    assert json.loads(output.read_text()) == report


def test_bench_falls_back_to_synthetic_captions_and_skips(tmp_path):
    # An empty shared folder: no caption file, no backbone file.
    report, done = run_bench(
        *TINY, "--skip-baseline", "--skip-extract", "--skip-transformer", "--skip-self-critical", shared=tmp_path
    )
    assert "using the synthetic set's captions" in done.stderr
    assert report["config"]["captions_source"] == "synthetic"
    assert_positive(report["kcap"], KCAP_KEYS - {"extract_images_per_s", "backbone_images_per_s"})
    assert report["kcap"]["extract_images_per_s"] is None and report["kcap"]["extract_skipped"] == "--skip-extract"
    assert report["baseline"]["skipped"] == "--skip-baseline"
    assert all(report["baseline"][key] is None for key in BASELINE_KEYS)
    assert report["transformer"] == {"train_captions_per_s": None, "skipped": "--skip-transformer"}
    assert report["self_critical"] == {
        "train_images_per_s": None, "cross_entropy_images_per_s": None, "skipped": "--skip-self-critical",
    }
    assert report["ratios"] == {
        "train": None, "train_transformer": None, "transformer_vs_gru": None, "self_critical_vs_cross_entropy": None,
        "greedy": None, "extract": None,
    }


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--locations", "10"], "--locations must be a square number"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--captions", "/nonexistent/captions.txt"], "/nonexistent/captions.txt does not exist"),
    ],
)
def test_bench_refuses_bad_options(flags, message):
    done = subprocess.run([sys.executable, str(BENCH), *flags], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr and done.stdout == ""
