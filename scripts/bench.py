#!/usr/bin/env python3
"""kcap's speed against the TensorFlow tutorial "Image captioning with visual attention".

    scripts/bench.py [--steps 20] [--device cpu|gpu] [--output bench.json] [...]

Prints ONE JSON object on stdout (progress notes go to stderr):

```
{"kcap":     {"train_captions_per_s", "greedy_captions_per_s", "latency_ms_batch1",
              "extract_images_per_s", "backbone_images_per_s", "peak_rss_mb", ...details},
 "transformer": {"train_captions_per_s", ...details},
 "self_critical": {"train_images_per_s", "cross_entropy_images_per_s", ...details},
 "baseline": {"train_captions_per_s", "greedy_captions_per_s", "latency_ms_batch1", ...details},
 "ratios":   {"train", "train_transformer", "transformer_vs_gru", "self_critical_vs_cross_entropy", "greedy", "extract"},
 "config":   {...every setting and what was measured on},
 "machine":  {...CPUs, TensorFlow and Keras versions, devices}}
```

What is measured, kcap and the baseline (`scripts/tutorial_baseline.py`) back to back in
one process, at the same sizes (by default the tutorial's: 64 locations x 2048
channels, embedding 256, 512 units, 5000 words, batch 64), on the same captions
(`--captions`, default the shared Flickr8k subset's `captions.txt`; the synthetic
set's captions when that is absent), tokenised by kcap's `Vocabulary`:

- training captions/s on cached features, both models on the same captions: the
  first `--steps` batches of kcap's first epoch (`epoch_order`, with its pools
  of like-length captions, `--length-pool`). kcap: `Captioner.fit`'s train step
  on `{"features": float16}` batches that kcap's pipeline trims to their longest
  caption; one untimed pass over the `--steps` batches compiles every caption
  length, then the same batches are timed. Baseline: the tutorial's `train_step`
  on captions padded to 50 tokens, after `--warmup` untimed steps. The feature
  values are random: neither model's cost depends on them. kcap's Transformer
  decoder (`decoder="transformer"`, kcap train's `--decoder-layers` and
  `--decoder-heads` defaults, `--units` its feed-forward size) is timed as kcap's
  GRU decoder is, on the same batches: `transformer`, and `ratios.train_transformer`
  (against the baseline) and `ratios.transformer_vs_gru`.
- self-critical training images/s (`Captioner.compile(objective="cider")`, kcap
  train's `--objective cider`): kcap's GRU model at the same sizes, `--batch-size`
  images a step, `--samples-per-image` captions sampled for each and rewarded
  with their CIDEr-D (`CiderReward`) against the images' own references, timed
  as the cross-entropy step is after an untimed pass. Beside it, cross-entropy's
  images/s on the same images: its captions/s over the images' mean number of
  captions (an epoch over them takes images / images/s either way). Samples run
  until they end or reach the longest caption's length; an untrained model
  rarely ends early, so `mean_sample_tokens` says how long they were.
- greedy captions/s with exactly `--tokens` (16) decoder steps per caption, no
  early stop, so an untrained model costs what a trained one does. kcap: its
  `GreedySampler` on a batch, compiled as `Captioner.generate` does it (the
  loop by XLA), with `<end>` suppressed until the last slot. Baseline: the
  tutorial's eager `evaluate`, one image at a time.
- batch-1 caption latency (ms, median): kcap's compiled greedy decoding of one
  image; the baseline's `evaluate` of one image.
- feature extraction images/s: `FeatureCache.build` on real JPEGs (reading,
  decoding, resizing, the backbone, writing the cache), against the bare
  backbone forward pass on the same images already decoded and resized;
  `--extract-repeats` rounds of the two back to back, medians reported. Also
  kcap's compiled feature extractor (`Captioner.feature_extractor`, whose
  graph holds the backbone's weights as constants) on those decoded images:
  `extractor_images_per_s`, and `extract_vs_extractor`, the share of it the
  build keeps; the input pipeline alone (read, decode, resize, batch; no
  backbone), and from it the ratio that sharing the same CPU cores allows at
  best: `extract_ratio_if_sharing_cores` = backbone s / (extractor s +
  pipeline s); and the build less its disk writes (the same pipeline and
  feature extractor, features dropped): `extract_unwritten_images_per_s`.
- peak RSS of the process after kcap's part (before the baseline runs).

Example (the real measurement, on a quiet machine):

    scripts/bench.py --steps 20 --output bench-cpu.json
    scripts/bench.py --device gpu --steps 50 --output bench-gpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
DEFAULT_BACKBONE_FILE = "weights/mobilenet_v2_imagenet_features.keras"
DEFAULT_CAPTIONS = "data/flickr8k_1000/captions.txt"


def shared_root() -> Path:
    """Where the shared data lives: $KCAP_SHARED, else `../shared` beside the repository."""
    return Path(os.environ.get("KCAP_SHARED") or REPO.parent / "shared")


def note(message: str) -> None:
    """Progress and skip messages: stderr, so that stdout holds only the JSON."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="kcap's training, captioning and feature-extraction speed against the TF tutorial baseline.",
    )
    sizes = parser.add_argument_group("sizes (default: the tutorial's)")
    sizes.add_argument("--batch-size", type=int, default=64)
    sizes.add_argument("--embedding-dim", type=int, default=256)
    sizes.add_argument("--units", type=int, default=512)
    sizes.add_argument("--vocab-size", type=int, default=5000, help="output words of both models, special tokens included")
    sizes.add_argument("--locations", type=int, default=64, help="feature-map locations (a square: 64 = 8x8)")
    sizes.add_argument("--channels", type=int, default=2048, help="feature channels (InceptionV3: 2048)")
    sizes.add_argument("--pad-length", type=int, default=50,
                       help="tokens the baseline pads every caption to (the tutorial: 50); captions are cut to fit")
    sizes.add_argument("--tokens", type=int, default=16, help="decoder steps per caption when captioning")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--steps", type=int, default=20, help="timed training steps")
    timing.add_argument("--warmup", type=int, default=2, help="untimed baseline training steps first")
    timing.add_argument("--greedy-repeats", type=int, default=5, help="timed kcap greedy batches")
    timing.add_argument("--latency-repeats", type=int, default=20, help="timed kcap batch-1 captions")
    timing.add_argument("--extract-images", type=int, default=256, help="JPEGs through the feature cache")
    timing.add_argument("--extract-repeats", type=int, default=3,
                        help="rounds of (bare backbone, pipeline alone, build unwritten, cache build); "
                             "the medians are reported")
    setup = parser.add_argument_group("setup")
    setup.add_argument("--captions", type=Path, default=None,
                       help=f"a caption file kcap reads (default: $KCAP_SHARED/{DEFAULT_CAPTIONS})")
    setup.add_argument("--backbone", default=None,
                       help=f"for extraction: a .keras feature extractor or a kcap backbone name, built with "
                            f"random weights (default: $KCAP_SHARED/{DEFAULT_BACKBONE_FILE})")
    setup.add_argument("--image-size", type=int, default=None, help="extraction input side (default: the backbone's, 224 for a file)")
    setup.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="auto: the GPU when there is one")
    setup.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto",
                       help="XLA for kcap's train step (auto: what `kcap train` does, Keras' 'auto') "
                            "and its decoding loop (auto, on: XLA, as Captioner.generate; off: none)")
    setup.add_argument("--mixed-precision", choices=("off", "mixed_float16", "mixed_bfloat16"), default="off",
                       help="Keras global dtype policy, for both models")
    setup.add_argument("--length-pool", type=int, default=None,
                       help="kcap's batches per pool sorted by caption length (default: kcap train's on cached features, 20; 1: random batches)")
    setup.add_argument("--skip-baseline", action="store_true", help="measure kcap alone")
    setup.add_argument("--skip-extract", action="store_true", help="no feature-extraction measurement")
    setup.add_argument("--skip-transformer", action="store_true", help="no Transformer-decoder training measurement")
    setup.add_argument("--skip-self-critical", action="store_true", help="no self-critical training measurement")
    setup.add_argument("--samples-per-image", type=int, default=5, help="self-critical captions sampled per image")
    setup.add_argument("--scst-cross-entropy", type=float, default=0.1,
                       help="self-critical: weight of the references' cross-entropy in the loss (kcap train's default)")
    setup.add_argument("--seed", type=int, default=0)
    setup.add_argument("--output", type=Path, default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)

    positive = ("batch_size", "embedding_dim", "units", "locations", "channels", "tokens", "steps",
                "greedy_repeats", "latency_repeats", "extract_images", "extract_repeats", "length_pool")
    for name in positive:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}.")
    if math.isqrt(args.locations) ** 2 != args.locations:
        parser.error(f"--locations must be a square number (an h x h feature map), got {args.locations}.")
    if args.vocab_size < 5:
        parser.error(f"--vocab-size must leave room for words after kcap's 4 special tokens, got {args.vocab_size}.")
    if args.pad_length < 3:
        parser.error(f"--pad-length must hold <start>, a word and <end> (3), got {args.pad_length}.")
    if args.tokens < 2:
        parser.error(f"--tokens must be at least 2 (a word, then <end>), got {args.tokens}.")
    if args.captions is not None and not args.captions.exists():
        parser.error(f"--captions {args.captions} does not exist.")
    return args


