"""Converters from the upstream NExT-GPT data formats (REFERENCE.md 1.5) to nextgpt shards.

``convert(format, input_path, media_dir, out_dir)`` reads one upstream JSON (or JSON-lines) file, finds
each record's media, checks that it decodes, and writes pair or conversation samples
(:mod:`.schema`) with :func:`.shards.write_samples`. Per-record problems never stop a conversion: the
record is skipped and counted in the :class:`ConvertReport` as *missing media* (the file is not
there), *unreadable media* (it is there but does not decode, or its extension is not a known media
type), or *malformed* (a required field is missing or has the wrong type), with example ids. A missing
input file or an input that is not a JSON list is an :class:`~nextgpt.errors.InputError`; an unknown
format is a :class:`~nextgpt.errors.ConfigError`.

Formats (:data:`FORMATS`), one module per source dataset family, whose docstring gives the upstream
fields: ``cc3m``, ``webvid`` and ``audiocap`` -> pairs (:mod:`.pairs`); NExT-GPT's instruction data
``t2m`` (:mod:`.t2m`) and ``mosit`` (:mod:`.mosit`), ``llava`` (:mod:`.llava`), ``alpaca``
(:mod:`.alpaca`), ``videochat`` (:mod:`.videochat`) and LLMBind's interactive generation and editing
dialogues ``llmbind`` (:mod:`.llmbind`) -> conversations; referring segmentation ``refcoco``
(:mod:`.refcoco`, RefCOCO/+/g in the ``refer`` layout) -> conversations with target masks. :mod:`.common` holds what
they share (the problem kinds, the media lookup below, field checks); :mod:`.driver` the registry of
formats and :func:`convert`.

Output media files are optional (T2M and MosIT ship captions for their outputs, not always the media):
a missing output file gives a caption-only output, counted as ``outputs_without_media``; pass
``require_output_media=True`` to treat it as missing media instead.

Media lookup for a name ``n`` of modality ``m``: ``media_dir/n``, then ``media_dir/<data_source>/n``
(MosIT), then ``media_dir/{images|videos|audios}/n``; VideoChat names that are not found that way are
tried by their base name (flat download layout). ``media_dir`` defaults to the input file's folder.
Names that are absolute or contain ``..`` are refused (malformed).
"""

from .common import MALFORMED, MISSING, PROBLEMS, UNREADABLE
from .driver import FORMATS, ConvertReport, convert

__all__ = ["FORMATS", "MALFORMED", "MISSING", "PROBLEMS", "UNREADABLE", "ConvertReport", "convert"]
