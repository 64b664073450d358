"""The FastAPI app of the HTTP API (:func:`build_api`) and its server (:func:`serve_api`).

Routes (see ``docs/API.md`` for the shapes): ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/chat/completions`` (JSON or server-sent events), ``POST /v1/images/generations``,
``POST /v1/files`` / ``GET /v1/files`` / ``GET`` and ``DELETE /v1/files/{id}``, ``GET /v1/media/{name}``
(answers' media as file URLs) and ``GET /health``.

A request is read (bounded size), validated (:mod:`nextgpt.api.schemas`), its media decoded and
checked into a folder of its own (:mod:`nextgpt.api.convert`), turned into a prepared request
(``model.prepare_request``, which checks every argument) and handed to the :class:`Batcher`, which
runs it with other clients' requests in one ``model.run_requests`` call. The request's sink forwards
its events from the batcher thread to the response through ``loop.call_soon_threadsafe``; a client
that goes away cancels its request. The request's folder is removed when it finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nextgpt.api import schemas as s
from nextgpt.api.batcher import (
    DEFAULT_BATCH_WINDOW_MS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    Batcher,
    BatcherClosed,
    Cancelled,
    Job,
    QueueFull,
)
from nextgpt.api.convert import chat_inputs, chat_kwargs, image_kwargs
from nextgpt.api.errors import ApiError, error_body
from nextgpt.api.media import OUTPUT_FORMATS, FileStore, MediaStore, data_url, encode_media
from nextgpt.errors import ConfigError, InputError
from nextgpt.modality import Modality
from nextgpt.web.uploads import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_MEDIA_SECONDS,
    DEFAULT_MAX_UPLOAD_MB,
    UploadLimits,
)

INSTALL_HINT = "pip install 'nextgpt[api]'"
try:  # at import time: FastAPI reads the routes' annotations (Request) from this module's globals
    from fastapi import FastAPI, Request
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
except ImportError as _exc:  # pragma: no cover (fastapi comes with the [api] and [demo] extras)
    raise ImportError(
        f"the HTTP API needs fastapi and uvicorn, optional dependencies: {INSTALL_HINT}"
    ) from _exc

if TYPE_CHECKING:
    from nextgpt.model import NextGPT

logger = logging.getLogger(__name__)

#: Where :func:`serve_api` listens by default: this machine only.
DEFAULT_HOST = "127.0.0.1"
#: The API's default port (vLLM's).
DEFAULT_PORT = 8000
#: Text budget of a chat completion that gives neither ``max_tokens`` nor ``max_completion_tokens``.
DEFAULT_MAX_TOKENS = 128
#: How long answers' media files (file URLs) and uploaded files are kept (1 hour).
DEFAULT_MEDIA_TTL_S = 3600.0
#: Size limit of the answers' media files and the uploaded files together (MB).
DEFAULT_MAX_DISK_MB = 2048.0


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


@dataclass
class ApiState:
    """What the app's routes share: the model, its name, the limits, the batcher and the folders.

    ``close()`` stops the batcher and removes the folders this app created.
    """

    model: Any
    model_name: str
    limits: UploadLimits
    batcher: Batcher
    media: MediaStore
    files: FileStore
    work_root: Path
    defaults: dict[str, Any]
    media_response_format: str
    max_request_bytes: int
    remove_on_close: list[Path] = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))
    _prepare_lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def close(self) -> None:
        """Stop the batcher (queued requests fail with 503) and remove the app's folders."""
        if self._closed:
            return
        self._closed = True
        self.batcher.close()
        for path in self.remove_on_close:
            shutil.rmtree(path, ignore_errors=True)

    def check_model(self, name: str | None) -> None:
        """404 unless ``name`` is ``None`` or the served model's name."""
        if name is not None and name != self.model_name:
            raise ApiError(
                404,
                f"The model '{name}' does not exist; this server serves '{self.model_name}'",
                param="model",
                code="model_not_found",
            )

    def new_folder(self) -> Path:
        """A new folder for one request's media (removed when the request ends)."""
        path = self.work_root / f"req-{secrets.token_hex(8)}"
        path.mkdir(parents=True)
        return path

    def prepare(self, inputs: object, kwargs: Mapping[str, Any]) -> Any:
        """``model.prepare_request(inputs, **kwargs)``; the library's input and config errors as 400.

        Serialised: the tokenizer is not guaranteed to be safe under concurrent calls.
        """
        try:
            with self._prepare_lock:
                return self.model.prepare_request(inputs, **kwargs)
        except (InputError, ConfigError) as exc:
            raise ApiError(400, str(exc), param=_library_param(str(exc)), code="invalid_value") from None