# -- data ----------------------------------------------------------------------------------


def load_captions(args):
    """The captioned images both models train on, and where they came from."""
    from kcap.data.caption_files import read_captions
    from kcap.data.dataset import CaptionedImage
    from kcap.data.synthetic import make_example

    path = args.captions or shared_root() / DEFAULT_CAPTIONS
    if path.exists():
        dataset = read_captions(path)
        if not dataset.images:
            raise SystemExit(f"bench: {path} holds no captioned images.")
        return dataset.images, str(path)
    note(f"no caption file at {path} (set KCAP_SHARED or --captions): using the synthetic set's captions.")
    images = []
    for index in range(200):
        _, _, _, captions = make_example(index, args.seed, image_size=64)
        images.append(CaptionedImage(Path(f"synthetic/{index:05d}.png"), captions))
    return images, "synthetic"


def batch_rows(tokens, batch_size: int, steps: int, seed: int, length_pool: int):
    """`steps` batches of caption rows, as kcap's pipeline orders its first epoch; both models train on them."""
    import numpy as np

    from kcap.data.pipeline import epoch_order

    order = epoch_order(np.count_nonzero(tokens, axis=1), batch_size, seed, 0, length_pool).numpy()
    needed = batch_size * steps
    # Fewer captions than needed: go round again, as epochs would.
    order = np.resize(order, needed)
    return tokens[order]


