"""The ``nextgpt`` command line: every entry point of the library, one table of subcommands.

:data:`COMMANDS` maps each subcommand to its function, its one-line help and the function that
declares its arguments (a :class:`Group` holds nested subcommands: ``nextgpt data convert``).
``nextgpt --help`` and ``nextgpt COMMAND --help`` list them with their options; ``python -m
nextgpt.cli`` is the same program. The subcommands: ``generate``, ``chat``, ``import-legacy``,
``serve`` (the web chat, :mod:`nextgpt.web`), ``demo`` (``make demo``, :mod:`nextgpt.demo`),
``data convert``, ``data demo``, ``cache`` and ``train``.

Errors print one line (the typed error's message) and exit non-zero; ``--verbose`` (before or after
the subcommand) shows the traceback and debug logging.

``nextgpt chat`` survives bad input: ``/image``, ``/audio`` and ``/video`` decode the file when it is
attached and refuse a bad one with its error (nothing is attached); any error in a turn (a typed error
or any other exception) prints one ``error:`` line, the failed turn is not added to the history and
the pending attachments are dropped, and the chat goes on. EOF and ``/quit`` end the chat; Ctrl-C ends
it with ``interrupted`` (exit status 130).

``nextgpt serve`` carries every option of :func:`nextgpt.web.serve`, with its defaults: it keeps each
chat to its last 8 rounds, closes sessions idle for ``--session-ttl-minutes`` (60), keeps all
sessions' files under ``--max-disk-mb`` (2048) and checks uploads against ``--max-upload-mb`` and
``--max-media-seconds``; on SIGTERM/SIGINT it removes the sessions' files. ``nextgpt serve --api``
serves the OpenAI-compatible HTTP API instead (:func:`nextgpt.api.serve_api`, port 8000), batching
requests (``--batch-window-ms``, ``--max-batch``) and keeping the same upload limits; there the TTL
and disk limit bound the answers' media files and uploaded files.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from nextgpt.errors import NextGPTError

logger = logging.getLogger("nextgpt.cli")

#: The preset a command builds when neither ``--preset`` nor ``--model`` is given.
DEFAULT_PRESET = "small"


# ---------------------------------------------------------------------------------------- argument sets


def _preset_arg(p: argparse.ArgumentParser, default: str, *, group=None) -> None:
    from nextgpt.config import list_presets

    (group or p).add_argument(
        "--preset", default=default, help=f"preset name ({', '.join(list_presets())}); default {default}"
    )


def _override_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)"
    )


def _model_args(p: argparse.ArgumentParser) -> None:
    """The model a command builds: ``--preset`` or ``--model``, overrides, device."""
    g = p.add_mutually_exclusive_group()
    _preset_arg(p, DEFAULT_PRESET, group=g)
    g.add_argument("--model", default=None, help="a directory written by save_pretrained / training")
    _override_arg(p)
    p.add_argument("--device", default="cpu")


def _decoder_args(p: argparse.ArgumentParser) -> None:
    """The generation controls of ``generate`` and ``chat``."""
    p.add_argument(
        "--modalities",
        default=None,
        help="comma-separated outputs, e.g. text,image (default: the model decides)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the decoder's config)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--num-frames", type=int, default=None)
    p.add_argument("--audio-seconds", type=float, default=None)


def _check_model_args(args) -> None:
    if args.model and args.override:
        raise NextGPTError("--override applies to presets; a saved model carries its own config")


def _load_model(args):
    from nextgpt.model import NextGPT

    _check_model_args(args)
    if args.model:
        return NextGPT.from_pretrained(args.model, device=args.device)
    return NextGPT.from_preset(args.preset, args.override, device=args.device)


def _generate_kwargs(args) -> dict:
    return {
        "modalities": args.modalities.split(",") if args.modalities else None,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.sample,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "height": args.height,
        "width": args.width,
        "num_frames": args.num_frames,
        "audio_length_in_s": args.audio_seconds,
        "progress": True,
    }


def _media_parts(args) -> list:
    from nextgpt.media import Audio, Video

    parts: list = [Path(p) for p in args.image or []]
    parts += [Audio(p) for p in args.audio or []]
    parts += [Video(p) for p in args.video or []]
    return parts


# ---------------------------------------------------------------------------------------- commands


def cmd_generate(args) -> int:
    """``nextgpt generate``: answer one prompt (input files checked before the model loads); print the
    text and the paths of the saved media."""
    from nextgpt.errors import InputError

    for kind, paths in (("image", args.image), ("audio", args.audio), ("video", args.video)):
        for path in paths or []:
            if not Path(path).is_file():  # fail before a (possibly minutes-long) model load
                raise InputError(f"{kind} file not found: '{path}'")
    model = _load_model(args)
    out = model.generate([*_media_parts(args), args.prompt], **_generate_kwargs(args))
    print(out.text)
    for path in out.save(args.out, prefix=args.prefix):
        if path.suffix != ".txt":
            print(f"saved {path}")
    return 0


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--image", action="append", help="input image (repeatable)")
    p.add_argument("--audio", action="append", help="input sound (repeatable)")
    p.add_argument("--video", action="append", help="input video (repeatable)")
    p.add_argument("--out", default="outputs", help="where media are saved")
    p.add_argument("--prefix", default="output")
    _model_args(p)
    _decoder_args(p)


CHAT_HELP = """commands: /image PATH  /audio PATH  /video PATH  attach media to the next message
          /modalities text,image  set outputs (/modalities auto = the model decides)
          /save DIR  save the last reply's media   /reset  clear history   /quit"""


