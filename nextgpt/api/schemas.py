"""Request bodies of the HTTP API as pydantic models (OpenAI's wire format plus nextgpt's fields).

Every model forbids unknown fields and is strict about JSON types (``"5"`` is not an integer, ``1``
is not a boolean): a request that does not fit is answered 400 with the field named (see
:func:`validation_error`). Ranges of the generation controls are checked by the model's own argument
checks (:meth:`NextGPT.prepare_request`), so the messages and limits are the library's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nextgpt.api.errors import ApiError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ------------------------------------------------------------------------------------ content parts


class UrlRef(_Strict):
    """``{"url": "data:<mime>;base64,..."}`` (``detail`` is accepted for OpenAI clients and ignored)."""

    url: str
    detail: str | None = None


class FileRef(_Strict):
    """A ``file`` part: an uploaded file's id (``POST /v1/files``) or the file inline as a data URL."""

    file_id: str | None = None
    file_data: str | None = None
    filename: str | None = None


class InputAudio(_Strict):
    """OpenAI's ``input_audio``: base64 bytes (no ``data:`` prefix needed) and their format."""

    data: str
    format: str


class TextPart(_Strict):
    """``{"type": "text", "text": "..."}``."""

    type: Literal["text"]
    text: str


class ImageUrlPart(_Strict):
    """``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``."""

    type: Literal["image_url"]
    image_url: UrlRef


class AudioUrlPart(_Strict):
    """``{"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,..."}}`` (vLLM's form)."""

    type: Literal["audio_url"]
    audio_url: UrlRef


class VideoUrlPart(_Strict):
    """``{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}`` (vLLM's form)."""

    type: Literal["video_url"]
    video_url: UrlRef


class InputAudioPart(_Strict):
    """``{"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}``."""

    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(_Strict):
    """``{"type": "file", "file": {"file_id": "file-..."}}`` or ``{"file_data": "data:...", "filename"}``."""

    type: Literal["file"]
    file: FileRef


ContentPart = Annotated[
    TextPart | ImageUrlPart | AudioUrlPart | VideoUrlPart | InputAudioPart | FilePart,
    Field(discriminator="type"),
]
MediaPart = ImageUrlPart | AudioUrlPart | VideoUrlPart | InputAudioPart | FilePart


class Message(_Strict):
    """One chat message. ``system`` / ``developer`` text is put before the first user message's text;
    an ``assistant`` message is text only (its ``media``, as this API returned them, is accepted and
    dropped: the model sees the answer's text)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    media: list[dict[str, Any]] | None = None
    refusal: str | None = None


class StreamOptions(_Strict):
    """``stream_options``: ``include_usage`` adds a last chunk with ``usage`` and no choices."""

    include_usage: bool = False


# ------------------------------------------------------------------------------------------ requests

Number = float | int


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions``. See ``docs/API.md`` for each field."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    min_tokens: int | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: int | None = None
    repetition_penalty: Number | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    user: str | None = None
    modalities: list[str] | None = None
    decoder_kwargs: dict[str, dict[str, Any]] | None = None
    negative_prompt: str | dict[str, str] | None = None
    media_response_format: Literal["data_url", "url"] | None = None


class ImageGenerationRequest(_Strict):
    """``POST /v1/images/generations``. See ``docs/API.md``."""

    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    seed: int | None = None
    user: str | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: Number | None = None


_PART_TAGS = frozenset({"text", "image_url", "audio_url", "video_url", "input_audio", "file"})
_TYPE_NAMES = frozenset({"str", "int", "float", "bool"})


def _loc(loc: tuple[Any, ...]) -> str:
    # pydantic puts union members in the location: "content.list[...].0.image_url.image_url.url" for
    # the parts' tagged union, "str" / "int" for a plain one. Keep the request's own path only.
    parts: list[str] = []
    skip_tag = False
    for item in loc:
        text = str(item)
        if isinstance(item, int):
            parts.append(text)
            continue
        if text.startswith(("list[", "dict[")) or text in _TYPE_NAMES or "[" in text:
            skip_tag = skip_tag or "tagged-union" in text
            continue
        if skip_tag and text in _PART_TAGS:
            skip_tag = False
            continue
        skip_tag = False
        parts.append(text)
    return ".".join(parts)


def validation_error(exc: ValidationError) -> ApiError:
    """A 400 :class:`ApiError` naming the field pydantic refused (of a union such as ``content``'s
    string-or-parts, the alternative that got furthest into the value)."""
    errors = exc.errors(include_url=False)
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    param = _loc(tuple(first.get("loc", ()))) or None
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    return ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")


def parse(model: type[BaseModel], data: Any) -> Any:
    """``model.model_validate(data)``, refusals as a 400 :class:`ApiError`."""
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


__all__ = [
    "AudioUrlPart",
    "ChatCompletionRequest",
    "ContentPart",
    "FilePart",
    "ImageGenerationRequest",
    "ImageUrlPart",
    "InputAudioPart",
    "MediaPart",
    "Message",
    "TextPart",
    "VideoUrlPart",
    "parse",
    "validation_error",
]