def pad_to(tokens, length: int):
    """Rows padded with 0 (or cut) to `length` tokens, as the tutorial's TextVectorization did."""
    import numpy as np

    out = np.zeros((len(tokens), length), np.int32)
    width = min(length, tokens.shape[1])
    out[:, :width] = tokens[:, :width]
    return out


# -- kcap ----------------------------------------------------------------------------------


class FixedLengthDecoder:
    """A kcap decoder whose `<end>` is never the best word, for timing decoding.

    `GreedySampler` stops when every caption has ended; an untrained model may end
    at once. With `<end>` pushed to -1e9 (not -inf, so the forced `<end>` of the
    last slot is still a finite choice) every caption runs `max_length` words and
    then `<end>`: a fixed number of steps, whatever the weights.
    """

    def __init__(self, decoder):
        self.decoder = decoder

    def prepare(self, encoded):
        return self.decoder.prepare(encoded)

    def start(self, memory, max_length):
        return self.decoder.start(memory, max_length)

    def step(self, tokens, state, memory):
        import tensorflow as tf

        from kcap.text.vocabulary import END_ID

        logits, state, weights = self.decoder.step(tokens, state, memory)
        logits = tf.cast(logits, tf.float32)
        is_end = tf.equal(tf.range(tf.shape(logits)[-1]), END_ID)[None, :]
        return tf.where(is_end, -1e9, logits), state, weights


def kcap_captioner(args, vocabulary, decoder: str = "gru_attention"):
    """A `Captioner` with `decoder` at the benchmark's sizes, with kcap's training defaults.

    Its backbone is a stub (one strided conv) with the feature map's shape: the
    benchmark feeds cached features, so the backbone is never called.
    """
    import keras

    from kcap.model.captioner import Captioner
    from kcap.training.config import TrainConfig
    from kcap.training.trainer import decoder_options

    defaults = TrainConfig(data="bench", decoder=decoder)
    options = decoder_options(defaults)
    side = math.isqrt(args.locations)
    stub = keras.Sequential(
        [keras.Input((2 * side, 2 * side, 3)), keras.layers.Conv2D(args.channels, 2, strides=2)],
        name="stub_backbone",
    )
    model = Captioner(
        stub,
        vocabulary_size=args.vocab_size,
        max_length=vocabulary.max_length,
        image_size=(2 * side, 2 * side),
        embedding_dim=args.embedding_dim,
        units=args.units,
        decoder=decoder,
        decoder_options=options,
        dropout=defaults.dropout,
        position_embedding=defaults.position_embedding,
    )
    jit = {"auto": "auto", "on": True, "off": False}[args.jit_compile]
    model.compile(optimizer=keras.optimizers.Adam(defaults.learning_rate), jit_compile=jit)
    return model, {"decoder": decoder, "decoder_options": options, "dropout": defaults.dropout,
                   "position_embedding": defaults.position_embedding, "learning_rate": defaults.learning_rate}


