"""LLMBind's task-prompt outputs: task tags in the LLM's text, and the pipelines that render them.

In LLMBind's ``prompt`` mode the LLM writes a prompt between task tags, and the text goes to a
text-conditioned diffusion pipeline. Changing that pipeline needs no retraining: it is a path.

- ``<gen>..</gen>``: an image.
- ``<vid_cap>..</vid_cap>``: a video.
- ``<aud_cap>..</aud_cap>``: audio.
- ``<edit>..</edit>``: an instruction that edits the input image.

This module holds the parts that do not depend on the decoding loop:

- :func:`parse_task_spans` finds the tagged prompts in an answer. A tag opened and not closed runs
  to the end of the text, as when the token budget ran out, and is reported as unclosed.
- :class:`PromptPipeline` is any text-conditioned diffusers pipeline given by a local folder, such
  as SD 1.5, SD 2.x/XL, AudioLDM/AudioLDM2, Zeroscope or AnimateDiff. It is loaded once, on first
  use, and reused for every call after that. It renders a list of prompts in one call, one seeded
  generator per prompt.
- :class:`EditPipeline` is an instruction-editing pipeline (InstructPix2Pix) taking the input
  image and the parsed instruction.

With ``model.task_prompts`` set, the tags are added tokens of the LLM and ``generate`` renders
every span of an answer through these pipelines (``out.prompts`` holds the spans).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nextgpt.errors import ConfigError, InputError

#: task -> (opening tag, closing tag), as LLMBind names them
TASK_TAGS: dict[str, tuple[str, str]] = {
    "image": ("<gen>", "</gen>"),
    "video": ("<vid_cap>", "</vid_cap>"),
    "audio": ("<aud_cap>", "</aud_cap>"),
    "edit": ("<edit>", "</edit>"),
}


@dataclass(frozen=True)
class TaskSpan:
    """One tagged prompt of an answer: its task, the text between the tags (stripped), and whether
    its closing tag was written (``False``: the text ran out first)."""

    task: str
    text: str
    closed: bool


def parse_task_spans(text: str, tags: dict[str, tuple[str, str]] | None = None) -> list[TaskSpan]:
    """The tagged prompts of ``text``, in order.

    A span runs from an opening tag to the next closing tag of the same task. A span that is not
    closed runs to the next opening tag, or else to the end of the text, and has ``closed=False``.
    A closing tag that was never opened is ignored.
    """
    tags = TASK_TAGS if tags is None else tags
    opening = {open_tag: task for task, (open_tag, _) in tags.items()}
    spans: list[TaskSpan] = []
    i = 0
    while True:
        found = [(text.find(tag, i), tag) for tag in opening]
        found = [(pos, tag) for pos, tag in found if pos >= 0]
        if not found:
            return spans
        pos, tag = min(found)
        task = opening[tag]
        start = pos + len(tag)
        close = text.find(tags[task][1], start)
        next_open = min((p for p in (text.find(t, start) for t in opening) if p >= 0), default=-1)
        if close >= 0 and (next_open < 0 or close < next_open):
            spans.append(TaskSpan(task, text[start:close].strip(), True))
            i = close + len(tags[task][1])
        else:
            end = next_open if next_open >= 0 else len(text)
            spans.append(TaskSpan(task, text[start:end].strip(), False))
            i = end


def spans_from_ids(tokens: list[int], tag_ids: dict[str, tuple[int, int]], decode: Any) -> list[TaskSpan]:
    """The tagged prompts of generated token ids (the tags are added tokens): as
    :func:`parse_task_spans`, with each span's ids decoded by ``decode``."""
    opening = {pair[0]: task for task, pair in tag_ids.items()}
    spans: list[TaskSpan] = []
    task: str | None = None
    body: list[int] = []
    for token in [*tokens, None]:
        if task is not None and (token is None or token == tag_ids[task][1] or token in opening):
            spans.append(TaskSpan(task, decode(body).strip(), token == tag_ids[task][1]))
            task, body = None, []
            if token is not None and token not in opening:
                continue
        if token in opening:
            task = opening[token]
        elif task is not None and token is not None:
            body.append(token)
    return spans


