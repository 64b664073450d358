"""Reading and writing webdataset shards of training samples (schema in :mod:`.schema`).

Reading (:class:`ShardDataset`, :func:`iter_samples`) goes shard -> raw samples (members grouped by key)
-> optional shuffle buffer -> decode + validate -> :class:`~.schema.Sample`. Anything wrong with one
sample (undecodable media, bad json, a missing field or member, a corrupt or truncated tar) skips that
sample: a warning names the key and the reason, and :class:`DataStats` counts it. Once
``min_samples_before_check`` samples were seen, a bad fraction above ``max_bad_fraction`` raises
:class:`~nextgpt.errors.InputError`: a few broken files are normal in web-scale data, a large fraction
means the wrong data or a broken pipeline.

Splitting (no sample twice per epoch). Every DataLoader worker of every rank is one *global worker*
``g = rank * num_workers + worker_id`` out of ``G = world_size * num_workers``. The shard list is put in
the same order on every rank (shuffled with ``(seed, epoch)`` when ``shuffle > 0``), then:

* ``split="shard"``: global worker ``g`` reads shards ``g, g + G, g + 2G, ...``;
* ``split="sample"``: every worker reads every shard and keeps raw samples ``g, g + G, ...`` (more
  reading, but balanced to within one sample; for fewer shards than workers);
* ``split="auto"`` (default): ``shard`` when there are at least ``G`` shards, else ``sample``.

Rank and world size come from ``torch.distributed`` when it is initialised, else from the ``RANK`` and
``WORLD_SIZE`` environment variables, else 0 and 1; pass ``rank``/``world_size`` (or call
:meth:`ShardDataset.set_distributed`) to fix them explicitly. The order is a pure function of
``(urls, seed, epoch, rank, world_size, num_workers)``: exact resume replays an epoch with ``skip``.

Writing (:func:`write_samples`) uses webdataset's ``ShardWriter`` with fixed member times, so the same
records give byte-identical shards.

Media members are decoded and encoded by :mod:`nextgpt.mediaio`, the library's one media I/O
(:func:`decode_image`, :func:`decode_audio`, :func:`decode_video`, :func:`encode_image`,
:func:`encode_audio`, :func:`encode_video` are its functions): images are refused above
:data:`MAX_IMAGE_PIXELS` (the library's one pixel limit), audio above the reader's duration / sample
limits, and the H.264 writer pads odd frame sizes with edge pixels.

Modules: :mod:`.tars` (shard lists, raw samples, counts, writing), :mod:`.decode` (media members and
validation: raw sample -> :class:`~.schema.Sample`) and :mod:`.dataset` (:class:`ShardDataset`, the
splitting above). Every name is importable from ``nextgpt.stages.data.shards``.
"""

from nextgpt.mediaio.audio import decode_audio, encode_audio
from nextgpt.mediaio.image import decode_image, encode_image
from nextgpt.mediaio.video import decode_video, encode_video

from .dataset import SPLITS, ShardDataset, collate_samples, iter_samples
from .decode import MAX_BAD_KEYS, MAX_IMAGE_PIXELS, DataStats, decode_media, decode_sample
from .tars import count_samples, expand_urls, iter_raw, write_samples

__all__ = [
    "MAX_BAD_KEYS",
    "MAX_IMAGE_PIXELS",
    "SPLITS",
    "DataStats",
    "ShardDataset",
    "collate_samples",
    "count_samples",
    "decode_audio",
    "decode_image",
    "decode_media",
    "decode_sample",
    "decode_video",
    "encode_audio",
    "encode_image",
    "encode_video",
    "expand_urls",
    "iter_raw",
    "iter_samples",
    "write_samples",
]
