"""`Captioner.generate` and `Captioner.decode`: choosing a sampler, compiling it, and its arguments.

The samplers themselves are tested in tests/model/samplers/.
"""

import numpy as np
import pytest
import tensorflow as tf
from decoding_helpers import check_convention, random_images, tiny_captioner

from kcap.inference import load_run
from kcap.model.samplers import BeamSampler, GreedySampler, RandomSampler
from kcap.text.vocabulary import END_ID


@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_one_image_alone_gets_the_caption_it_gets_in_a_batch(trained_run, trained, beam_size, jit_compile):
    # A freshly loaded model: its first trace sees a batch of one, as `kcap caption
    # --beam-size 3 photo.jpg` does (beam search then failed its loop's shape check).
    model = load_run(trained_run).model
    _, _, inputs = trained
    alone = [model.generate({"images": inputs["images"][i:i + 1]}, beam_size=beam_size, jit_compile=jit_compile)
             for i in range(4)]  # first, so that the first trace is of one image
    batch = model.generate(inputs, beam_size=beam_size, jit_compile=jit_compile)
    for i, (ids, _, scores) in enumerate(alone):
        np.testing.assert_array_equal(ids.numpy()[0], batch[0].numpy()[i])
        np.testing.assert_allclose(scores.numpy()[0], batch[2].numpy()[i], rtol=1e-4)


# -- the length limit ----------------------------------------------------------


def test_a_model_that_never_ends_stops_at_max_length_in_every_mode():
    model = tiny_captioner()
    bias = model.decoder.logits.bias
    bias.assign(tf.tensor_scatter_nd_update(bias, [[END_ID]], [-1e9]))
    inputs = random_images(3)
    max_length = 4
    results = {
        "greedy": model.generate(inputs, max_length=max_length),
        "beam 3": model.generate(inputs, max_length=max_length, beam_size=3),
        "sampling": model.generate(inputs, max_length=max_length, temperature=1.0, seed=1),
        "top-k sampling": model.generate(inputs, RandomSampler(top_k=3), max_length=max_length),
    }
    for mode, (ids, attention, scores) in results.items():
        ids, scores = ids.numpy(), scores.numpy()
        assert ids.shape == (3, max_length + 1), mode
        # max_length words (never <end>), then the forced <end>.
        assert (ids[:, :max_length] != END_ID).all(), mode
        assert (ids[:, max_length] == END_ID).all(), mode
        check_convention(ids, attention, max_length)
        # The forced <end> costs its real log-probability (about -1e9), finite.
        assert np.isfinite(scores).all() and (scores < -1e8).all(), (mode, scores)


# -- samplers by keyword, by name and as objects --------------------------------


def test_the_keywords_name_and_object_of_a_sampler_give_the_same_captions(trained):
    run, _, inputs = trained
    model = run.model
    encoded = model.encode(inputs)
    for keywords, sampler in (
        ({}, GreedySampler()),
        ({"beam_size": 3, "length_penalty": 0.5}, BeamSampler(3, 0.5)),
        ({"temperature": 0.8, "seed": 1}, RandomSampler(0.8, seed=1)),
    ):
        by_keywords = model.generate(inputs, **keywords)
        by_object = model.generate(inputs, sampler)
        plain = model.decode(encoded, sampler)  # eager, not compiled
        np.testing.assert_array_equal(by_keywords[0].numpy(), by_object[0].numpy())
        np.testing.assert_array_equal(by_keywords[2].numpy(), by_object[2].numpy())
        np.testing.assert_array_equal(plain[0].numpy(), by_object[0].numpy())
        np.testing.assert_allclose(plain[2].numpy(), by_object[2].numpy(), rtol=1e-5)
    by_name = model.generate(inputs, "beam")
    np.testing.assert_array_equal(by_name[0].numpy(), model.generate(inputs, beam_size=3)[0].numpy())


# -- XLA -----------------------------------------------------------------------