def _one_line(exc: BaseException) -> str:
    """An exception as one line: the typed error's message, or ``Type: message`` for any other."""
    text = str(exc) if isinstance(exc, NextGPTError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
    return " ".join(text.split()) or type(exc).__name__


def _attachment(cmd: str, path: Path):
    """The checked input part for ``/image``, ``/audio`` or ``/video`` PATH: the file is decoded now
    with the loaders ``generate`` uses, so a bad file is refused here instead of failing every later
    message. Raises :class:`InputError` (or whatever a loader raised)."""
    from nextgpt.encoders import load_audio, load_image, preprocess_video
    from nextgpt.errors import InputError
    from nextgpt.media import Audio, Video

    if not path.is_file():
        raise InputError(f"no such file: {path}")
    if cmd == "/image":
        load_image(path)
        return path
    if cmd == "/audio":
        load_audio(path)
        return Audio(path)
    preprocess_video(Video(path), size=32)  # decodes the frames the encoder will read
    return Video(path)


def cmd_chat(args, stdin=None) -> int:
    """The terminal chat loop.

    An attachment is checked when attached (a bad one is refused with its error); whatever a turn
    raises (a typed error or any other exception) prints one ``error:`` line, the failed turn stays out
    of the history and the pending attachments are dropped; the chat goes on. EOF and ``/quit`` end it;
    Ctrl-C ends it through :func:`main` (``interrupted``, exit status 130).
    """
    stdin = stdin or sys.stdin
    model = _load_model(args)
    kwargs = _generate_kwargs(args)
    history: list[dict] = []
    pending: list = []
    last = None
    print(f"nextgpt chat ({model.config.name}). {CHAT_HELP}")
    while True:
        print("> ", end="", flush=True)
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            arg = arg.strip()
            try:
                if cmd == "/quit":
                    break
                elif cmd in ("/image", "/audio", "/video"):
                    path = Path(arg).expanduser()
                    try:
                        part = _attachment(cmd, path)
                    except Exception as exc:
                        logger.debug("attachment %s refused", path, exc_info=True)
                        print(f"error: {_one_line(exc)} (not attached)")
                        continue
                    pending.append(part)
                    print(f"attached {path.name}")
                elif cmd == "/modalities":
                    kwargs["modalities"] = None if arg in ("", "auto") else arg.split(",")
                    print(f"outputs: {kwargs['modalities'] or 'model decides'}")
                elif cmd == "/save":
                    if last is None:
                        print("nothing to save yet")
                    else:
                        for p in last.save(arg or "outputs/chat"):
                            print(f"saved {p}")
                elif cmd == "/reset":
                    history, pending = [], []
                    print("history cleared")
                else:
                    print(CHAT_HELP)
            except Exception as exc:
                logger.debug("command %s failed", cmd, exc_info=True)
                print(f"error: {_one_line(exc)}")
            continue
        user = {"role": "user", "content": [*pending, line]}
        attached, pending = len(pending), []  # used by this turn, whatever happens to it
        try:
            last = model.generate([*history, user], **kwargs)
        except Exception as exc:  # not KeyboardInterrupt: Ctrl-C still ends the chat
            logger.debug("turn failed", exc_info=True)
            dropped = f" ({attached} attachment(s) dropped)" if attached else ""
            print(f"error: {_one_line(exc)}{dropped}")
            continue
        history += [user, {"role": "assistant", "content": last.text or "(media)"}]
        print(last.text)
        media = len(last.images) + len(last.audios) + len(last.videos)
        if media:
            print(
                f"[{len(last.images)} image(s), {len(last.audios)} audio, {len(last.videos)} video(s); /save DIR to write them]"
            )
    return 0


def _chat_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    _decoder_args(p)


def cmd_import_legacy(args) -> int:
    """``nextgpt import-legacy``: convert an official NExT-GPT checkpoint and save it with
    ``save_pretrained`` under ``--out``."""
    from nextgpt.model import NextGPT

    model = NextGPT.from_legacy_checkpoint(args.checkpoint, preset=args.preset, overrides=args.override)
    out = model.save_pretrained(args.out)
    print(f"imported {args.checkpoint} -> {out} (load with NextGPT.from_pretrained)")
    return 0


def _import_legacy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="directory for the imported model (save_pretrained format)")
    _preset_arg(p, "nextgpt-7b-legacy")
    _override_arg(p)


