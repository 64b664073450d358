"""Training data: the shard sample schema, shard reading/writing, converters from upstream NExT-GPT data
formats, and a small real demo dataset. ``docs/DATA.md`` documents the schema."""

from .convert import FORMATS, ConvertReport, convert
from .demo import build_demo_dataset
from .schema import (
    CONVERSATION,
    PAIR,
    STAGE1_PROMPT,
    ConversationRecord,
    MediaBlob,
    PairRecord,
    RecordTurn,
    Sample,
    clean_caption,
    pair_turns,
)
from .shards import (
    DataStats,
    ShardDataset,
    collate_samples,
    count_samples,
    decode_audio,
    decode_image,
    decode_video,
    encode_audio,
    encode_image,
    encode_video,
    expand_urls,
    iter_samples,
    write_samples,
)

__all__ = [
    "CONVERSATION",
    "FORMATS",
    "PAIR",
    "STAGE1_PROMPT",
    "ConversationRecord",
    "ConvertReport",
    "DataStats",
    "MediaBlob",
    "PairRecord",
    "RecordTurn",
    "Sample",
    "ShardDataset",
    "build_demo_dataset",
    "clean_caption",
    "collate_samples",
    "convert",
    "count_samples",
    "decode_audio",
    "decode_image",
    "decode_video",
    "encode_audio",
    "encode_image",
    "encode_video",
    "expand_urls",
    "iter_samples",
    "pair_turns",
    "write_samples",
]