#: The request field of each ``prepare_request`` argument a library message may name first.
_LIBRARY_PARAMS = {
    "max_new_tokens": "max_tokens",
    "min_new_tokens": "min_tokens",
    "do_sample": "temperature",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "stop": "stop",
    "seed": "seed",
    "modalities": "modalities",
    "decoder_kwargs": "decoder_kwargs",
    "negative_prompt": "negative_prompt",
}


def _library_param(message: str) -> str | None:
    """The request field a library error message is about (``"top_k must be ..."`` -> ``top_k``)."""
    match = re.match(r"[A-Za-z_]+", message)
    return _LIBRARY_PARAMS.get(match.group(0)) if match else None


def _finish_reason(output: Any, max_new_tokens: int | None) -> str:
    reason = getattr(output, "finish_reason", None)
    if isinstance(reason, str) and reason:
        return reason
    return "length" if max_new_tokens and len(output.token_ids) >= max_new_tokens else "stop"


def _prompt_tokens(req: Any) -> int:
    for attr in ("prompt_tokens", "num_prompt_tokens"):
        value = getattr(req, attr, None)
        if isinstance(value, int):
            return value
    ids: Any = getattr(req, "input_ids", None)
    if ids is None:
        return 0
    try:
        return int(ids.numel()) if hasattr(ids, "numel") else len(ids)
    except TypeError:
        return 0