def cmd_serve(args) -> int:
    """``nextgpt serve``: run :func:`nextgpt.web.serve` (the web chat) or, with ``--api``,
    :func:`nextgpt.api.serve_api` (the OpenAI-compatible HTTP API) with the command line's options until
    it is stopped."""
    from nextgpt import web

    _check_model_args(args)  # before the model load, as generate and chat do
    if args.api:
        if args.share:
            raise NextGPTError("--share is for the web chat; the API serves on --host/--port only")
        from nextgpt.api import serve_api

        model = _load_model(args)
        serve_api(
            model,
            host=args.host,
            port=args.port if args.port_given else API_DEFAULT_PORT,
            model_name=args.served_model_name,
            max_upload_mb=args.max_upload_mb,
            max_media_seconds=args.max_media_seconds,
            batch_window_ms=args.batch_window_ms,
            max_batch=args.max_batch,
            output_dir=args.output_dir,
            media_ttl_s=args.session_ttl_minutes * 60,
            max_disk_mb=args.max_disk_mb,
        )
        return 0
    web.serve(
        preset=args.preset,
        model_dir=args.model,
        overrides=args.override,
        device=args.device,
        host=args.host,
        port=args.port,
        share=args.share,
        max_upload_mb=args.max_upload_mb,
        max_media_seconds=args.max_media_seconds,
        output_dir=args.output_dir,
        session_ttl_s=args.session_ttl_minutes * 60,
        max_total_mb=args.max_disk_mb,
    )
    return 0


#: ``nextgpt serve --api``'s default port (vLLM's); the web chat's is :data:`nextgpt.web.DEFAULT_PORT`.
API_DEFAULT_PORT = 8000
#: ``nextgpt serve --api``'s batching defaults (:mod:`nextgpt.api.batcher`; kept here so that ``--help``
#: imports neither fastapi nor torch).
API_BATCH_WINDOW_MS = 20.0
API_MAX_BATCH = 8