def _timed_steps(model, dataset, steps: int) -> tuple[dict, float]:
    """The last step's logs and the seconds of `steps` training steps over `dataset` after a `fit` warm-up."""
    # Round the same batches again: one untimed step traces the outer function for
    # this iterator (fit's own may be another type), then `steps` timed steps see
    # batches 1..steps-1 and 0, lengths the warm-up has all compiled.
    iterator = iter(dataset.repeat())
    float(model.train_function(iterator)["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        logs = model.train_function(iterator)
    float(logs["loss"])  # waits for the device
    return logs, time.perf_counter() - start


def bench_kcap_train(model, rows, features, args) -> dict:
    """Training captions/s: a warm-up `fit` over the batches, then the same batches timed."""
    import numpy as np
    import tensorflow as tf

    from kcap.data.pipeline import AUTOTUNE, _trim_padding

    features = tf.constant(features.astype(np.float16))  # what the feature cache stores
    dataset = (
        tf.data.Dataset.from_tensor_slices(rows)
        .batch(args.batch_size, drop_remainder=True)
        .map(lambda tokens: ({"features": features}, tokens))
        .map(_trim_padding, num_parallel_calls=AUTOTUNE)  # kcap's own trimming
        .prefetch(AUTOTUNE)
    )
    start = time.perf_counter()
    # A real fit; it traces (and with XLA compiles) the step for every caption length.
    try:
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    except Exception as error:  # noqa: BLE001 - XLA failures come as several TF error types
        if not model.jit_compile:
            raise
        first_line = next((line for line in str(error).splitlines() if "XLA" in line), str(error)[:300])
        raise SystemExit(
            f"bench: kcap's train step failed to compile with XLA (jit_compile=True; Keras' 'auto' "
            f"picks it on a GPU): {first_line.strip()} Rerun with --jit-compile off."
        ) from None
    warmup = time.perf_counter() - start

    logs, seconds = _timed_steps(model, dataset, args.steps)
    loss = float(logs["loss"])
    lengths = [int(np.count_nonzero(batch, axis=1).max()) for batch in np.split(rows, args.steps)]
    return {
        "train_captions_per_s": args.batch_size * args.steps / seconds,
        "train_seconds": seconds,
        "train_warmup_seconds": warmup,
        "train_mean_batch_length": statistics.fmean(lengths),
        "train_loss": loss,
        "jit_compile": bool(model.jit_compile),
    }


def bench_kcap_self_critical(model, images, vocabulary, features, args) -> dict:
    """Self-critical training images/s: `--batch-size` images a step, as `bench_kcap_train` times it."""
    import numpy as np
    import tensorflow as tf

    from kcap.model.cider_reward import CiderReward
    from kcap.training.assembly import reference_captions, reference_ids

    references = [[reference_ids(c, vocabulary) for c in image.captions] for image in images]
    reward = CiderReward(references, args.vocab_size)
    vectors = reward.reference_vectors(references)
    if args.scst_cross_entropy:
        vectors["captions"] = reference_captions(images, vocabulary)
    order = np.resize(np.arange(len(images)), args.batch_size * args.steps)
    model.compile(optimizer=model.optimizer, jit_compile=False, objective="cider", reward=reward,
                  samples_per_image=args.samples_per_image, cross_entropy_weight=args.scst_cross_entropy)
    features = tf.constant(features.astype(np.float16))
    dataset = (
        tf.data.Dataset.from_tensor_slices(order)
        .batch(args.batch_size, drop_remainder=True)
        .map(lambda rows: ({"features": features}, {k: tf.gather(v, rows) for k, v in vectors.items()}))
        .prefetch(tf.data.AUTOTUNE)
    )
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    warmup = time.perf_counter() - start
    logs, seconds = _timed_steps(model, dataset, args.steps)
    loss = float(logs["loss"])
    encoded = model.encode({"features": features})
    ids, _, _ = model.self_critical_samples(
        encoded, {k: v[:args.batch_size] for k, v in vectors.items() if k != "captions"}
    )
    return {
        "train_images_per_s": args.batch_size * args.steps / seconds,
        "train_seconds": seconds,
        "train_warmup_seconds": warmup,
        "samples_per_image": args.samples_per_image,
        "scst_cross_entropy": args.scst_cross_entropy,
        "mean_sample_tokens": float(np.count_nonzero(ids.numpy(), axis=1).mean()),
        "train_loss": loss,
        "mean_reward": float(logs["reward"]),
    }


def bench_kcap_captioning(model, vocabulary, features, args) -> dict:
    """Greedy captions/s on a batch, and batch-1 latency, with exactly `--tokens` decoder steps."""
    import numpy as np
    import tensorflow as tf

    from kcap.model.samplers import GreedySampler, caption_lengths

    fixed = FixedLengthDecoder(model.decoder)
    jit = args.jit_compile != "off"

    # As Captioner.generate: the encoder in a tf.function, the word-by-word
    # loop inside it compiled by XLA (unless --jit-compile off).
    loop = tf.function(lambda encoded, max_length: GreedySampler()(fixed, encoded, max_length), jit_compile=jit)

    @tf.function(reduce_retracing=True)
    def caption(features, max_length):
        ids, _, _ = loop(model.encode({"features": features}, training=False), max_length)
        return ids

    batch = tf.constant(features.astype(np.float16))
    one = batch[:1]
    max_length = tf.constant(args.tokens - 1, tf.int32)  # words; then the <end> slot

    def run(inputs):
        ids = caption(inputs, max_length).numpy()  # waits for the device
        return [vocabulary.decode(row) for row in ids], ids

    _, ids = run(batch)
    lengths = caption_lengths(ids).numpy()
    if not (lengths == args.tokens).all():
        raise RuntimeError(f"kcap greedy decoding ran {sorted(set(lengths.tolist()))} steps, not {args.tokens}.")
    start = time.perf_counter()
    for _ in range(args.greedy_repeats):
        run(batch)
    seconds = time.perf_counter() - start

    run(one)
    run(one)
    latencies = []
    for _ in range(args.latency_repeats):
        start = time.perf_counter()
        run(one)
        latencies.append(time.perf_counter() - start)
    return {
        "greedy_captions_per_s": len(ids) * args.greedy_repeats / seconds,
        "greedy_jit_compile": jit,
        "greedy_seconds": seconds,
        "latency_ms_batch1": statistics.median(latencies) * 1000,
        "latency_ms_batch1_p90": p90(latencies) * 1000,
    }


def bench_extract(args, image_paths: list[str]) -> dict:
    """`FeatureCache.build` images/s against the bare backbone on pre-decoded images."""
    import numpy as np
    import tensorflow as tf

    from kcap.data.feature_cache import FeatureCache
    from kcap.data.images import load_image
    from kcap.data.pipeline import image_dataset
    from kcap.model.backbones import build_backbone, get_backbone_spec, is_backbone_file
    from kcap.model.captioner import Captioner

    name = args.backbone or str(shared_root() / DEFAULT_BACKBONE_FILE)
    if is_backbone_file(name) and not Path(name).is_file():
        return {"extract_skipped": f"no backbone file at {name} (set KCAP_SHARED or --backbone)"}
    jpegs = [p for p in image_paths if Path(p).suffix.lower() in (".jpg", ".jpeg", ".png") and Path(p).is_file()]
    if not jpegs:
        return {"extract_skipped": "the captions name no image files on disk"}
    paths = list(dict.fromkeys(jpegs))[: args.extract_images]
    spec = get_backbone_spec(name, args.image_size)
    size = args.image_size or spec.image_size
    # A named backbone gets random weights: its speed does not depend on them.
    backbone = build_backbone(name, "file" if is_backbone_file(name) else None, size)
    model = Captioner(backbone, vocabulary_size=8, max_length=4, image_size=(size, size),
                      embedding_dim=8, units=8, preprocessing=spec.preprocessing)
    batch_size = args.batch_size

    # Decoded first: this also brings the files into the page cache for the build.
    pixels = np.stack([load_image(p, (size, size)).numpy() for p in paths])
    batches = [tf.constant(pixels[i: i + batch_size], tf.float32) for i in range(0, len(paths), batch_size)]

    forward = tf.function(lambda x: backbone(x, training=False))
    for shape in {tuple(b.shape) for b in batches}:
        forward(tf.zeros(shape)).numpy()

    def bare_forward() -> float:
        start = time.perf_counter()
        for batch in batches:
            out = forward(batch)
        out.numpy()  # waits for the device
        return time.perf_counter() - start

    extractor = model.feature_extractor()
    uint8_batches = [tf.constant(pixels[i: i + batch_size], tf.uint8) for i in range(0, len(paths), batch_size)]
    for shape in {tuple(b.shape) for b in uint8_batches}:
        extractor(tf.zeros(shape, tf.uint8)).numpy()

    def extractor_alone() -> float:
        # The build's backbone step, on the decoded images: no pipeline, no writes.
        start = time.perf_counter()
        for batch in uint8_batches:
            out = extractor(batch)
        out.numpy()
        return time.perf_counter() - start

    def pipeline_alone() -> float:
        # The build's own input pipeline, drained with no backbone behind it.
        start = time.perf_counter()
        for _ in image_dataset(paths, (size, size), batch_size):
            pass
        return time.perf_counter() - start

    def unwritten() -> float:
        # The build less its cache file: what writing the features costs is the difference.
        start = time.perf_counter()
        for batch in image_dataset(paths, (size, size), batch_size):
            extractor(batch["images"]).numpy()
        return time.perf_counter() - start

    build_seconds, bare_seconds, extractor_seconds, pipeline_seconds, unwritten_seconds = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="kcap-bench-") as tmp:
        # Untimed: a first build (a full and a partial batch) traces and warms up the kernels.
        FeatureCache.for_model(model, paths[: batch_size + 1], Path(tmp) / "warmup").build(model, batch_size, progress=False)
        # Rounds of (bare forward, extractor alone, pipeline alone, build unwritten, fresh cache
        # build), back to back: a slow spell of the machine hits every part of a round, and the
        # medians ignore one odd round.
        for round_ in range(args.extract_repeats):
            bare_seconds.append(bare_forward())
            extractor_seconds.append(extractor_alone())
            pipeline_seconds.append(pipeline_alone())
            unwritten_seconds.append(unwritten())
            cache = FeatureCache.for_model(model, paths, Path(tmp) / f"timed-{round_}")
            start = time.perf_counter()
            stats = cache.build(model, batch_size, progress=False)
            build_seconds.append(time.perf_counter() - start)
            if stats["computed"] != len(paths) or not cache.is_complete():
                raise RuntimeError(f"the feature cache computed {stats['computed']} of {len(paths)} images.")
            shutil.rmtree(cache.directory)
    seconds, bare = statistics.median(build_seconds), statistics.median(bare_seconds)
    pipeline, extractor_s = statistics.median(pipeline_seconds), statistics.median(extractor_seconds)
    return {
        "extract_images_per_s": len(paths) / seconds,
        "extract_seconds": seconds,
        "backbone_images_per_s": len(paths) / bare,
        "backbone_seconds": bare,
        "extractor_images_per_s": len(paths) / extractor_s,
        "extract_vs_extractor": extractor_s / seconds,
        "pipeline_images_per_s": len(paths) / pipeline,
        # Where the pipeline and the extractor share the same cores (a CPU-only
        # machine), each image costs both: the best extract ratio possible is then
        # backbone / (extractor + pipeline) in seconds. With an accelerator, the
        # pipeline runs beside it, and the best is backbone / extractor.
        "extract_ratio_if_sharing_cores": bare / (extractor_s + pipeline),
        "extract_unwritten_images_per_s": len(paths) / statistics.median(unwritten_seconds),
        "extract_round_ratios": [b / e for b, e in zip(bare_seconds, build_seconds)],
        "extract_images": len(paths),
        "extract_backbone": name,
        "extract_image_size": size,
        "extract_feature_shape": list(model.feature_shape),
    }


# -- the baseline --------------------------------------------------------------------------


def bench_baseline(args, vocabulary, rows, features) -> dict:
    """The tutorial's `train_step` (captions padded to `--pad-length`) and its one-image `evaluate`."""
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, str(SCRIPTS))
    from tutorial_baseline import TutorialBaseline

    words = vocabulary.words + [f"<unused{i}>" for i in range(args.vocab_size - len(vocabulary))]
    baseline = TutorialBaseline(args.vocab_size, args.embedding_dim, args.units, words, args.locations)
    flat = features.reshape(len(features), args.locations, args.channels).astype(np.float32)
    baseline.build(flat.shape[1:])
    img_tensor = tf.constant(flat)
    # The batches exist before the clock starts: a first pass over a tf.data
    # pipeline that captured the 33 MB feature tensor stalled for ~6.6 s in
    # TF 2.21, which is not the tutorial's training speed.
    padded = pad_to(rows, args.pad_length)
    targets = [tf.constant(padded[i: i + args.batch_size])
               for i in range(0, len(padded) - args.batch_size + 1, args.batch_size)]

    start = time.perf_counter()
    for target in targets[: args.warmup]:
        loss, _ = baseline.train_step(img_tensor, target)
    if args.warmup:
        float(loss)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for target in targets:
        _, total_loss = baseline.train_step(img_tensor, target)
    loss = float(total_loss)  # waits for the device
    seconds = time.perf_counter() - start

    baseline.evaluate(img_tensor[:1], args.tokens, stop_at_end=False)
    latencies = []
    for i in range(len(flat)):
        start = time.perf_counter()
        result, _ = baseline.evaluate(img_tensor[i: i + 1], args.tokens, stop_at_end=False)
        latencies.append(time.perf_counter() - start)
        if len(result) != args.tokens:
            raise RuntimeError(f"the baseline's evaluate ran {len(result)} steps, not {args.tokens}.")
    return {
        "train_captions_per_s": args.batch_size * args.steps / seconds,
        "greedy_captions_per_s": len(latencies) / sum(latencies),
        "latency_ms_batch1": statistics.median(latencies) * 1000,
        "latency_ms_batch1_p90": p90(latencies) * 1000,
        "train_seconds": seconds,
        "train_warmup_seconds": warmup,
        "train_batch_length": args.pad_length,
        "train_loss": loss,  # the tutorial's total_loss: summed step means / padded length
        "greedy_seconds": sum(latencies),
        "jit_compile": False,  # the tutorial's plain @tf.function
    }


