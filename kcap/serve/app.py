"""The `kcap serve` web app: the page, the JSON API and TensorFlow Serving's REST format.

Routes (answers are JSON; every error is `{"error": "..."}` with a 4xx, 503 or 504 status):

- `GET /`: the page (`static/index.html`); `GET /static/FILE`: its files.
- `POST /caption`: multipart/form-data with the image in the field `image` →
  `{"caption", "score", "candidates": [{"caption", "score"}], "words", "attention",
  "grid", "beam_size"}`; `attention` holds one `grid` (h × w) of weights per word.
- `POST /v1/models/kcap:predict`: `{"instances": [{"b64": ...}]}` (or
  `{"image_bytes": {"b64": ...}}` per instance) → `{"predictions": [{"caption", "score"}]}`.
- `GET /v1/models/kcap`: the model's status and `metadata`; `GET /healthz`.

Each image is checked from its header (size, pixels), decoded on its own
(a bad one fails only its request) and queued; the queued images are captioned
in batches (`kcap.serve.batching`).

Example:

```python
app = build_app(ServedModel.load("exported/shapes/1"), ServeSettings(max_batch_size=8))
uvicorn.run(app, host="127.0.0.1", port=8000)
```
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kcap.serve.batching import Batcher, QueueFull
from kcap.serve.inputs import RequestError, check_image, instance_bytes, read_body
from kcap.serve.model import ImageDecodeError, ServedModel
from kcap.serve.settings import ServeSettings

log = logging.getLogger("kcap.serve")

STATIC = Path(__file__).parent / "static"
MODEL_NAME = "kcap"


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Captioner:
    """Request bytes → a result dict: header check, decode on a thread, caption in a batch."""

    def __init__(self, model: ServedModel, settings: ServeSettings):
        self.model = model
        self.settings = settings
        self.batcher = Batcher(model.caption, settings.max_batch_size, settings.max_wait_ms / 1000, settings.max_queue)

    async def caption(self, data: bytes, deadline: float, what: str = "The image") -> dict:
        check_image(data, self.settings.max_pixels)
        try:
            if not self.model.batches:  # an old export: serving_default, one image per call
                return await asyncio.wait_for(run_in_threadpool(self.model.caption_bytes, data), _left(deadline))
            with self.batcher.expecting():
                pixels = await asyncio.wait_for(run_in_threadpool(self.model.decode, data), _left(deadline))
            return await self.batcher.submit(pixels, _left(deadline))
        except ImageDecodeError as error:
            raise RequestError(400, f"{what} could not be decoded ({error}); it may be truncated or damaged. "
                                    "Send a complete JPEG, PNG, GIF, BMP or WebP file.") from None
        except QueueFull as error:
            raise RequestError(503, f"The server is busy ({error}); retry in a moment.") from None
        except TimeoutError:
            raise RequestError(504, f"Captioning took longer than {self.settings.timeout_s:g} s (--timeout-s); "
                                    "the server is overloaded, retry later.") from None


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def build_app(model: ServedModel, settings: ServeSettings | None = None) -> Starlette:
    """The Starlette app serving `model` with `settings` (see the module docstring)."""
    settings = settings or ServeSettings()
    captioner = _Captioner(model, settings)

    async def page(request: Request) -> Response:
        index = STATIC / "index.html"
        if not index.is_file():
            return error_response(404, "This kcap has no page (kcap/serve/static/index.html); the API is at "
                                       "POST /caption and POST /v1/models/kcap:predict.")
        return FileResponse(index)

    async def caption(request: Request) -> Response:
        deadline = time.monotonic() + settings.timeout_s
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise RequestError(415, f"POST /caption takes multipart/form-data with the image in a field named "
                                    f"'image', not {content_type or 'a body without a Content-Type'}.")
        body = await read_body(request.stream(), request.headers.get("content-length"), settings.max_upload_bytes)
        data = await _form_file(request.headers, body, settings.max_upload_bytes)
        result = await captioner.caption(data, deadline)
        return JSONResponse({**result, "beam_size": model.beam_size})

    async def predict(request: Request) -> Response:
        deadline = time.monotonic() + settings.timeout_s
        content_type = request.headers.get("content-type", "application/json")
        if not content_type.startswith("application/json"):
            raise RequestError(415, f"The predict API takes application/json, not {content_type}.")
        body = await read_body(request.stream(), request.headers.get("content-length"), settings.max_upload_bytes)
        try:
            request_json = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestError(400, f"The body is not valid JSON ({error}); send "
                                    '{"instances": [{"b64": "<base64 image bytes>"}]}.') from None
        instances = request_json.get("instances") if isinstance(request_json, dict) else None
        if not isinstance(instances, list):
            raise RequestError(400, 'The body must be a JSON object with a list "instances": '
                                    '{"instances": [{"b64": "<base64 image bytes>"}]}.')
        if len(instances) > settings.max_queue:
            raise RequestError(413, f"{len(instances)} instances are more than this server queues "
                                    f"({settings.max_queue}, --max-queue); send them in smaller requests.")
        images = [instance_bytes(instance, index) for index, instance in enumerate(instances)]
        results = await asyncio.gather(
            *(captioner.caption(data, deadline, f"instances[{index}]") for index, data in enumerate(images)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return JSONResponse({"predictions": [{"caption": r["caption"], "score": r["score"]} for r in results]})

    async def status(request: Request) -> Response:
        return JSONResponse({
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ],
            "metadata": {
                **model.metadata(),
                "max_batch_size": settings.max_batch_size if model.batches else 1,
                "max_wait_ms": settings.max_wait_ms,
            },
        })

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def request_error(request: Request, error: RequestError) -> Response:
        headers = {"Retry-After": "1"} if error.status == 503 else None
        return error_response(error.status, error.message, headers)

    async def http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 404:
            return error_response(404, f"No such page or API: {request.url.path}. See GET /v1/models/{MODEL_NAME}, "
                                       "POST /caption, POST /v1/models/kcap:predict.")
        return error_response(error.status_code, f"{request.method} {request.url.path}: {error.detail}.")

    async def server_error(request: Request, error: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"The server failed on this request ({type(error).__name__}); "
                                   "its log has the details.")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(model.warm_up)
        await captioner.batcher.start()
        try:
            yield
        finally:
            await captioner.batcher.stop()

    routes = [
        Route("/", page),
        Route("/healthz", healthz),
        Route("/caption", caption, methods=["POST"]),
        Route(f"/v1/models/{MODEL_NAME}:predict", predict, methods=["POST"]),
        Route(f"/v1/models/{MODEL_NAME}", status),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={RequestError: request_error, HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    return _LogRequests(app)


async def _form_file(headers: Headers, body: bytes, max_bytes: int) -> bytes:
    """The bytes of the form's file field `image`."""

    async def stream():
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=2, max_fields=20, max_part_size=max_bytes).parse()
    except MultiPartException as error:
        raise RequestError(400, f"The multipart form could not be read ({error}); send the image as the file "
                                "field 'image' of a multipart/form-data form.") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise RequestError(400, "The form has no file field 'image'; send the image as "
                                "multipart/form-data with a file field named 'image'.")
    try:
        return await upload.read()
    finally:
        await form.close()


class _LogRequests:
    """ASGI middleware: one log line per request (method, path, status, bytes out, milliseconds)."""

    def __init__(self, app):
        self.app = app

    def __getattr__(self, name):
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        answer = {"status": 500, "bytes": 0}

        async def logged_send(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %d %dB %.1fms", client[0], scope["method"], scope["path"], answer["status"],
                     answer["bytes"], (time.monotonic() - start) * 1000)