class _GivenPort(argparse.Action):
    """``--port``, remembering that it was given (``args.port_given``): the web chat and the API have
    different default ports."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.port_given = True


def _serve_args(p: argparse.ArgumentParser) -> None:
    from nextgpt import web  # light: neither gradio nor torch

    _model_args(p)
    p.add_argument(
        "--host",
        default=web.DEFAULT_HOST,
        help=f"interface to bind (default {web.DEFAULT_HOST}: this machine only; 0.0.0.0 exposes the "
        "demo to the network, without authentication)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=web.DEFAULT_PORT,
        action=_GivenPort,
        help=f"TCP port (default {web.DEFAULT_PORT}; with --api {API_DEFAULT_PORT})",
    )
    p.set_defaults(port_given=False)
    p.add_argument("--share", action="store_true", help="ask Gradio for a public link (needs the internet)")
    p.add_argument(
        "--api",
        action="store_true",
        help="serve the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/images/generations, "
        "/v1/models; docs/API.md) instead of the web chat",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=API_BATCH_WINDOW_MS,
        help="--api: how long to wait for more requests to batch with the first one "
        f"(default {API_BATCH_WINDOW_MS:g})",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=API_MAX_BATCH,
        help=f"--api: most requests generated together (default {API_MAX_BATCH}; 1: no batching)",
    )
    p.add_argument(
        "--served-model-name",
        default=None,
        help="--api: the model name clients send (default: the config's name, e.g. small)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=web.DEFAULT_MAX_UPLOAD_MB,
        help=f"per-file upload limit in MB (default {web.DEFAULT_MAX_UPLOAD_MB:g})",
    )
    p.add_argument(
        "--max-media-seconds",
        type=float,
        default=web.DEFAULT_MAX_MEDIA_SECONDS,
        help=f"duration limit of uploaded audio and video in seconds (default {web.DEFAULT_MAX_MEDIA_SECONDS:g})",
    )
    p.add_argument(
        "--session-ttl-minutes",
        type=float,
        default=web.DEFAULT_SESSION_TTL_S / 60,
        help="close chat sessions idle this long and delete their files (--api: how long answers' media "
        f"files and uploaded files are kept) (default {web.DEFAULT_SESSION_TTL_S / 60:g})",
    )
    p.add_argument(
        "--max-disk-mb",
        type=float,
        default=web.DEFAULT_MAX_TOTAL_BYTES / 2**20,
        help="size limit of all sessions' files together; least recently used idle sessions are "
        "closed first, then uploads are refused (--api: of answers' media files and uploaded files, "
        f"oldest removed first) (default {web.DEFAULT_MAX_TOTAL_BYTES / 2**20:g})",
    )
    p.add_argument(
        "--output-dir",
        default=None,
        help="where the sessions' files go (default: a temporary folder, removed at exit)",
    )


def cmd_demo(args) -> int:
    """``nextgpt demo``: :func:`nextgpt.demo.run_demo` on ``--preset``."""
    from nextgpt.demo import run_demo

    run_demo(args.preset, out=args.out, seed=args.seed)
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    _preset_arg(p, DEFAULT_PRESET)
    p.add_argument("--out", default="outputs/demo", help="where the generated media are saved")
    p.add_argument("--seed", type=int, default=0)


def cmd_data_convert(args) -> int:
    """``nextgpt data convert``: convert an upstream JSON format into shards; print the report."""
    from nextgpt.stages.data.convert import convert

    report = convert(
        args.format, args.input, args.media_dir, args.out, max_per_shard=args.max_per_shard, split=args.split
    )
    print(report.summary() if hasattr(report, "summary") else report)
    return 0


def _data_convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "format", help="cc3m, webvid, audiocap, t2m, mosit, llava, alpaca, videochat, llmbind, refcoco"
    )
    p.add_argument("--input", required=True, help="the upstream JSON file (refcoco: its refs(...).p)")
    p.add_argument("--media-dir", default=None, help="folder holding the media the JSON names")
    p.add_argument("--out", required=True)
    p.add_argument("--max-per-shard", type=int, default=1000)
    p.add_argument("--split", default=None, help="refcoco: the split to convert (default train; all)")


def cmd_data_demo(args) -> int:
    """``nextgpt data demo``: build the demo dataset under ``--out``; print the shards of each kind."""
    from nextgpt.stages.data.demo import build_demo_dataset

    written = build_demo_dataset(args.out, seed=args.seed)
    for kind, paths in written.items():
        print(f"{kind}: {len(paths)} shard(s) in {Path(args.out) / kind}")
    return 0


def _data_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="data/demo")
    p.add_argument("--seed", type=int, default=0)


def cmd_cache(args) -> int:
    """``nextgpt cache``: build a feature cache (:func:`~nextgpt.stages.cache.build_cache_report`);
    print what this build wrote and what the cache holds. ``nextgpt cache index``: ImageBind-LLM's
    visual cache of the stage's images (:func:`~nextgpt.visual_cache.build_visual_cache`)."""
    if args.what == "index":
        from nextgpt import NextGPT
        from nextgpt.stages.datamodule import stage_shards
        from nextgpt.visual_cache import build_visual_cache

        model = NextGPT.from_preset(args.preset, args.override, device=args.device or "cpu")
        shards = stage_shards(
            args.data, args.stage, list(model.config.training.stage_config(args.stage).datasets)
        )
        path = build_visual_cache(model, shards, args.out, batch_size=args.batch_size)
        print(
            f"visual cache: {json.loads((path / 'cache.json').read_text())['count']} image embeddings in {path}"
        )
        return 0
    from nextgpt.stages.cache import build_cache_report

    report = build_cache_report(
        args.what,
        args.data,
        args.out,
        preset=args.preset,
        overrides=args.override,
        stage=args.stage,
        batch_size=args.batch_size,
        device=args.device,
        num_processes=args.num_processes,
    )
    share = f" (rank {report.rank} of {report.world_size})" if report.world_size > 1 else ""
    print(f"{report.what} cache for stage {report.stage}: {report.path}")
    print(
        f"this build{share}: {report.shards} shard(s); {report.written_shards} written "
        f"({report.written_samples} samples), {report.skipped_shards} up to date ({report.skipped_samples} samples)"
    )
    if report.index_written:
        print(f"the cache holds {report.entries} entries, {report.samples} samples")
    return 0


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "what",
        choices=["encoder", "captions", "index"],
        help="encoder / captions: training feature caches; index: ImageBind-LLM's visual cache",
    )
    p.add_argument("--data", required=True, help="folder of shards")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--stage",
        type=int,
        default=1,
        choices=[1, 2, 3],
        help="the stage whose samples to cache (encoder: 1, 3; captions: 2, 3)",
    )
    _preset_arg(p, "tiny")
    _override_arg(p)
    p.add_argument(
        "--device",
        default=None,
        help="where the frozen models run: cpu, cuda, cuda:1, ... (cuda: cuda:$LOCAL_RANK under torchrun)",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help="split the shards over N local processes (cuda with several GPUs: one per GPU); "
        "under torchrun/SLURM, RANK and WORLD_SIZE split them over the launched processes",
    )
    p.add_argument("--batch-size", type=int, default=16, help="items per frozen-model call")


