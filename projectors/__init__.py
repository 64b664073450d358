"""Input projectors (encoder -> LLM tokens) and output projectors (LLM signal states -> decoder conditioning).

- :class:`LinearInputProjector`: legacy NExT-GPT, pooled embedding -> 1 token per item.
- :class:`GroupingInputProjector`: NExT-GPT 2024 / GroupViT-style, patch tokens -> 8 tokens per item.
- :class:`BindInputProjector`: ImageBind-LLM's bind network, pooled embedding -> a feature injected
  into every LLM layer through zero-initialised gates (no prompt tokens).
- :class:`TransformerOutputProjector`: legacy ``TextFcLayer`` (transformer mode), key-compatible.
- :func:`build_input_projector` / :func:`build_output_projector`: from config ``kind`` strings.
"""

from .bind import BindInputProjector, bind_parameter_count
from .grouping import GroupingBlock, GroupingInputProjector, GroupingStage, assignment
from .linear import LEGACY_KEYS, LinearInputProjector, sum_items
from .output import LEGACY_PREFIX, TransformerOutputProjector, squeeze_single
from .registry import INPUT_PROJECTORS, OUTPUT_PROJECTORS, build_input_projector, build_output_projector

__all__ = [
    "INPUT_PROJECTORS",
    "LEGACY_KEYS",
    "LEGACY_PREFIX",
    "OUTPUT_PROJECTORS",
    "BindInputProjector",
    "GroupingBlock",
    "GroupingInputProjector",
    "GroupingStage",
    "LinearInputProjector",
    "TransformerOutputProjector",
    "assignment",
    "bind_parameter_count",
    "build_input_projector",
    "build_output_projector",
    "squeeze_single",
    "sum_items",
]
