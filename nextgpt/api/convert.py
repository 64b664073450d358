"""OpenAI request bodies -> what :meth:`NextGPT.prepare_request` takes.

:func:`chat_inputs` turns ``messages`` into the model's chat messages (media parts decoded, written to
the request's folder and checked like web uploads); :func:`chat_kwargs` and :func:`image_kwargs` map
the sampling and decoder fields to ``prepare_request``'s keyword arguments.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nextgpt.api import schemas as s
from nextgpt.api.errors import ApiError
from nextgpt.api.media import FileStore, decode_base64, decode_data_url, extension_for, save_checked
from nextgpt.modality import Modality
from nextgpt.web.uploads import UploadLimits

_URL_PARTS: dict[type, tuple[str, Modality]] = {
    s.ImageUrlPart: ("image_url", Modality.IMAGE),
    s.AudioUrlPart: ("audio_url", Modality.AUDIO),
    s.VideoUrlPart: ("video_url", Modality.VIDEO),
}
_MIME_PREFIX = {Modality.IMAGE: "image/", Modality.AUDIO: "audio/", Modality.VIDEO: "video/"}


def _text_only(content: str | list | None, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, s.TextPart):
            raise ApiError(
                400, f"{param}.{j}: only text parts are accepted in this message", param=f"{param}.{j}"
            )
        texts.append(part.text)
    return "".join(texts)


def _media_part(part: Any, param: str, folder: Path, limits: UploadLimits, files: FileStore | None) -> Any:
    """One media part as a ``generate`` input part (a checked file in ``folder``)."""
    if type(part) in _URL_PARTS:
        field, modality = _URL_PARTS[type(part)]
        where = f"{param}.{field}.url"
        mime, data = decode_data_url(getattr(part, field).url, max_bytes=limits.max_bytes, param=where)
        if mime is not None and not mime.startswith(_MIME_PREFIX[modality]):
            raise ApiError(400, f"{where}: a {field} part holds {mime}", param=where, code="invalid_media")
        ext = extension_for(mime, None, param=where)
        return save_checked(data, ext, folder, limits, param=where, expect=modality).as_part()
    if isinstance(part, s.InputAudioPart):
        where = f"{param}.input_audio"
        raw = part.input_audio.data
        if raw[:5].lower() == "data:":
            _, data = decode_data_url(raw, max_bytes=limits.max_bytes, param=f"{where}.data")
        else:
            data = decode_base64(raw, max_bytes=limits.max_bytes, param=f"{where}.data")
        fmt = part.input_audio.format.lower().lstrip(".")
        if not re.fullmatch(r"[a-z0-9]{1,8}", fmt):
            raise ApiError(400, f"{where}.format: unsupported audio format {fmt!r}", param=f"{where}.format")
        ext = extension_for(None, f"audio.{fmt}", param=f"{where}.format")
        return save_checked(data, ext, folder, limits, param=where, expect=Modality.AUDIO).as_part()
    if isinstance(part, s.FilePart):
        where = f"{param}.file"
        ref = part.file
        if (ref.file_id is None) == (ref.file_data is None):
            raise ApiError(400, f"{where}: give exactly one of file_id and file_data", param=where)
        if ref.file_id is not None:
            stored = files.get(ref.file_id) if files is not None else None
            if stored is None:
                raise ApiError(
                    404,
                    f"{where}.file_id: no file {ref.file_id!r} (unknown or expired)",
                    param=f"{where}.file_id",
                    code="file_not_found",
                )
            folder.mkdir(parents=True, exist_ok=True)
            copy = folder / f"{ref.file_id}{stored.upload.path.suffix}"
            shutil.copyfile(stored.upload.path, copy)  # the upload may be deleted while this request runs
            return type(stored.upload)(
                copy, stored.upload.name, stored.upload.modality, stored.upload.duration
            ).as_part()
        mime, data = decode_data_url(
            ref.file_data or "", max_bytes=limits.max_bytes, param=f"{where}.file_data"
        )
        ext = extension_for(mime, ref.filename, param=f"{where}.file_data")
        return save_checked(data, ext, folder, limits, param=where).as_part()
    raise ApiError(400, f"{param}: unsupported content part", param=param)  # pragma: no cover (schema)


def chat_inputs(
    messages: list[s.Message], folder: Path, limits: UploadLimits, files: FileStore | None = None
) -> list[dict[str, Any]]:
    """The chat messages ``generate`` takes for OpenAI ``messages``.

    ``system`` / ``developer`` messages (text) are joined and put before the first user message's
    text; ``assistant`` messages keep their text; a user message's media parts are decoded into
    ``folder`` and checked (:func:`~nextgpt.api.media.save_checked`), at most ``limits.max_files``
    per message.

    Raises:
        ApiError: 400 / 404 / 413 / 415 naming the part at fault.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        param = f"messages.{i}.content"
        if msg.role in ("system", "developer"):
            system.append(_text_only(msg.content, param))
        elif msg.role == "assistant":
            turns.append({"role": "assistant", "content": _text_only(msg.content, param)})
        else:
            content = msg.content
            if content is None:
                raise ApiError(400, f"{param}: a user message needs content", param=param)
            if isinstance(content, str):
                turns.append({"role": "user", "content": [content]})
                continue
            n_media = sum(not isinstance(p, s.TextPart) for p in content)
            if n_media > limits.max_files:
                raise ApiError(
                    400,
                    f"{param}: {n_media} media parts, above the limit of {limits.max_files} per message",
                    param=param,
                    code="too_many_files",
                )
            parts = [
                p.text if isinstance(p, s.TextPart) else _media_part(p, f"{param}.{j}", folder, limits, files)
                for j, p in enumerate(content)
            ]
            turns.append({"role": "user", "content": parts})
    if not turns or turns[-1]["role"] != "user":
        raise ApiError(400, "messages: the last message must be the user's", param="messages")
    if system:
        first = next(t for t in turns if t["role"] == "user")
        prefix = "\n\n".join(t for t in system if t)
        if prefix:
            first["content"] = [f"{prefix}\n\n", *first["content"]]
    return turns


