import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from conftest import kcap_command
from kcap.evaluation.evaluate import evaluate_run, image_ids
from kcap.evaluation.metrics import (
    METRIC_LABELS,
    MeteorScorer,
    MeteorUnavailableWarning,
    caption_metrics,
    caption_shares,
    ptb_tokenize,
    repeats_trigram,
)
from kcap.inference import load_run
from kcap.text.tokenize import normalize_caption
from kcap.text.vocabulary import END_ID, PAD_ID

JAVA = shutil.which("java")
def ptb_can_run() -> bool:
    """PTBTokenizer needs Java and writes its input to a temporary file beside its jar."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    return JAVA is not None and os.access(os.path.dirname(ptbtokenizer.__file__), os.W_OK)


needs_ptb = pytest.mark.skipif(not ptb_can_run(), reason="PTBTokenizer needs Java and a writable pycocoevalcap")

# Flickr8k-style captions: a dozen generated ones, each with its human references.
HYPOTHESES = [
    "A black dog is running through the grass.",
    "a man in a red shirt is climbing a rock",
    "Two children are playing on the beach.",
    "a dog jumps over a hurdle",
    "A woman is walking down the street.",
    "a boy in a blue shirt is jumping into a pool",
    "a group of people are standing in front of a building",
    "a brown dog is swimming in the water",
    "a man is riding a bike on a dirt road",
    "a little girl in a pink dress is running",
    "two dogs are playing in the snow",
    "a man is surfing a wave",
]
REFERENCES = [
    ["A black dog runs across a grassy field.", "A dog running in the grass.", "The black dog is running on green grass.",
     "A black Labrador runs through a field.", "A dog sprints through tall grass."],
    ["A man in a red shirt climbs a rock wall.", "A rock climber in red scales a cliff.",
     "A man is climbing up a large rock.", "Climber in a red top on a boulder."],
    ["Two kids play in the sand at the beach.", "Two children building a sandcastle by the ocean.",
     "A boy and a girl are playing on the shore.", "Children play near the water."],
    ["A dog jumps over an obstacle.", "A brown and white dog leaps over a bar.",
     "A dog is jumping a hurdle at an agility course.", "The dog clears the jump."],
    ["A woman walks along a city sidewalk.", "A lady in a black coat walking down the street.",
     "A woman is walking past shops.", "Woman walking on the pavement."],
    ["A boy jumps into a swimming pool.", "A child in blue leaps into the pool.",
     "A young boy is jumping into the water.", "A kid dives into a pool."],
    ["A crowd of people stand outside a building.", "People gathered in front of a large building.",
     "A group of people waiting outside.", "Several people are standing near a brick building."],
    ["A brown dog swims in a lake.", "A dog is swimming with a stick in its mouth.",
     "The brown dog paddles through the water.", "A wet dog swimming."],
    ["A man rides his bicycle down a dirt path.", "A cyclist on a dirt trail.",
     "A man is riding a mountain bike.", "A person bikes along a country road."],
    ["A little girl in pink runs across the yard.", "A small girl wearing a pink dress is running.",
     "A young girl running on the grass.", "A child in a pink outfit runs."],
    ["Two dogs play in the snow.", "Two dogs running through the snow.",
     "A black dog and a white dog are playing in snow.", "Dogs frolic in the snow."],
    ["A surfer rides a big wave.", "A man on a surfboard riding a wave.",
     "A person surfing in the ocean.", "The surfer is on top of a wave."],
]


# Captions on which the PTB tokenizer and normalize_caption disagree: clitics (also Flickr8k's
# pre-tokenised "dog 's"), hyphens, numbers, symbols, parentheses, capitals; one empty hypothesis.
TRICKY_HYPOTHESES = [
    "A dog's T-shirt is red.",
    "a man in a t shirt climbs a rock",
    "Two kids (a boy & a girl) play at 3.30 PM.",
    "the black-and-white dog's toy",
    "",
    "A woman's 1,000 balloons!",
    "a dog jumps over a hurdle ; it 's fast",
    "A BOY IN A RED-AND-BLUE SHIRT",
    "People waiting @ the bus-stop #7 / 50%",
    "a snow-covered tree",
    "Three dogs , two brown and one white , run .",
    "A man -- in a hat -- rides a bike.",
    "two girls' shadows on a sun-lit wall",
    "a mid-air jump",
]
TRICKY_REFERENCES = [
    ["The dog 's t-shirt is red .", "A dog wears a red T-shirt.", "A dog in a red tee-shirt."],
    ["A man in a t-shirt climbs a rock .", "Rock-climber in a T-shirt.", "A man's climbing a cliff."],
    ["Two kids (a boy and a girl) play.", "Children play at 3:30 .", "Two children & a dog play outside."],
    ["The black-and-white dog 's toy .", "A black and white dog with its toy.", "A dog's toy."],
    ["A cat sleeps.", "A cat is sleeping on a couch.", "The cat naps ."],
    ["A woman holds 1,000 balloons .", "A woman's balloons.", "Lots of balloons -- maybe 1000 ."],
    ["A dog jumps a hurdle ; it's fast .", "The dog 's jumping over a bar.", "A fast dog leaps."],
    ["A boy in a red-and-blue shirt .", "A BOY WEARING RED AND BLUE.", "Boy in a red and blue top."],
    ["People wait at the bus-stop .", "People at a bus stop (#7).", "Half the people -- 50 % -- wait."],
    ["A snow-covered tree .", "A tree covered in snow.", "Snow covered trees."],
    ["Three dogs run .", "Two brown dogs and one white dog are running.", "Dogs , running ."],
    ["A man in a hat rides a bike .", "A man -- hatted -- on a bicycle.", "A cyclist's hat."],
    ["Two girls ' shadows on a sunlit wall .", "Shadows of two girls on a sun-lit wall.", "Girls' shadows."],
    ["A dog jumps in mid-air .", "A mid-air jump by a dog.", "A dog in mid air."],
]


def direct_inputs():
    """pycocoevalcap's layout, tokenised the way kcap documents: normalize_caption."""
    gts = {i: [normalize_caption(r) for r in refs] for i, refs in enumerate(REFERENCES)}
    res = {i: [normalize_caption(h)] for i, h in enumerate(HYPOTHESES)}
    return gts, res


