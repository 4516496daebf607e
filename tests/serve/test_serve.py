"""`kcap serve`'s API on a real server (uvicorn on 127.0.0.1): TF Serving's format, bad input, batching."""

import base64
import io
import json
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf
import uvicorn
from PIL import Image

from kcap.export import export_run
from kcap.serve.app import build_app
from kcap.serve.model import ServedModel
from kcap.serve.settings import ServeSettings

BEAM_SIZE = 3


@pytest.fixture(scope="module")
def export_dir(trained_run, tmp_path_factory):
    return export_run(trained_run, tmp_path_factory.mktemp("serve") / "model", beam_size=BEAM_SIZE)


@pytest.fixture(scope="module")
def model(export_dir):
    return ServedModel.load(export_dir)


@pytest.fixture(scope="module")
def images(trained_run):
    """The run's test PNGs' bytes, and one as a JPEG."""
    test = [i["image"] for i in json.loads((trained_run / "splits.json").read_text())["splits"]["test"]]
    files = [Path(p).read_bytes() for p in test[:8]]
    jpeg = io.BytesIO()
    Image.open(test[0]).convert("RGB").save(jpeg, "JPEG", quality=90)
    return files + [jpeg.getvalue()]


class Server:
    """`app` served by uvicorn on a thread, on a free port of 127.0.0.1."""

    def __init__(self, app):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        self.socket.close()


@pytest.fixture(scope="module")
def server(model):
    # A long wait: requests sent together are surely batched together.
    with Server(build_app(model, ServeSettings(max_batch_size=8, max_wait_ms=150))) as running:
        yield running


def predict(url, images, **kwargs):
    instances = [{"b64": base64.b64encode(data).decode()} for data in images]
    return requests.post(f"{url}/v1/models/kcap:predict", json={"instances": instances}, timeout=60, **kwargs)


def upload(url, data, name="image.png"):
    return requests.post(f"{url}/caption", files={"image": (name, data)}, timeout=60)


def test_predict_gives_the_savedmodels_captions_and_caption_adds_candidates_and_attention(
    server, export_dir, images
):
    direct = tf.saved_model.load(str(export_dir)).signatures["serving_default"](image_bytes=tf.constant(images))
    response = predict(server.url, images)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["caption"] for p in predictions] == [c.decode() for c in direct["caption"].numpy()]
    np.testing.assert_allclose([p["score"] for p in predictions], direct["score"].numpy(), rtol=1e-5)
    # TF Serving's other spelling of the same request.
    other = requests.post(f"{server.url}/v1/models/kcap:predict", timeout=60,
                          json={"instances": [{"image_bytes": {"b64": base64.b64encode(images[0]).decode()}}]})
    assert other.json()["predictions"][0]["caption"] == predictions[0]["caption"]

    result = upload(server.url, images[-1], "photo.jpg").json()
    assert result["caption"] == predictions[-1]["caption"] and result["beam_size"] == BEAM_SIZE
    assert result["candidates"][0] == {"caption": result["caption"], "score": result["score"]}
    assert 1 <= len(result["candidates"]) <= BEAM_SIZE
    assert len({c["caption"] for c in result["candidates"]}) == len(result["candidates"])
    assert result["words"] == result["caption"].split()
    grid = result["grid"]
    attention = np.array(result["attention"])
    assert attention.shape == (len(result["words"]), *grid) and grid == list(server_model_grid(export_dir))
    np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-3)  # each word's weights sum to 1


def server_model_grid(export_dir):
    return json.loads((export_dir / "assets" / "export.json").read_text())["attention_grid"]


def test_status_metadata_and_health(server, model):
    assert requests.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}
    status = requests.get(f"{server.url}/v1/models/kcap", timeout=10).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    metadata = status["metadata"]
    assert metadata["image_size"] == [64, 64] and metadata["beam_size"] == BEAM_SIZE
    assert metadata["vocabulary_size"] == model.info["vocabulary_size"] and metadata["source"] == "export"
    assert metadata["decoder"] == "gru_attention" and metadata["missing_signatures"] == []