def _compiled_by_xla(model, sampler, inputs):
    """Whether the decode function of `sampler` calls its loop as an XLA cluster."""
    length = tf.constant(model.max_length)
    graph = model._decode_function(sampler, True).get_concrete_function(inputs, length, sampler.tensors()).graph
    return any(op.node_def.attr["_XlaMustCompile"].b for op in graph.get_operations()
               if op.type.endswith("PartitionedCall"))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_xla_compiled_decoding_gives_the_same_captions(trained, beam_size):
    run, _, inputs = trained
    model = run.model
    assert _compiled_by_xla(model, GreedySampler() if beam_size == 1 else BeamSampler(beam_size), inputs)
    compiled = model.generate(inputs, beam_size=beam_size)
    plain = model.generate(inputs, beam_size=beam_size, jit_compile=False)
    np.testing.assert_array_equal(compiled[0].numpy(), plain[0].numpy())
    np.testing.assert_allclose(compiled[2].numpy(), plain[2].numpy(), rtol=1e-5)
    np.testing.assert_allclose(compiled[1].numpy(), plain[1].numpy(), rtol=1e-5, atol=1e-6)


def test_sampling_is_not_compiled_by_xla(trained):
    # stateless_categorical has no XLA kernel.
    run, _, inputs = trained
    assert not _compiled_by_xla(run.model, RandomSampler(), inputs)


# -- attention -----------------------------------------------------------------


def test_attention_rows_sum_to_one_for_each_generated_word(trained):
    # Greedy here; beam search and sampling go through check_convention in their own tests.
    run, _, inputs = trained
    ids, attention, scores = run.model.generate(inputs)
    locations = run.model.feature_shape[0] * run.model.feature_shape[1]
    assert attention.shape == (len(inputs["images"]), run.model.max_length + 1, locations)
    check_convention(ids, attention, run.model.max_length)
    assert np.isfinite(scores.numpy()).all()


# -- through caption_files and argument checks ---------------------------------


def test_caption_files_passes_beam_size_and_temperature(trained):
    run, paths, inputs = trained
    paths = paths[:5]
    default = run.caption_files(paths, batch_size=2)
    assert [r["caption"] for r in run.caption_files(paths, batch_size=2, beam_size=1)] == [
        r["caption"] for r in default
    ]
    beam = run.caption_files(paths, batch_size=2, beam_size=3)
    expected_ids, _, expected_scores = run.model.generate({"images": inputs["images"][:5]}, beam_size=3)
    assert [r["caption"] for r in beam] == [run.vocabulary.decode(row) for row in expected_ids.numpy()]
    np.testing.assert_allclose([r["score"] for r in beam], expected_scores.numpy(), rtol=1e-5)
    assert any(b["score"] != d["score"] for b, d in zip(beam, default))  # beam search did run
    # Sampled, each batch seeded with its number: reproducible, and not the greedy captions.
    sampled = run.caption_files(paths, batch_size=2, temperature=1.5)
    expected = []
    for number, start in enumerate(range(0, 5, 2)):
        ids = run.model.generate({"images": inputs["images"][:5][start:start + 2]}, temperature=1.5, seed=number)[0]
        expected += [run.vocabulary.decode(row) for row in ids.numpy()]
    assert [r["caption"] for r in sampled] == expected
    for result in beam + sampled:
        words = len(result["caption"].split())
        assert result["attention"].shape[0] == words + 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": 2.5}, "beam_size"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 1.0, "beam_size": 3}, "not both"),
        ({"beam_size": 3, "length_penalty": -0.5}, "length_penalty"),
        ({"max_length": 0}, "max_length must be at least 1, got 0"),  # not the model's default
        ({"sampler": "beam", "beam_size": 5}, r"Give the settings to the sampler \(BeamSampler\(beam_size=3"),
        ({"sampler": RandomSampler(), "seed": 2}, "not as beam_size, temperature, length_penalty, seed or no_repeat_ngram"),
        ({"sampler": "nucleus"}, "Unknown sampler 'nucleus'"),
    ],
)
def test_bad_decoding_arguments_are_rejected(kwargs, message):
    model = tiny_captioner()
    with pytest.raises(ValueError, match=message):
        model.generate(random_images(1), **kwargs)