def test_bleu_rouge_and_cider_equal_pycocoevalcaps_scorers():
    gts, res = direct_inputs()
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)

    scores = caption_metrics(HYPOTHESES, REFERENCES, meteor=False)

    assert set(scores) == set(METRIC_LABELS) | {"tokenization"} and scores["tokenization"] == "kcap"
    for n in range(4):
        assert scores[f"bleu{n + 1}"] == pytest.approx(bleu[n], abs=1e-6)
    assert scores["rouge_l"] == pytest.approx(rouge, abs=1e-6)
    assert scores["cider"] == pytest.approx(cider, abs=1e-6)
    assert scores["meteor"] is None and "meteor_error" not in scores
    # Realistic captions, decent but imperfect: the metrics are in their usual ranges.
    assert 1 > scores["bleu1"] > scores["bleu2"] > scores["bleu3"] > scores["bleu4"] > 0.05
    assert 0.3 < scores["rouge_l"] < 1 and 0.3 < scores["cider"] < 10


def test_metrics_ignore_case_and_punctuation_and_reward_the_right_caption():
    plain = caption_metrics([normalize_caption(h) for h in HYPOTHESES], REFERENCES, meteor=False)
    assert plain == caption_metrics(HYPOTHESES, REFERENCES, meteor=False)
    # Every caption given to the wrong image scores far lower.
    shifted = caption_metrics(HYPOTHESES[1:] + HYPOTHESES[:1], REFERENCES, meteor=False)
    assert shifted["cider"] < plain["cider"] / 3 and shifted["bleu4"] < plain["bleu4"]