def _set(kwargs: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        kwargs[key] = value


def chat_kwargs(body: s.ChatCompletionRequest, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``prepare_request`` keyword arguments for a chat completion (server ``defaults`` first).

    Sampling is on when ``temperature`` > 0 is given; without it (or with 0) decoding is greedy, so
    ``top_p`` / ``top_k`` matter only with a temperature.
    """
    if body.n not in (None, 1):
        raise ApiError(400, "n: only n=1 is supported", param="n")
    kw: dict[str, Any] = dict(defaults)
    _set(
        kw,
        "max_new_tokens",
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
    )
    _set(kw, "min_new_tokens", body.min_tokens)
    if body.temperature is not None:
        kw["do_sample"] = body.temperature > 0
        if body.temperature > 0:
            kw["temperature"] = body.temperature
    _set(kw, "top_p", body.top_p)
    _set(kw, "top_k", body.top_k)
    _set(kw, "repetition_penalty", body.repetition_penalty)
    _set(kw, "stop", [body.stop] if isinstance(body.stop, str) else body.stop)
    _set(kw, "seed", body.seed)
    _set(kw, "modalities", body.modalities)
    _set(kw, "negative_prompt", body.negative_prompt)
    if body.decoder_kwargs is not None:
        kw["decoder_kwargs"] = {**kw.get("decoder_kwargs", {}), **body.decoder_kwargs}
    return kw


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``"WxH"`` -> ``(width, height)``; ``None`` / ``"auto"`` -> ``None`` (the decoder's default)."""
    if size is None or size == "auto":
        return None
    m = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", size)
    if m is None:
        raise ApiError(
            400, f"size: expected 'WIDTHxHEIGHT' (e.g. '256x256') or 'auto', got {size!r}", param="size"
        )
    return int(m.group(1)), int(m.group(2))


#: Most images one ``/v1/images/generations`` call may ask for (OpenAI's limit).
MAX_IMAGES = 10


def image_kwargs(body: s.ImageGenerationRequest, defaults: Mapping[str, Any], index: int) -> dict[str, Any]:
    """``prepare_request`` keyword arguments for image ``index`` of an images call (seed + index)."""
    if not 1 <= body.n <= MAX_IMAGES:
        raise ApiError(400, f"n: must be in [1, {MAX_IMAGES}], got {body.n}", param="n")
    kw: dict[str, Any] = {k: v for k, v in defaults.items() if k in ("max_new_tokens", "repetition_penalty")}
    kw["modalities"] = ["image"]
    if body.seed is not None:
        kw["seed"] = body.seed + index
    _set(kw, "negative_prompt", body.negative_prompt)
    options: dict[str, Any] = {}
    size = parse_size(body.size)
    if size is not None:
        options["width"], options["height"] = size
    _set(options, "num_inference_steps", body.num_inference_steps)
    _set(options, "guidance_scale", body.guidance_scale)
    if options:
        kw["decoder_kwargs"] = {"image": options}
    return kw


__all__ = ["MAX_IMAGES", "chat_inputs", "chat_kwargs", "image_kwargs", "parse_size"]