def _usage(req: Any, output: Any) -> dict[str, int]:
    prompt = _prompt_tokens(req)
    completion = len(output.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _run_error(exc: BaseException) -> ApiError:
    """What a failed run is answered with."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (InputError, ConfigError)):
        return ApiError(400, str(exc), code="invalid_value")
    if isinstance(exc, Cancelled):
        return ApiError(400, "the request was cancelled", code="cancelled")
    if isinstance(exc, BatcherClosed):
        return ApiError(503, "the server is shutting down", code="shutting_down")
    logger.error("generation failed", exc_info=(type(exc), exc, exc.__traceback__))
    return ApiError(500, "The server had an error while generating the answer", code="internal_error")


class _Run:
    """One submitted job and the asyncio side of it: events from the batcher thread go into
    ``queue`` as ``("event", StreamEvent)`` / ``("done", (output, error))`` in order."""

    def __init__(self, state: ApiState, request: Any, folder: Path | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.folder = folder
        self.job = Job(request, self._on_done, self._on_event)
        try:
            state.batcher.submit(self.job)
        except QueueFull:
            self._cleanup()
            raise ApiError(
                503, "the server is busy: too many requests are waiting; retry later", code="server_busy"
            ) from None
        except BatcherClosed:
            self._cleanup()
            raise ApiError(503, "the server is shutting down", code="shutting_down") from None

    def _put(self, item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone (server stopped)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _on_event(self, event: Any) -> None:  # batcher thread
        self._put(("event", event))

    def _on_done(self, output: Any, error: BaseException | None) -> None:  # batcher thread
        self._cleanup()
        self._put(("done", (output, error)))

    def _cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """``("event", e)`` for each event before the row's ``"done"``, then ``("output", out)`` or
        ``("error", exc)`` (the row's ``"done"`` event ends it early: other rows may still run)."""
        while True:
            kind, payload = await self.queue.get()
            if kind == "event":
                if getattr(payload, "kind", None) == "done" and getattr(payload, "output", None) is not None:
                    yield "output", payload.output
                    return
                yield "event", payload
            else:
                output, error = payload
                yield ("error", error) if error is not None else ("output", output)
                return

    async def result(self, request: Request) -> Any:
        """Wait for the output (cancelling the job if the client disconnects)."""
        stream = self.events()
        try:
            while True:
                task = asyncio.ensure_future(stream.__anext__())
                while not task.done():
                    await asyncio.wait({task}, timeout=0.5)
                    if not task.done() and await request.is_disconnected():
                        self.job.cancel()
                        task.cancel()
                        raise ApiError(400, "the client disconnected", code="cancelled")
                kind, payload = task.result()
                if kind == "output":
                    return payload
                if kind == "error":
                    raise _run_error(payload)
        except asyncio.CancelledError:
            self.job.cancel()
            raise


def _sse(data: Mapping[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n"


def build_api(
    model: NextGPT,
    *,
    model_name: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_media_seconds: float = DEFAULT_MAX_MEDIA_SECONDS,
    max_files: int = DEFAULT_MAX_FILES,
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_queue: int = DEFAULT_MAX_QUEUE,
    overlap_media: bool = False,
    output_dir: str | os.PathLike | None = None,
    media_ttl_s: float | None = DEFAULT_MEDIA_TTL_S,
    max_disk_mb: float | None = DEFAULT_MAX_DISK_MB,
    media_response_format: str = "data_url",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    generation_defaults: Mapping[str, Any] | None = None,
) -> FastAPI:
    """The OpenAI-compatible HTTP API for ``model``, as a FastAPI app.

    The app carries ``app.state.nextgpt`` (an :class:`ApiState`: the batcher, the folders);
    ``app.state.nextgpt.close()`` (also run at the app's shutdown) stops the batcher and removes the
    folders the app created. The batcher thread starts here.

    Args:
        model: the model every request shares.
        model_name: the name clients give as ``model`` (default: the config's name, e.g. ``small``).
        max_upload_mb: per-file limit of media in requests (as the web page's uploads).
        max_media_seconds: audio/video duration limit.
        max_files: media parts per message.
        batch_window_ms: how long the batcher waits for more requests after the first of a batch.
        max_batch: most requests per ``run_requests`` call (1: no batching).
        max_queue: most requests waiting for the model; more are answered 503.
        overlap_media: render each medium as soon as its signal run completes, while the batch's text
            goes on (``run_requests(overlap_media=True)``: sooner media in streams, one decoder call per
            item) instead of one decoder call per modality for the whole batch after its text.
        output_dir: where requests' media, uploads and answers' media files go (default: a new
            temporary folder, removed by ``close()``; a given folder is kept, its subfolders removed).
        media_ttl_s: how long answers' media files and uploaded files are kept (``None``: until the
            size limit removes them).
        max_disk_mb: size limit of those files together, oldest removed first (``None``: none).
        media_response_format: the default of the request field of that name: ``data_url`` (media
            inline in the answer) or ``url`` (file URLs served by ``GET /v1/media/{name}``).
        max_tokens: ``max_new_tokens`` of a chat completion that gives no ``max_tokens``.
        generation_defaults: other ``prepare_request`` defaults (e.g. ``{"repetition_penalty": 1.1}``);
            a request's own fields win.

    Raises:
        ValueError: a bad batcher setting or ``media_response_format``.
    """
    if media_response_format not in ("data_url", "url"):
        raise ValueError(f"media_response_format must be 'data_url' or 'url', got {media_response_format!r}")
    limits = UploadLimits(
        max_bytes=int(max_upload_mb * 2**20),
        max_media_seconds=float(max_media_seconds),
        max_files=int(max_files),
    )
    remove: list[Path] = []
    if output_dir is None:
        root = Path(tempfile.mkdtemp(prefix="nextgpt-api-"))
        remove.append(root)
    else:
        root = Path(output_dir)
        root.mkdir(parents=True, exist_ok=True)
    work = root / f"run-{secrets.token_hex(4)}"
    remove.append(work)
    disk = int(max_disk_mb * 2**20) if max_disk_mb is not None else None
    half = disk // 2 if disk is not None else None
    state = ApiState(
        model=model,
        model_name=model_name or str(getattr(getattr(model, "config", None), "name", None) or "nextgpt"),
        limits=limits,
        batcher=Batcher(
            model,
            batch_window_ms=batch_window_ms,
            max_batch=max_batch,
            max_queue=max_queue,
            run_kwargs={"overlap_media": True} if overlap_media else None,
        ),
        media=MediaStore(work / "media", max_bytes=half, ttl_s=media_ttl_s),
        files=FileStore(work / "files", max_bytes=half, ttl_s=media_ttl_s),
        work_root=work / "requests",
        defaults={"max_new_tokens": int(max_tokens), **dict(generation_defaults or {})},
        media_response_format=media_response_format,
        # every part of every message at the upload limit, base64 (4/3) plus 1 MiB of text
        max_request_bytes=int(limits.max_bytes * limits.max_files * 4 / 3 + 2**20) * 4,
        remove_on_close=remove,
    )
    state.work_root.mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        state.close()

    app = FastAPI(title="nextgpt OpenAI-compatible API", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.nextgpt = state

    def error_response(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    def api_route(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except ApiError as err:
                return error_response(err)
            except (InputError, ConfigError) as exc:
                return error_response(ApiError(400, str(exc), code="invalid_value"))
            except Exception:
                logger.exception("unexpected error in %s", fn.__name__)
                return error_response(
                    ApiError(500, "The server had an error processing your request", code="internal_error")
                )

        return wrapper

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc):  # unknown route, wrong method
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return JSONResponse(
            error_body(message, type="invalid_request_error" if exc.status_code < 500 else "server_error"),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def server_error(_request, exc):
        logger.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
        return JSONResponse(
            error_body("The server had an error processing your request", type="server_error"),
            status_code=500,
        )

    async def read_body(request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(
                413,
                f"the request body is above the limit of {limit / 2**20:.0f} MB",
                code="payload_too_large",
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413,
                    f"the request body is above the limit of {limit / 2**20:.0f} MB",
                    code="payload_too_large",
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(request: Request) -> Any:
        raw = await read_body(request, state.max_request_bytes)
        try:
            return json.loads(raw, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None

    def media_part(
        modality: Modality, item: Any, rate: float | None, fmt: str, base_url: str
    ) -> dict[str, Any]:
        data = encode_media(modality, item, rate)
        ext, mime = OUTPUT_FORMATS[modality]
        url = f"{base_url}v1/media/{state.media.put(data, ext)}" if fmt == "url" else data_url(data, mime)
        key = f"{modality.value}_url"
        return {"type": key, key: {"url": url}}

    def all_media(
        output: Any, fmt: str, base_url: str, skip: Mapping[Modality, int] | None = None
    ) -> list[dict[str, Any]]:
        parts = []
        for modality in (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO):
            items = output.media.get(modality, [])[(skip or {}).get(modality, 0) :]
            parts += [media_part(modality, item, output.rates.get(modality), fmt, base_url) for item in items]
        return parts

    # -------------------------------------------------------------------------------------- routes

    def model_object() -> dict[str, Any]:
        return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "nextgpt"}

    @app.get("/v1/models")
    @api_route
    async def list_models() -> Any:
        return {"object": "list", "data": [model_object()]}

    @app.get("/v1/models/{model_id:path}")
    @api_route
    async def get_model(model_id: str) -> Any:
        state.check_model(model_id)
        return model_object()

    @app.get("/health")
    @api_route
    async def health() -> Any:
        b = state.batcher
        return {
            "status": "ok",
            "model": state.model_name,
            "pending": b.pending,
            "batches": b.batches,
            "requests": b.requests,
        }

    @app.post("/v1/chat/completions")
    @api_route
    async def chat_completions(request: Request) -> Any:
        body = s.parse(s.ChatCompletionRequest, await read_json(request))
        state.check_model(body.model)
        kwargs = chat_kwargs(body, state.defaults)
        folder = state.new_folder()
        try:
            inputs = await run_in_threadpool(chat_inputs, body.messages, folder, state.limits, state.files)
            req = await run_in_threadpool(state.prepare, inputs, kwargs)
            run = _Run(state, req, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        fmt = body.media_response_format or state.media_response_format
        base_url = str(request.base_url)
        cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        max_new = kwargs.get("max_new_tokens")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            gen = stream_chat(run, req, cid, created, fmt, base_url, max_new, include_usage)
            return StreamingResponse(
                gen,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        output = await run.result(request)
        media = await run_in_threadpool(all_media, output, fmt, base_url)
        message: dict[str, Any] = {"role": "assistant", "content": output.text}
        if media:
            message["media"] = media
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": state.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": _finish_reason(output, max_new),
                    "logprobs": None,
                }
            ],
            "usage": _usage(req, output),
        }

    async def stream_chat(
        run: _Run,
        req: Any,
        cid: str,
        created: int,
        fmt: str,
        base_url: str,
        max_new: int | None,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": state.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }

        finished = False
        try:
            yield _sse(chunk({"role": "assistant", "content": ""}))
            sent, emitted = "", Counter[Modality]()
            async for kind, payload in run.events():
                if kind == "event":
                    if payload.kind == "text" and payload.text:
                        sent += payload.text
                        yield _sse(chunk({"content": payload.text}))
                    elif payload.kind == "media":
                        modality = Modality(payload.modality)
                        part = await run_in_threadpool(
                            media_part, modality, payload.media, payload.rate, fmt, base_url
                        )
                        emitted[modality] += 1
                        yield _sse(chunk({"media": [part]}))
                    elif payload.kind == "progress" and payload.progress is not None:
                        yield f": {payload.progress.describe()}\n\n"  # an SSE comment: clients skip it
                elif kind == "error":
                    yield _sse(_run_error(payload).body())
                else:
                    output = payload
                    if output.text.startswith(sent) and len(output.text) > len(sent):
                        yield _sse(chunk({"content": output.text[len(sent) :]}))
                    rest = await run_in_threadpool(all_media, output, fmt, base_url, emitted)
                    if rest:
                        yield _sse(chunk({"media": rest}))
                    yield _sse(chunk({}, _finish_reason(output, max_new)))
                    if include_usage:
                        usage = chunk({})
                        usage["choices"], usage["usage"] = [], _usage(req, output)
                        yield _sse(usage)
            finished = True
            yield _sse("[DONE]")
        except Exception:
            logger.exception("streaming a completion failed")
            finished = True
            yield _sse(error_body("The server had an error while streaming the answer", type="server_error"))
            yield _sse("[DONE]")
        finally:
            if not finished:  # the client went away (the generator was closed or cancelled)
                run.job.cancel()

    @app.post("/v1/images/generations")
    @api_route
    async def images_generations(request: Request) -> Any:
        body = s.parse(s.ImageGenerationRequest, await read_json(request))
        state.check_model(body.model)
        kwargs = [image_kwargs(body, state.defaults, i) for i in range(body.n)]
        reqs = [await run_in_threadpool(state.prepare, body.prompt, kw) for kw in kwargs]
        runs: list[_Run] = []
        try:
            runs = [_Run(state, r, None) for r in reqs]
            outputs = await asyncio.gather(*(r.result(request) for r in runs))
        except BaseException:
            for r in runs:
                r.job.cancel()
            raise
        fmt = "url" if body.response_format == "url" else "b64"
        base_url = str(request.base_url)

        def encode(output: Any) -> dict[str, Any]:
            if not output.images:
                raise ApiError(500, "the model produced no image", code="internal_error")
            png = encode_media(Modality.IMAGE, output.images[0], None)
            if fmt == "url":
                return {"url": f"{base_url}v1/media/{state.media.put(png, '.png')}"}
            import base64

            return {"b64_json": base64.b64encode(png).decode("ascii")}

        data = [await run_in_threadpool(encode, out) for out in outputs]
        first = outputs[0].images[0]
        return {
            "created": int(time.time()),
            "data": data,
            "output_format": "png",
            "size": f"{first.width}x{first.height}",
        }

    # ---------------------------------------------------------------------------------------- files

    @app.post("/v1/files")
    @api_route
    async def upload_file(request: Request) -> Any:
        from starlette.requests import Request as StarletteRequest

        raw = await read_body(request, state.limits.max_bytes + 2**20)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        try:
            form = await StarletteRequest(request.scope, replay).form(max_files=1, max_fields=8)
        except AssertionError:  # python-multipart missing
            raise ApiError(
                501, "file uploads need python-multipart on the server", code="not_implemented"
            ) from None
        except Exception as exc:
            raise ApiError(
                400, f"expected a multipart/form-data body with a 'file' field ({exc})", code="invalid_form"
            ) from None
        upload = form.get("file")
        purpose = form.get("purpose")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "file: missing (send multipart/form-data with a 'file' field)", param="file")
        data = await upload.read()
        if len(data) > state.limits.max_bytes:
            raise ApiError(
                413,
                f"file: above the upload limit of {state.limits.max_bytes / 2**20:g} MB",
                param="file",
                code="payload_too_large",
            )
        name = upload.filename or "upload"
        record = await run_in_threadpool(
            state.files.add,
            data,
            name,
            state.limits,
            purpose=purpose if isinstance(purpose, str) else "user_data",
        )
        return record.as_object()

    @app.get("/v1/files")
    @api_route
    async def list_files() -> Any:
        return {"object": "list", "data": [f.as_object() for f in state.files.list()]}

    @app.get("/v1/files/{file_id}")
    @api_route
    async def get_file(file_id: str) -> Any:
        record = state.files.get(file_id)
        if record is None:
            raise ApiError(404, f"No such file: {file_id}", param="file_id", code="file_not_found")
        return record.as_object()

    @app.delete("/v1/files/{file_id}")
    @api_route
    async def delete_file(file_id: str) -> Any:
        if not state.files.delete(file_id):
            raise ApiError(404, f"No such file: {file_id}", param="file_id", code="file_not_found")
        return {"id": file_id, "object": "file", "deleted": True}

    @app.get("/v1/media/{name}")
    @api_route
    async def get_media(name: str) -> Response:
        path = state.media.path(name)
        if path is None or not path.is_file():
            raise ApiError(404, "no such media file (unknown or expired)", code="not_found")
        mime = next(m for e, m in OUTPUT_FORMATS.values() if path.suffix == e)
        return FileResponse(path, media_type=mime)

    return app


class ApiServer:
    """A running :func:`serve_api` server (``block=False``): its ``url`` (``http://host:port``), the
    ``app`` and ``stop()`` (stops the server, then closes the app)."""

    def __init__(self, app: FastAPI, server: Any, thread: threading.Thread | None) -> None:
        self.app, self._server, self._thread = app, server, thread

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose for ``port=0``)."""
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``http://host:port``."""
        host = self._server.config.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, then close the app (batcher, folders)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.app.state.nextgpt.close()


def serve_api(
    model: NextGPT,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    block: bool = True,
    log_level: str = "info",
    **build_kwargs: Any,
) -> ApiServer:
    """Serve :func:`build_api` for ``model`` with uvicorn (``nextgpt serve --api``).

    Args:
        model: the model to serve.
        host: interface to bind; ``127.0.0.1`` (default) keeps the API on this machine (there is no
            authentication).
        port: TCP port (0: any free port; see :attr:`ApiServer.port`).
        block: serve until interrupted (SIGINT / SIGTERM), then clean up; ``False``: serve from a
            background thread and return once it listens.
        log_level: uvicorn's log level.
        **build_kwargs: :func:`build_api`'s options.

    Raises:
        ImportError: fastapi or uvicorn is not installed.
        RuntimeError: the server did not start (port in use, ...).
    """
    app = build_api(model, **build_kwargs)
    try:
        import uvicorn
    except ImportError as exc:
        app.state.nextgpt.close()
        raise ImportError(f"the HTTP API needs uvicorn: {INSTALL_HINT}") from exc
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving the API on %s: it is reachable from other machines, without authentication", host
        )
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if block:
        try:
            server.run()
        finally:
            app.state.nextgpt.close()
        return ApiServer(app, server, None)
    thread = threading.Thread(target=server.run, name="nextgpt-api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            app.state.nextgpt.close()
            raise RuntimeError(f"the API server did not start on {host}:{port}")
        time.sleep(0.02)
    handle = ApiServer(app, server, thread)
    logger.info("serving %s at %s/v1", app.state.nextgpt.model_name, handle.url)
    return handle


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ApiServer", "ApiState", "build_api", "serve_api"]