def strip_task_tags(text: str, tags: dict[str, tuple[str, str]] | None = None) -> str:
    """``text`` without its task tags (the prompts stay, as the answer shows them)."""
    for open_tag, close_tag in (TASK_TAGS if tags is None else tags).values():
        text = text.replace(open_tag, "").replace(close_tag, "")
    return " ".join(text.split())


class PromptPipeline:
    """A text-conditioned diffusers pipeline from a local folder, loaded once on first use.

    Args:
        path: the pipeline folder (``model_index.json`` and its parts).
        modality: what it renders: ``image``, ``audio`` or ``video``.
        device: where it runs.
    """

    OUTPUT = {"image": "images", "audio": "audios", "video": "frames"}

    def __init__(self, path: str | os.PathLike, modality: str, device: str = "cpu") -> None:
        if modality not in self.OUTPUT:
            raise ConfigError(
                f"prompt pipeline modality must be one of {', '.join(self.OUTPUT)}, got {modality!r}"
            )
        self.path, self.modality, self.device = Path(path), modality, device
        self._pipe: Any = None
        self.loads = 0

    @property
    def pipe(self) -> Any:
        """The diffusers pipeline, loaded on first access (``local_files_only``)."""
        if self._pipe is None:
            from diffusers import DiffusionPipeline

            if not (self.path / "model_index.json").is_file():
                raise ConfigError(
                    f"{self.modality} prompt pipeline: no diffusers pipeline folder at '{self.path}'"
                )
            self._pipe = DiffusionPipeline.from_pretrained(str(self.path), local_files_only=True).to(
                self.device
            )
            self._pipe.set_progress_bar_config(disable=True)
            self.loads += 1
        return self._pipe

    def _generators(self, n: int, seed: int | None) -> list[Any] | None:
        import torch

        if seed is None:
            return None
        return [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(n)]

    def accepted_options(self) -> set[str]:
        """The keyword arguments the pipeline's call takes."""
        import inspect

        return set(inspect.signature(self.pipe.__call__).parameters)

    def media_rate(self) -> float | None:
        """Samples per second of what it renders: the vocoder's rate (audio), 8 fps (video)."""
        if self.modality == "audio":
            vocoder = getattr(self.pipe, "vocoder", None)
            return float(getattr(getattr(vocoder, "config", None), "sampling_rate", 16000))
        return 8.0 if self.modality == "video" else None

    def render(self, prompts: list[str], *, seed: int | None = None, **kwargs: Any) -> list[Any]:
        """One medium per prompt, in one pipeline call (prompt ``i`` seeded with ``seed + i``):
        PIL images, audio waveforms, or video frames."""
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InputError("render needs a non-empty list of prompt strings")
        out = self.pipe(prompt=list(prompts), generator=self._generators(len(prompts), seed), **kwargs)
        media = list(getattr(out, self.OUTPUT[self.modality]))
        if (
            self.modality == "video"
        ):  # float frames in [0, 1] -> uint8 [T, H, W, 3], as the soft decoders give
            import numpy as np

            media = [
                (np.clip(np.asarray(v, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8) for v in media
            ]
        return media


class EditPipeline(PromptPipeline):
    """An instruction-editing pipeline (InstructPix2Pix through diffusers) from a local folder."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu") -> None:
        super().__init__(path, "image", device)

    def edit(self, image: Any, instruction: str, *, seed: int | None = None, **kwargs: Any) -> Any:
        """``image`` edited by ``instruction`` (a PIL image)."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise InputError("edit needs a non-empty instruction")
        out = self.pipe(prompt=[instruction], image=image, generator=self._generators(1, seed), **kwargs)
        return out.images[0]