def test_cider_idf_comes_from_the_scored_images_references():
    # The same caption scores differently in a different corpus; alone, CIDEr-D is 0.
    alone = caption_metrics(HYPOTHESES[:1], REFERENCES[:1], meteor=False)
    assert alone["cider"] == 0.0 and alone["bleu1"] > 0.5
    two = caption_metrics(HYPOTHESES[:2], REFERENCES[:2], meteor=False)
    assert two["cider"] > 0


def test_an_empty_generated_caption_scores_zero_rather_than_failing():
    scores = caption_metrics(["", "two dogs are playing in the snow"], [REFERENCES[0], REFERENCES[10]], meteor=False)
    assert scores["rouge_l"] == pytest.approx(0.5 * caption_metrics(
        ["two dogs are playing in the snow"], [REFERENCES[10]], meteor=False)["rouge_l"])


def test_shares_of_captions_that_never_end_or_repeat_a_trigram():
    # Rows as the samplers return them for max_length 5: the words, <end> (forced in the last slot
    # when the model did not choose it), then padding.
    E, P = END_ID, PAD_ID
    rows = [
        [5, 6, 7, E, P, P],  # ends
        [5, 6, 7, 8, 9, E],  # five words, then the forced <end>: never ends
        [5, 6, 7, 5, 6, E],  # never ends; "5 6" twice is a bigram, not a trigram
        [5, 6, 5, 6, 5, E],  # never ends and repeats "5 6 5" (overlapping)
        [4, 4, 4, 4, E, P],  # ends, repeats "4 4 4"
        [E, P, P, P, P, P],  # the empty caption ends
    ]
    assert caption_shares(rows, max_length=5) == {"never_ended": 3 / 6, "repeated_trigram": 2 / 6}
    # The same captions as words, as Vocabulary.decode writes them.
    words = [" ".join(f"w{t}" for t in row[: row.index(E)]) for row in rows]
    assert caption_shares(words, max_length=5) == caption_shares(rows, max_length=5)
    assert caption_shares(words, max_length=6)["never_ended"] == 0
    assert repeats_trigram("a man in a red shirt and a man in a hat".split())
    assert not repeats_trigram("a dog and a dog".split())


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference lists"):
        caption_metrics(["a", "b"], [["a"]], meteor=False)
    with pytest.raises(ValueError, match="No captions"):
        caption_metrics([], [], meteor=False)
    with pytest.raises(ValueError, match="Image 1 has no reference captions"):
        caption_metrics(["a dog", "a cat"], [["a dog"], []], meteor=False)
    with pytest.raises(ValueError, match=r"Reference 1 of image 0 is empty after normalisation: '\.\.\.'"):
        caption_metrics(["a dog"], [["a dog", "..."]], meteor=False)
    with pytest.raises(TypeError, match=r"references\[0\] is one string"):
        caption_metrics(["a dog"], ["a dog"], meteor=False)
    with pytest.raises(ValueError, match="tokenization must be one of auto, ptb, kcap, got 'coco'"):
        caption_metrics(["a dog"], [["a dog"]], meteor=False, tokenization="coco")


@needs_ptb
def test_ptb_scores_equal_coco_evalcaps_computation_to_1e_6():
    # COCOEvalCap.evaluate, scorer by scorer (SPICE aside): PTBTokenizer on the references, then on
    # the results, then each scorer on the tokens.
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    hypotheses, references = HYPOTHESES + TRICKY_HYPOTHESES, REFERENCES + TRICKY_REFERENCES
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"image_id": i, "caption": r} for r in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"image_id": i, "caption": h}] for i, h in enumerate(hypotheses)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = {f"bleu{n + 1}": b for n, b in enumerate(bleu)}
    expected["rouge_l"], _ = Rouge().compute_score(gts, res)
    expected["cider"], _ = Cider().compute_score(gts, res)
    # One METEOR process (its start is the slow part): MeteorScorer.score is pycocoevalcap's
    # Meteor.compute_score with a watchdog.
    with MeteorScorer() as meteor:
        expected["meteor"] = meteor.score(gts, res)
        scores = caption_metrics(hypotheses, references, meteor=meteor, tokenization="ptb")

    assert scores["tokenization"] == "ptb" and "meteor_error" not in scores
    for key in METRIC_LABELS:
        assert scores[key] == pytest.approx(expected[key], abs=1e-6), key
    # "auto" is the PTB tokenizer where Java runs.
    assert caption_metrics(hypotheses, references, meteor=False, tokenization="auto") == {**scores, "meteor": None}
    # These captions tell the tokenisations apart: kcap's own scores them differently.
    own = caption_metrics(hypotheses, references, meteor=False)
    assert own["tokenization"] == "kcap"
    assert abs(own["cider"] - scores["cider"]) > 0.01 and abs(own["bleu4"] - scores["bleu4"]) > 0.001


