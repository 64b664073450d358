"""Import the released NExT-GPT weights (``nextgpt_7b_tiva_v0/pytorch_model.pt``, REFERENCE.md 1.3).

The legacy file is a flat fp16 state dict of what the legacy code trained:

==================================================  ==============================================
legacy key                                          nextgpt parameter
==================================================  ==============================================
``llama_proj.{weight,bias}``                        ``input_projector.proj.*`` (linear projector)
``llama_model.<peft path>.lora_{A,B}.default.*``    ``llm.model.<same peft path>`` (LoRA)
``llama_model.base_model.model.model.embed_tokens`` rows ``< V`` -> base ``embed_tokens``;
``.weight [V + n, H]``                              rows ``V..V+n`` -> ``llm.new_embeddings[:n]``
``llama_model.base_model.model.lm_head.weight``     rows ``< V`` -> base ``lm_head``;
                                                    rows ``V..V+n`` -> ``llm.new_lm_head[:n]``
``gen_text_hidden_fcs.0.*``                         ``output_projectors.image.*``
``gen_text_hidden_fcs_video.0.*``                   ``output_projectors.video.*``
``gen_text_hidden_fcs_audio.0.*``                   ``output_projectors.audio.*``
==================================================  ==============================================

``n`` is the number of legacy added tokens (``<Img> </Img>`` + 4 + 24 + 8 = 38 for the release); our
three placeholder rows come after them and keep their initial values (they are never read).
Every file key must be used exactly once and every target filled: anything missing, left over or
mis-shaped raises :class:`~nextgpt.errors.CheckpointError` naming it (upstream loaded with
``strict=False`` and silently dropped mismatches, e.g. the 32042-row early release).
"""

from __future__ import annotations

import logging

import torch

from nextgpt.checkpoint import check_keys, check_values
from nextgpt.errors import CheckpointError
from nextgpt.modality import Modality

logger = logging.getLogger(__name__)

_PROJECTOR_PREFIX = {
    Modality.IMAGE: "gen_text_hidden_fcs.0.",
    Modality.VIDEO: "gen_text_hidden_fcs_video.0.",
    Modality.AUDIO: "gen_text_hidden_fcs_audio.0.",
}
_LLM_PREFIX = ("llama_model.", "llm.model.")


def legacy_key_map(model) -> tuple[dict[str, tuple[str, slice | None]], dict[str, torch.Size]]:
    """For ``model``: {legacy key: (our key, row slice or None)} and the expected legacy shapes."""
    from nextgpt.projectors.linear import LEGACY_KEYS

    cfg = model.config.model
    if (
        cfg.input_projector.kind != "linear"
        or cfg.llm.trainable_embeddings != "full"
        or not cfg.llm.media_wrappers
    ):
        raise CheckpointError(
            "legacy checkpoints need a legacy-shaped model: model.input_projector.kind=linear, "
            "model.llm.trainable_embeddings=full, model.llm.media_wrappers=true (preset nextgpt-7b-legacy)"
        )
    own = model.trainable_state_dict()
    layout = model.llm.layout
    n_legacy = layout.num_new - len(layout.placeholder_ids)
    V = layout.base_vocab
    mapping: dict[str, tuple[str, slice | None]] = {}
    shapes: dict[str, torch.Size] = {}
    inverse_proj = {v: k for k, v in LEGACY_KEYS.items()}
    for key, value in own.items():
        if key.startswith("input_projector."):
            legacy = inverse_proj[key.removeprefix("input_projector.")]
            mapping[legacy], shapes[legacy] = (key, None), value.shape
        elif key.startswith("output_projectors."):
            name, rest = key.removeprefix("output_projectors.").split(".", 1)
            legacy = _PROJECTOR_PREFIX[Modality(name)] + rest
            mapping[legacy], shapes[legacy] = (key, None), value.shape
        elif key.startswith(_LLM_PREFIX[1]):
            legacy = _LLM_PREFIX[0] + key.removeprefix(_LLM_PREFIX[1])
            if key.endswith(("embed_tokens.weight", "lm_head.weight")):
                new_key = "llm.new_embeddings" if "embed_tokens" in key else "llm.new_lm_head"
                if new_key not in own:
                    new_key = "llm.new_embeddings"  # tied input/output rows
                mapping[legacy] = (key, slice(0, V))
                mapping[legacy + "#new"] = (new_key, slice(V, V + n_legacy))
                shapes[legacy] = torch.Size([V + n_legacy, value.shape[1]])
            else:
                mapping[legacy], shapes[legacy] = (key, None), value.shape
        # llm.new_embeddings / llm.new_lm_head are filled from the rows above
    return mapping, shapes


def import_legacy_state(model, state: dict[str, torch.Tensor], *, what: str) -> None:
    """Copy a legacy NExT-GPT state dict into ``model`` with strict accounting (see module doc)."""
    model.llm.set_lora_merged(False)  # never copy adapters onto a merged base
    mapping, shapes = legacy_key_map(model)
    check_keys(shapes, state, what=what)
    params = dict(model.named_parameters(remove_duplicate=False))
    check_values({k: params[ours] for k, (ours, _) in mapping.items() if "#" not in k}, state, what=what)
    V = model.llm.layout.base_vocab
    with torch.no_grad():
        for legacy, (ours, rows) in mapping.items():
            source = state[legacy.removesuffix("#new")]
            target = params[ours]
            if rows is None:
                target.copy_(source.to(target.dtype))
            elif legacy.endswith("#new"):
                n = rows.stop - rows.start
                target[:n].copy_(source[rows].to(target.dtype))
            else:
                target.copy_(source[:V].to(target.dtype))
    logger.info("imported %d legacy tensors from %s", len(state), what)
