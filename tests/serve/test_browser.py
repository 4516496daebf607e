"""The `kcap serve` page in a real headless Chromium, against a real server and a tiny trained run.

Needs Debian's `chromium` (`.ci/run` installs it) and the `playwright` package, which drives
the system browser through `executable_path`: `playwright install` (a download) is never run.
"""

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from conftest import SHARED, kcap_command
from matplotlib import colormaps

# A Flickr8k test-split photo (500x375), of the subset in ../shared.
PHOTO = SHARED / "data" / "flickr8k_1000" / "Images" / "1258913059_07c613f7ff.jpg"
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH (Debian: apt-get install chromium; .ci/run installs it)"),
    pytest.mark.skipif(not PHOTO.is_file(), reason=f"no Flickr8k photo at {PHOTO} (set KCAP_SHARED)"),
]
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")

BEAM_SIZE = 3  # the page shows the other candidates of a beam search
STARTUP_SECONDS = 90  # TensorFlow's import and the model's first trace, on two busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """`kcap serve` for the conftest's tiny run on 127.0.0.1: (base URL, `kcap caption`'s caption of PHOTO).

    The caption is computed while the server exports and loads the run: two cores, half the wait.
    """
    from kcap.inference import load_run

    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            kcap_command("serve", "--run-dir", str(trained_run), "--beam-size", str(BEAM_SIZE),
                         "--host", "127.0.0.1", "--port", str(port)),
            stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        expected = load_run(trained_run).caption_files([PHOTO], beam_size=BEAM_SIZE)[0]["caption"]
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"kcap serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"kcap serve did not answer /healthz in {STARTUP_SECONDS} s:\n{log_path.read_text()}")
                time.sleep(0.25)
        yield url, expected
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.set_default_timeout(60_000)  # the first caption traces the model
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server[0])
        yield page
        browser.close()
        assert not errors, f"the page's scripts failed: {errors}"


def expected_heat(attention: list, word: int, size: tuple[int, int]) -> np.ndarray:
    """Word `word`'s heat map as RGB at `size`, as `kcap caption --attention-plot` colours it."""
    from kcap.evaluation.attention_plot import attention_map

    grids = np.asarray(attention, np.float32)
    heat = attention_map(grids[word].ravel(), grids.shape[1:], size) / grids.max()
    return colormaps["inferno"](heat)[..., :3] * 255


def canvas_pixels(page) -> np.ndarray:
    """The heat canvas as (height, width, 4) uint8 RGBA (sent as base64: a JSON array is seconds)."""
    width, height, data = page.evaluate(
        """() => {
            const canvas = document.getElementById("heat");
            const bytes = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let text = "";
            for (let i = 0; i < bytes.length; i += 0x8000) {
                text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
            }
            return [canvas.width, canvas.height, btoa(text)];
        }"""
    )
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width, 4)


def transfer(page, name: str, mime: str, data: bytes):
    """A DataTransfer holding one file, in the page: what a drop or a paste carries."""
    return page.evaluate_handle(
        """([name, type, base64]) => {
            const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type}));
            return transfer;
        }""",
        [name, mime, base64.b64encode(data).decode()],
    )


def test_page_captions_a_photo_shows_attention_and_errors(server, page, tmp_path):
    url, expected = server
    with urllib.request.urlopen(f"{url}/v1/models/kcap") as response:
        assert json.load(response)["metadata"]["beam_size"] == BEAM_SIZE
    assert f"beam size {BEAM_SIZE}" in page.inner_text("#model")

    with page.expect_response("**/caption") as answer:
        page.set_input_files("#file", str(PHOTO))
    result = answer.value.json()
    page.wait_for_selector("#caption .word")
    words = page.locator("#caption .word")
    assert page.inner_text("#caption").split() == result["words"] == expected.split()
    assert result["caption"] == expected
    others = [f"{item['caption']} {item['score']:.2f}" for item in result["candidates"][1:]]
    if others:  # else the list says why there are none
        assert page.locator("#candidates li").all_inner_texts() == others
    assert page.get_attribute("#photo", "src")

    # No word pointed at: no heat map. Each word pointed at: its own, as the attention plot colours it.
    assert page.get_attribute("#heat", "data-word") is None
    assert canvas_pixels(page)[..., 3].max() == 0
    shown = []
    for index in sorted({0, words.count() - 1}):
        words.nth(index).hover()
        assert page.get_attribute("#heat", "data-word") == str(index)
        pixels = canvas_pixels(page)
        assert (pixels[..., 3] == 153).all()  # the plot's alpha=0.6, everywhere
        want = expected_heat(result["attention"], index, pixels.shape[:2])
        assert np.abs(pixels[..., :3] - want).mean() < 4, "the heat map is not the word's upsampled attention"
        shown.append(pixels)
    first, last = np.asarray(result["attention"])[[0, -1]]
    if not np.allclose(first, last, atol=1e-3):
        assert not np.array_equal(shown[0], shown[-1]), "pointing at another word left the overlay unchanged"

    # The keyboard: a focused word shows its heat map too.
    page.mouse.move(0, 0)
    words.nth(0).focus()
    assert page.get_attribute("#heat", "data-word") == "0"
    page.screenshot(path=tmp_path / "serve.png", full_page=True)
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    page.set_viewport_size({"width": 360, "height": 800})  # a phone: one column, nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    page.set_viewport_size({"width": 1100, "height": 800})

    # Not an image, dropped on the page: the server's reason, in words, on the page; the caption is gone.
    with page.expect_response("**/caption") as answer:
        page.dispatch_event("#drop", "drop", {"dataTransfer": transfer(page, "notes.txt", "text/plain", b"not a photo\n")})
    assert 400 <= answer.value.status < 500
    reason = answer.value.json()["error"]
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error")
    assert "notes.txt" in message and reason in message and "Traceback" not in message
    assert page.is_hidden("#result")

    # The photo pasted: captioned again, the error gone.
    with page.expect_response("**/caption"):
        page.evaluate(
            "transfer => document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: transfer}))",
            transfer(page, "", "image/jpeg", PHOTO.read_bytes()),
        )
    page.wait_for_selector("#result:not([hidden])")
    assert page.inner_text("#caption").split() == expected.split() and page.is_hidden("#error")