@needs_ptb
def test_normalisation_matches_the_ptb_tokenizer_on_captions_without_clitics():
    # The module docstring's claim: where PTBTokenizer and normalize_caption give the
    # same tokens, kcap's numbers are COCOEvalCap's.
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(REFERENCES)})
    res = tokenizer.tokenize({i: [{"caption": h}] for i, h in enumerate(HYPOTHESES)})
    assert gts == direct_inputs()[0] and res == direct_inputs()[1]
    # Where they differ: the PTB tokenizer keeps the clitic as a token, kcap drops the apostrophe.
    clitic = tokenizer.tokenize({0: [{"caption": "A dog's ball."}]})[0][0]
    assert clitic == "a dog 's ball" and normalize_caption("A dog's ball.") == "a dogs ball"
    # A "\r" would end a line in Java and shift every later caption onto the wrong image.
    assert ptb_tokenize({0: ["a dog\rruns\u2028fast"], 1: ["The end."]}) == {0: ["a dog runs fast"], 1: ["the end"]}


def run_metrics_with_path(path: str, meteor: str = "True", tokenization: str = "kcap",
                          try_ptb: bool = False) -> subprocess.CompletedProcess:
    """caption_metrics(..., meteor=<meteor>, tokenization=...) in a fresh interpreter whose PATH is `path`.

    With `try_ptb`, also what `tokenization="ptb"` raises there.
    """
    code = textwrap.dedent(f"""
        import json, warnings
        from kcap.evaluation.metrics import MeteorScorer, TokenizerError, caption_metrics
        captions = (["a dog runs", "a man surfs"], [["a dog runs on grass"], ["a man is surfing a wave"]])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = caption_metrics(*captions, meteor={meteor}, tokenization={tokenization!r})
        ptb_error = None
        if {try_ptb}:
            try:
                caption_metrics(*captions, meteor=False, tokenization="ptb")
            except TokenizerError as error:
                ptb_error = str(error)
        print(json.dumps({{"scores": scores, "warnings": [str(w.message) for w in caught],
                          "categories": [w.category.__name__ for w in caught], "ptb_error": ptb_error}}))
    """)
    env = {**os.environ, "PATH": path}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_without_java_meteor_is_none_with_a_warning_and_the_rest_is_scored_with_kcaps_tokens(tmp_path):
    assert not (tmp_path / "java").exists()
    done = run_metrics_with_path(str(tmp_path), tokenization="auto", try_ptb=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    scores = out["scores"]
    assert scores["meteor"] is None
    # "auto" falls back to kcap's tokenisation without a word; asked for by name, PTB says what is missing.
    assert scores["tokenization"] == "kcap" and "tokenization_error" not in scores
    assert "needs Java" in out["ptb_error"] and "no `java` executable" in out["ptb_error"]
    assert "Java" in scores["meteor_error"] and "no `java` executable" in scores["meteor_error"]
    assert out["categories"] == [MeteorUnavailableWarning.__name__]
    assert "METEOR is not computed" in out["warnings"][0]
    assert scores["bleu1"] == pytest.approx(
        caption_metrics(["a dog runs", "a man surfs"], [["a dog runs on grass"], ["a man is surfing a wave"]],
                        meteor=False)["bleu1"], abs=1e-12)
    assert "Exception ignored" not in done.stderr  # no half-built scorer left to complain at exit


def test_a_broken_java_degrades_meteor_and_reports_its_error(tmp_path):
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\necho 'Error: Unable to access jarfile meteor-1.5.jar' >&2\nexit 1\n")
    java.chmod(0o755)
    done = run_metrics_with_path(f"{tmp_path}:/usr/bin:/bin", tokenization="auto")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    scores = out["scores"]
    assert scores["meteor"] is None and scores["rouge_l"] > 0
    assert "failed" in scores["meteor_error"] and "Unable to access jarfile" in scores["meteor_error"]
    # The PTB tokenizer gave no lines: "auto" scores with kcap's tokens, and says so.
    assert scores["tokenization"] == "kcap" and "fewer lines" in scores["tokenization_error"]
    assert out["categories"] == ["TokenizerUnavailableWarning", MeteorUnavailableWarning.__name__]


def test_a_hung_java_is_killed_after_the_timeout(tmp_path):
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\nexec sleep 60\n")
    java.chmod(0o755)
    done = run_metrics_with_path(f"{tmp_path}:/usr/bin:/bin", meteor="MeteorScorer(timeout=1.0)")
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)["scores"]
    assert scores["meteor"] is None and "did not answer within 1 s" in scores["meteor_error"]