def _png_header(width, height):
    """A PNG that says it is `width` x `height` in a few dozen bytes: a decompression bomb's header."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_every_bad_input_gets_a_4xx_json_error_and_the_next_request_is_served(server, images):
    url = server.url
    jpeg = images[-1]
    cases = {
        "empty image": lambda: upload(url, b""),
        "text file": lambda: upload(url, b"a caption is not an image\n" * 40, "notes.txt"),
        "truncated JPEG": lambda: upload(url, jpeg[: len(jpeg) // 2], "cut.jpg"),
        "20000x20000 PNG": lambda: upload(url, _png_header(20000, 20000), "bomb.png"),
        "50 MB upload": lambda: upload(url, b"\xff" * (50 * 2**20), "big.jpg"),
        "empty body": lambda: requests.post(f"{url}/caption", timeout=10),
        "no image field": lambda: requests.post(f"{url}/caption", files={"photo": ("a.png", images[0])}, timeout=10),
        "wrong content type": lambda: requests.post(f"{url}/caption", data=images[0],
                                                    headers={"Content-Type": "image/png"}, timeout=10),
        "malformed JSON": lambda: requests.post(f"{url}/v1/models/kcap:predict", data=b'{"instances": [',
                                                headers={"Content-Type": "application/json"}, timeout=10),
        "JSON without instances": lambda: requests.post(f"{url}/v1/models/kcap:predict", json={"inputs": []},
                                                        timeout=10),
        "bad base64": lambda: requests.post(f"{url}/v1/models/kcap:predict", json={"instances": [{"b64": "@@"}]},
                                            timeout=10),
        "text as an instance": lambda: predict(url, [b"hello"]),
        "predict as text/plain": lambda: requests.post(f"{url}/v1/models/kcap:predict", data=b"{}",
                                                       headers={"Content-Type": "text/plain"}, timeout=10),
        "unknown path": lambda: requests.get(f"{url}/v2/anything", timeout=10),
    }
    expected = {"empty image": 400, "text file": 415, "truncated JPEG": 400, "20000x20000 PNG": 413,
                "50 MB upload": 413, "empty body": 415, "no image field": 400, "wrong content type": 415,
                "malformed JSON": 400, "JSON without instances": 400, "bad base64": 400,
                "text as an instance": 415, "predict as text/plain": 415, "unknown path": 404}
    good = upload(url, images[0]).json()["caption"]
    for name, send in cases.items():
        response = send()
        assert response.status_code == expected[name], (name, response.text)
        error = response.json()["error"]
        assert len(error) > 20 and "Traceback" not in error and "File \"" not in error, (name, error)
        assert upload(url, images[0]).json()["caption"] == good, name
    one_pixel = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(one_pixel, "PNG")
    assert isinstance(upload(url, one_pixel.getvalue()).json()["caption"], str)


def test_concurrent_requests_are_captioned_in_fewer_batches_and_a_bad_one_fails_alone(server, images, model):
    calls = model.model_calls
    sent = images[:6] + [images[-1][: len(images[-1]) // 2]]  # six good images and a truncated JPEG, at once
    with ThreadPoolExecutor(len(sent)) as pool:
        responses = list(pool.map(lambda data: upload(server.url, data), sent))
    assert [r.status_code for r in responses] == [200] * 6 + [400]
    metadata = requests.get(f"{server.url}/v1/models/kcap", timeout=10).json()["metadata"]
    assert metadata["model_calls"] - calls < 6 and metadata["largest_batch"] > 1


class SlowModel(ServedModel):
    """The same model, 0.4 s slower per batch: a queue that fills and requests that time out, on cue."""

    def caption(self, images):
        time.sleep(0.4)
        return super().caption(images)


def test_a_full_queue_answers_503_at_once_and_a_slow_answer_504(model, images):
    slow = SlowModel(model._loaded, model.info, "export")
    with Server(build_app(slow, ServeSettings(max_batch_size=1, max_wait_ms=0, max_queue=1))) as running:
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda data: upload(running.url, data), images[:6]))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 2 and 503 in codes, codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["Retry-After"] == "1" and "busy" in busy.json()["error"]
        assert upload(running.url, images[0]).status_code == 200
    with Server(build_app(slow, ServeSettings(timeout_s=0.2))) as running:
        response = upload(running.url, images[0])
        assert response.status_code == 504 and "--timeout-s" in response.json()["error"]