def cmd_train(args) -> int:
    """``nextgpt train``: run one stage (:func:`~nextgpt.stages.train.train`); print where the model
    was saved."""
    from nextgpt.stages.train import train

    result = train(
        stage=args.stage,
        preset=args.preset,
        data=args.data,
        out=args.out,
        overrides=args.override,
        init_from=args.init_from,
        resume=not args.no_resume,
    )
    print(f"stage {args.stage} finished: model saved in {result}")
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", type=int, required=True, choices=[1, 2, 3])
    _preset_arg(p, "tiny")
    p.add_argument("--data", default=None, help="data folder (default: the config's training.data_dir)")
    p.add_argument("--out", default=None, help="run folder (default: the config's training.output_dir)")
    p.add_argument("--init-from", default=None, help="a previous stage's model directory")
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if the run folder has a checkpoint"
    )
    _override_arg(p)


def cmd_eval(args) -> int:
    """``nextgpt eval TASK``: evaluate a model on one benchmark (docs/EVAL.md); ``--list`` lists tasks."""
    from nextgpt.eval.tasks import TASKS, get_task

    if args.list or not args.task:
        if not args.list:
            raise NextGPTError("name a task (nextgpt eval TASK ...) or pass --list")
        for task in TASKS.values():
            print(f"{task.name:<18} {task.benchmark}; metrics {', '.join(task.metrics)}")
            print(f"{'':<18} {task.data_help}")
        return 0
    from nextgpt.eval.runner import EvalOptions, ExtractorPaths, prepare, run_task

    task = get_task(args.task)
    if not args.data:
        raise NextGPTError(f"--data is required: {task.data_help}")
    if not Path(args.data).is_file():  # fail before a (possibly minutes-long) model load
        from nextgpt.errors import InputError

        raise InputError(f"--data file not found: '{args.data}'")
    options = EvalOptions(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        audio_length_in_s=args.audio_seconds,
        num_frames=args.num_frames,
    )
    extractors = ExtractorPaths(
        inception=args.inception, clip=args.clip, panns=args.panns, vggish=args.vggish, device=args.device
    )
    where = {"media": args.media, "answers": args.answers, "split": args.split, "pattern": args.pattern}
    metrics = args.metrics.split(",") if args.metrics else None
    # data, media, Java and extractor weights are checked before the (possibly minutes-long) model load
    prepare(
        task.name,
        args.data,
        **where,
        limit=args.limit,
        metrics=metrics,
        options=options,
        extractors=extractors,
    )
    model = _load_model(args)

    def progress(done: int, n: int) -> None:
        end = "\n" if done == n else ""  # the metrics' own output starts on a new line
        print(f"\r{task.name}: {done}/{n} answered", end=end, file=sys.stderr, flush=True)

    result = run_task(
        task.name,
        model,
        args.data,
        args.out,
        model_name=args.model or f"preset:{args.preset}",
        **where,
        limit=args.limit,
        metrics=metrics,
        options=options,
        extractors=extractors,
        restart=args.restart,
        progress=progress,
    )
    for name, entry in result["metrics"].items():
        paper = ", ".join(f"{p['value']:g} ({p['table']})" for p in entry["paper"]) or "-"
        print(f"{name}: {entry['reported']:.4g}   paper: {paper}")
    print(f"results: {Path(args.out) / task.name / 'results.json'}")
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", nargs="?", help="the benchmark task (nextgpt eval --list)")
    p.add_argument("--list", action="store_true", help="list the tasks, their data files and metrics")
    _model_args(p)
    p.add_argument("--data", help="the task's annotation file (see --list)")
    p.add_argument("--media", default=None, help="the media folder (default: the annotation file's folder)")
    p.add_argument("--answers", default=None, help="VQAv2 / OK-VQA: the annotation json with the answers")
    p.add_argument("--split", default=None, help="Karpathy / MSR-VTT split (default: the task's, test)")
    p.add_argument(
        "--pattern", default=None, help="media file name pattern (VQA images, video QA, AudioCaps)"
    )
    p.add_argument(
        "--out", default="results", help="results folder (default results/); one subfolder per task"
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    p.add_argument("--metrics", default=None, help="comma-separated metrics (default: the task's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seed of sample i is seed + i (media tasks)")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the decoder's config)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--num-frames", type=int, default=None)
    p.add_argument("--audio-seconds", type=float, default=None)
    p.add_argument("--restart", action="store_true", help="discard this task's earlier answers in --out")
    for name, env, what in (
        ("inception", "NEXTGPT_INCEPTION", "FID Inception TorchScript (inception-2015-12-05.pt)"),
        ("clip", "NEXTGPT_CLIP", "CLIP folder (transformers format)"),
        ("panns", "NEXTGPT_PANNS_CNN14", "PANNs Cnn14 16 kHz checkpoint"),
        ("vggish", "NEXTGPT_VGGISH", "VGGish state dict"),
    ):
        p.add_argument(f"--{name}", default=None, help=f"{what}; default ${env}")


# ---------------------------------------------------------------------------------------- the table


class Command(NamedTuple):
    """One subcommand: what runs, its one-line help, the function that declares its arguments, and the
    logging level it runs at without ``--verbose``."""

    func: Callable[[argparse.Namespace], int]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    log_level: int = logging.INFO


class Group(NamedTuple):
    """Subcommands under one name (``nextgpt data convert``)."""

    help: str
    commands: dict[str, Command]


#: Every subcommand, in ``--help`` order.
COMMANDS: dict[str, Command | Group] = {
    "generate": Command(cmd_generate, "answer one prompt; prints the text and saves media", _generate_args),
    "chat": Command(cmd_chat, "multi-turn terminal chat", _chat_args),
    "import-legacy": Command(
        cmd_import_legacy, "import the official NExT-GPT pytorch_model.pt", _import_legacy_args
    ),
    "serve": Command(
        cmd_serve,
        "web chat demo (needs the [demo] extra: gradio); --api: OpenAI-compatible HTTP API ([api] extra)",
        _serve_args,
    ),
    "demo": Command(
        cmd_demo,
        "the main job on a preset (default small) end to end, saying what ran (make demo)",
        _demo_args,
        log_level=logging.WARNING,  # the demo prints what it built itself
    ),
    "data": Group(
        "training data: convert upstream formats, build the demo set",
        {
            "convert": Command(
                cmd_data_convert, "convert an upstream JSON format into webdataset shards", _data_convert_args
            ),
            "demo": Command(
                cmd_data_demo, "build the small demo dataset from media shipped by packages", _data_demo_args
            ),
        },
    ),
    "eval": Command(
        cmd_eval, "evaluate a model on a NExT-GPT benchmark (nextgpt eval --list; docs/EVAL.md)", _eval_args
    ),
    "cache": Command(
        cmd_cache, "precompute frozen features (encoder embeddings, caption targets)", _cache_args
    ),
    "train": Command(
        cmd_train,
        "train one stage (1 encoding alignment, 2 decoding alignment, 3 instruction tuning)",
        _train_args,
    ),
}


def _add_commands(
    parent: argparse.ArgumentParser,
    table: dict[str, Command | Group],
    dest: str,
    common: argparse.ArgumentParser,
) -> None:
    sub = parent.add_subparsers(dest=dest, required=True)
    for name, entry in table.items():
        p = sub.add_parser(name, help=entry.help, description=entry.help, parents=[common])
        if isinstance(entry, Group):
            _add_commands(p, entry.commands, f"{name.replace('-', '_')}_command", common)
        else:
            entry.arguments(p)
            p.set_defaults(func=entry.func, log_level=entry.log_level)


def build_parser() -> argparse.ArgumentParser:
    """The ``nextgpt`` argument parser: one subparser per entry of :data:`COMMANDS`."""
    ap = argparse.ArgumentParser(prog="nextgpt", description="Any-to-any multimodal LLMs (NExT-GPT style).")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    # -v/--verbose is accepted after the subcommand too (SUPPRESS keeps the top-level value otherwise)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    _add_commands(ap, COMMANDS, "command", common)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit status (2 after a
    typed error, 130 after Ctrl-C)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else args.log_level,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    if not args.verbose:  # third-party chatter stays out of the way of the answers
        import os
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # transformers resets its logger level
        for name in ("transformers", "diffusers", "httpx", "peft"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except NextGPTError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