# -- kcap evaluate -------------------------------------------------------------


def test_evaluate_run_writes_every_metric_for_the_model_and_the_baseline_and_coco_results(trained_run):
    trained = load_run(trained_run)
    report = evaluate_run(trained, "test", progress=False, meteor=JAVA is not None)

    assert json.loads((trained_run / "eval_test.json").read_text()) == report
    for scores in (report, report["baseline"]):
        for key in METRIC_LABELS:
            assert key in scores
            if key != "meteor" or JAVA:
                assert scores[key] is not None and scores[key] >= 0.0
    assert report["num_images"] == len(report["captions"]) == 8
    assert report["decoding"] == {"beam_size": 1, "temperature": None, "no_repeat_ngram": 0}
    first = report["captions"][0]
    assert set(first) == {"image", "caption", "references"} and len(first["references"]) == 5
    assert report["baseline"]["caption"]
    # The COCO evaluation's tokenisation where it can run, for the model and the baseline alike.
    used = "ptb" if ptb_can_run() else "kcap"
    assert report["tokenization"] == report["baseline"]["tokenization"] == used
    # The reported figures are the metrics of the listed captions against their references.
    hypotheses = [c["caption"] for c in report["captions"]]
    recomputed = caption_metrics(hypotheses, [c["references"] for c in report["captions"]], meteor=False,
                                 tokenization=used)
    for key in ("bleu1", "bleu4", "rouge_l", "cider"):
        assert report[key] == pytest.approx(recomputed[key], abs=1e-12)
    baseline = caption_metrics([report["baseline"]["caption"]] * 8,
                               [c["references"] for c in report["captions"]], meteor=False, tokenization=used)
    assert report["baseline"]["cider"] == pytest.approx(baseline["cider"], abs=1e-12)
    shares = caption_shares(hypotheses, trained.model.max_length)
    assert report["never_ended"] == shares["never_ended"] and report["repeated_trigram"] == shares["repeated_trigram"]

    results = json.loads((trained_run / "results_test.json").read_text())
    assert results == [
        {"image_id": Path(c["image"]).stem, "caption": c["caption"]} for c in report["captions"]
    ]


def test_evaluate_scores_the_beam_search_captions(trained_run):
    beam = evaluate_run(load_run(trained_run), "test", progress=False, meteor=False, beam_size=3, tokenization="kcap")
    assert beam["decoding"]["beam_size"] == 3
    paths = [c["image"] for c in beam["captions"]]
    expected = [r["caption"] for r in load_run(trained_run).caption_files(paths, beam_size=3)]
    assert [c["caption"] for c in beam["captions"]] == expected
    assert beam["meteor"] is None and "meteor_error" not in beam  # skipped on request, not failed