# -- the report ----------------------------------------------------------------------------


def machine_info() -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append({"name": gpu.name, "model": details.get("device_name"),
                     "compute_capability": details.get("compute_capability")})
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "gpus": gpus,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def rounded(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def p90(values: list[float]) -> float:
    """The nearest-rank 90th percentile."""
    return sorted(values)[math.ceil(0.9 * len(values)) - 1]


def ratio(a, b):
    return a / b if a is not None and b else None


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import tensorflow as tf

    if args.device == "cpu":
        tf.config.set_visible_devices([], "GPU")  # before TensorFlow places anything
    gpus = tf.config.list_physical_devices("GPU")
    if args.device == "gpu" and not gpus:
        raise SystemExit("bench: --device gpu, but TensorFlow sees no GPU.")
    device = "/GPU:0" if args.device == "gpu" or (args.device == "auto" and gpus) else "/CPU:0"

    import keras
    import numpy as np

    sys.path.insert(0, str(REPO))  # kcap from this checkout, installed or not
    from kcap.data.pipeline import caption_rows
    from kcap.text.vocabulary import Vocabulary

    if args.mixed_precision != "off":
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    keras.utils.set_random_seed(args.seed)

    images, source = load_captions(args)
    all_captions = [c for image in images for c in image.captions]
    # Top words only; ids always fit both models' `--vocab-size` outputs. Captions are
    # cut to the baseline's padded length, so both models see the same tokens.
    vocabulary = Vocabulary.build(all_captions, max_words=args.vocab_size - 4, max_length=args.pad_length - 2)
    _, tokens = caption_rows(images, vocabulary)
    if args.length_pool is None:
        from kcap.training.config import LENGTH_POOL

        args.length_pool = LENGTH_POOL  # kcap's default on cached features: the backbone is frozen
    rows = batch_rows(tokens, args.batch_size, args.steps, args.seed, args.length_pool)
    side = math.isqrt(args.locations)
    # Post-ReLU-like values; neither model's cost depends on them.
    features = np.random.default_rng(args.seed).random((args.batch_size, side, side, args.channels), np.float32)

    kcap_result: dict = {key: None for key in (
        "train_captions_per_s", "greedy_captions_per_s", "latency_ms_batch1",
        "extract_images_per_s", "backbone_images_per_s", "peak_rss_mb")}
    baseline_result: dict = {key: None for key in ("train_captions_per_s", "greedy_captions_per_s", "latency_ms_batch1")}
    transformer_result: dict = {"train_captions_per_s": None}
    self_critical_result: dict = {"train_images_per_s": None, "cross_entropy_images_per_s": None}

    with tf.device(device):
        note(f"kcap: training {args.steps} steps on {device} ...")
        model, kcap_settings = kcap_captioner(args, vocabulary)
        kcap_result.update(bench_kcap_train(model, rows, features, args))
        note("kcap: greedy captioning ...")
        kcap_result.update(bench_kcap_captioning(model, vocabulary, features, args))
        if args.skip_extract:
            kcap_result["extract_skipped"] = "--skip-extract"
        else:
            note(f"kcap: feature extraction of up to {args.extract_images} images ...")
            kcap_result.update(bench_extract(args, [str(image.path) for image in images]))
            if "extract_skipped" in kcap_result:
                note(f"extraction skipped: {kcap_result['extract_skipped']}")
        kcap_result["peak_rss_mb"] = peak_rss_mb()
        del model
        if args.skip_self_critical:
            self_critical_result["skipped"] = "--skip-self-critical"
        else:
            note(f"kcap: self-critical training {args.steps} steps on {device} ...")
            model, _ = kcap_captioner(args, vocabulary)
            self_critical_result.update(bench_kcap_self_critical(model, images, vocabulary, features, args))
            captions_per_image = len(all_captions) / len(images)
            self_critical_result["cross_entropy_images_per_s"] = kcap_result["train_captions_per_s"] / captions_per_image
            del model
        if args.skip_transformer:
            transformer_result["skipped"] = "--skip-transformer"
        else:
            note(f"kcap: training the Transformer decoder {args.steps} steps on {device} ...")
            model, transformer_result["settings"] = kcap_captioner(args, vocabulary, decoder="transformer")
            transformer_result.update(bench_kcap_train(model, rows, features, args))
            del model
        if args.skip_baseline:
            baseline_result["skipped"] = "--skip-baseline"
        else:
            note(f"baseline: tracing its train step ({args.pad_length - 1} decoder calls) and training ...")
            baseline_result.update(bench_baseline(args, vocabulary, rows, features))

    report = {
        "kcap": kcap_result,
        "transformer": transformer_result,
        "self_critical": self_critical_result,
        "baseline": baseline_result,
        "ratios": {
            "train": ratio(kcap_result["train_captions_per_s"], baseline_result["train_captions_per_s"]),
            "train_transformer": ratio(transformer_result["train_captions_per_s"], baseline_result["train_captions_per_s"]),
            "transformer_vs_gru": ratio(transformer_result["train_captions_per_s"], kcap_result["train_captions_per_s"]),
            "self_critical_vs_cross_entropy": ratio(
                self_critical_result["train_images_per_s"], self_critical_result["cross_entropy_images_per_s"]
            ),
            "greedy": ratio(kcap_result["greedy_captions_per_s"], baseline_result["greedy_captions_per_s"]),
            "extract": ratio(kcap_result["extract_images_per_s"], kcap_result["backbone_images_per_s"]),
        },
        "config": {
            **{key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
            "device_used": device,
            "dtype_policy": keras.config.dtype_policy().name,
            "captions_source": source,
            "caption_count": len(all_captions),
            "caption_images": len(images),
            "vocabulary_words": len(vocabulary),
            "kcap_batch_lengths": "each batch trimmed to its longest caption; the rows in kcap's batch order "
                                  "(kcap.data.pipeline.epoch_order, --length-pool)",
            "kcap_settings": kcap_settings,
            "features": f"random float, kcap float16 (B, {side}, {side}, {args.channels}), "
                        f"baseline float32 (B, {args.locations}, {args.channels})",
            "greedy_decoder_steps": args.tokens,
            "baseline_decoding": "argmax (the tutorial drew from tf.random.categorical)",
        },
        "machine": {**machine_info(), "process_peak_rss_mb": peak_rss_mb()},
    }
    report = rounded(report)
    text = json.dumps(report, indent=2)
    if args.output:
        from kcap.utils.files import atomic_write_text

        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.output, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