def test_kcap_evaluate_without_java_still_scores_and_notes_why_meteor_is_missing(trained_run, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty directory: no java
    done = subprocess.run(kcap_command("evaluate", "--run-dir", str(trained_run), "--split", "test"),
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "METEOR is not computed" in done.stderr
    report = json.loads((trained_run / "eval_test.json").read_text())
    assert report["meteor"] is None and report["baseline"]["meteor"] is None
    assert "no `java` executable" in report["meteor_error"]
    assert report["cider"] >= 0 and report["bleu4"] >= 0
    assert report["tokenization"] == report["baseline"]["tokenization"] == "kcap"
    assert "tokenisation: kcap's own (no Java" in done.stdout


def test_results_name_images_by_their_coco_ids_where_the_data_has_them(trained_run, tmp_path):
    import shutil

    run = shutil.copytree(trained_run, tmp_path / "run")
    manifest = json.loads((run / "splits.json").read_text())
    # What a run trained on a COCO captions file records: each image's COCO id.
    for number, item in enumerate(manifest["splits"]["test"]):
        item["id"] = 1000 + number
    (run / "splits.json").write_text(json.dumps(manifest))
    report = evaluate_run(load_run(run), "test", progress=False, meteor=False, tokenization="kcap")
    results = json.loads((run / "results_test.json").read_text())
    assert [r["image_id"] for r in results] == list(range(1000, 1000 + len(manifest["splits"]["test"])))
    assert [r["caption"] for r in results] == [c["caption"] for c in report["captions"]]


def test_image_ids_are_file_name_stems_unless_two_share_one():
    assert image_ids(["/d/Images/1000268201_693b08cb0e.jpg", "/d/Images/b.png"]) == ["1000268201_693b08cb0e", "b"]
    # cats/000.jpg and dogs/000.jpg: the paths below their common folder tell them apart.
    assert image_ids(["/d/images/cats/000.jpg", "/d/images/dogs/000.jpg", "/d/images/dogs/001.jpg"]) == [
        "cats/000", "dogs/000", "dogs/001",
    ]
    # Only the extension differs: it stays.
    assert image_ids(["/d/x/a.jpg", "/d/x/a.png"]) == ["a.jpg", "a.png"]


def test_evaluating_a_run_whose_images_moved_says_where_they_were_expected(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    manifest = json.loads((run / "splits.json").read_text())
    trained_at = manifest["images_dir"]
    # The run was copied to a machine whose images folder is somewhere else.
    manifest["images_dir"] = str(tmp_path / "gone")
    for items in manifest["splits"].values():
        for item in items:
            item["image"] = str(tmp_path / "gone" / Path(item["image"]).relative_to(trained_at))
    (run / "splits.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError) as caught:
        evaluate_run(load_run(run), "test", progress=False, meteor=False)
    message = str(caught.value)
    assert message.startswith(f"8 of the 8 images of the 'test' split are missing, e.g. {tmp_path / 'gone'}")
    assert f"{run / 'splits.json'} names each image by the path it had at training" in message
    assert "kcap evaluate --images DIR" in message
    assert message.count("\n") == 0  # one line, not one per image

    with pytest.raises(NotADirectoryError, match="--images takes the folder"):
        evaluate_run(load_run(run), "test", progress=False, meteor=False, images_dir=run / "splits.json")
    with pytest.raises(FileNotFoundError, match=f"{run} does not hold them below the paths they had below"):
        evaluate_run(load_run(run), "test", progress=False, meteor=False, images_dir=run)
    # Given the folder they are in now, the run scores the images it was trained and split with.
    moved = evaluate_run(load_run(run), "test", progress=False, meteor=False, images_dir=trained_at,
                         tokenization="kcap")
    original = evaluate_run(load_run(shutil.copytree(trained_run, tmp_path / "original")), "test", progress=False,
                            meteor=False, tokenization="kcap")
    assert [c["caption"] for c in moved["captions"]] == [c["caption"] for c in original["captions"]]
    assert moved["bleu4"] == original["bleu4"] and moved["cider"] == original["cider"]
