"""Distributed training pieces: Lightning strategies by config name, FSDP2 sharding of a NextGPT model,
and gathering what a sharded model trained.

``training.strategy``:

* ``auto`` / ``ddp`` — data parallel. Every trainable tensor gets a gradient in every step (the idle
  projector terms of :meth:`NextGPT.compute_losses <nextgpt.NextGPT.compute_losses>`, the added rows
  always in the embedding graph), so DDP runs without ``find_unused_parameters`` and its extra graph
  walk.
* ``fsdp`` — FSDP2 through Lightning's ``ModelParallelStrategy`` (data parallel over every process,
  no tensor parallelism): :func:`shard_model` shards the LLM decoder stack layer by layer; the rest is
  replicated and its trainable gradients averaged before each step. Checkpoints are one file
  (trainable tensors and optimiser state gathered to rank 0), resumed with the same safe loader as
  DDP; ``save_pretrained`` gets the gathered tensors (:func:`gathered_trainable_state`).
* ``fsdp`` with ``16-mixed`` — refused (fp16's GradScaler cannot unscale a mix of sharded and whole
  gradients); ``bf16-mixed`` or ``32-true`` work.
* ``deepspeed_stage_2`` — refused (:func:`build_strategy`): its checkpoint is a folder our resume and
  lean-checkpoint code does not read, and it has not been run here (no GPU). Use ``fsdp`` to shard,
  or ``ddp``.

FSDP needs every sharded module to run the same forwards, and its backward to reach them in the same
order, on every rank (each is a collective). Only the decoder stack is sharded, and it runs once per
step whatever the batch holds; the projectors, whose calls depend on the batch, stay whole.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from nextgpt.errors import ConfigError

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed_stage_2")


def _num_processes(devices, accelerator: str) -> int:
    if isinstance(devices, int):
        return devices
    if accelerator in ("auto", "gpu") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def build_strategy(
    name: str, *, devices=1, num_nodes: int = 1, accelerator: str = "auto", precision: str = "32-true"
):
    """The Lightning strategy for ``training.strategy`` (``auto``: DDP as below when more than one
    process trains, else Lightning's single-device strategy).

    DDP runs with ``broadcast_buffers=False``: the model's buffers are constants built identically on
    every rank (rotary tables, the encoder's fixed embeddings), so re-sending them before every forward
    only costs time; and that broadcast flattens buffers of different dtypes (fp16 encoder, bf16 LLM)
    inside the autocast region, which CPU autocast refuses."""
    if name not in STRATEGIES:
        raise ConfigError(f"training.strategy: unknown {name!r}; valid: {', '.join(STRATEGIES)}")
    if name == "deepspeed_stage_2":
        raise ConfigError(
            "training.strategy=deepspeed_stage_2 is not supported: DeepSpeed writes folder checkpoints that "
            "nextgpt's resume and lean checkpoints do not read, and it has not been proven on a GPU here. "
            "Use training.strategy=fsdp (FSDP2: shards the LLM over the GPUs) or training.strategy=ddp."
        )
    if name == "fsdp":
        if precision == "16-mixed":
            raise ConfigError(
                "training.strategy=fsdp with training.precision=16-mixed is not supported: fp16's GradScaler "
                "cannot unscale a mix of sharded (LLM layers) and whole (projectors, rows) gradients. Use "
                "training.precision=bf16-mixed (A100/H100 have bf16) or 32-true with fsdp, or "
                "training.strategy=ddp for 16-mixed."
            )
        return NextGPTFSDPStrategy()
    if name == "ddp" or _num_processes(devices, accelerator) * num_nodes > 1:
        return DDPStrategy(find_unused_parameters=False, broadcast_buffers=False)
    return "auto"


def is_sharded(strategy) -> bool:
    """Whether ``strategy`` shards the model (a ``ModelParallelStrategy``: :class:`NextGPTFSDPStrategy`)."""
    return isinstance(strategy, ModelParallelStrategy)


def shard_model(model, mesh) -> None:
    """Apply FSDP2 to a :class:`~nextgpt.NextGPT`: ``fully_shard`` on each LLM decoder layer, and on
    the decoder stack around them (its final norm; the token matrix is left out, the media splice
    reads it outside the stack's forward).

    Only the stack is sharded: it holds ~97% of the weights of a 7B model, and each of its units runs
    exactly once per step in the same order on every rank, which FSDP's collectives need whatever a
    batch holds (image on one rank, text on another). The rest (token matrices, added rows, projectors,
    the frozen encoder) stays whole on every rank; the trainable part of it is averaged over the
    ranks before each optimiser step (:func:`all_reduce_replicated_grads`)."""
    from torch.distributed.fsdp import fully_shard

    backbone = model.llm.backbone
    layers = model.llm.decoder_layers
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    ignored = set(backbone.get_input_embeddings().parameters())
    fully_shard(backbone, mesh=mesh, ignored_params=ignored)
    logger.info("FSDP2: sharded %d LLM decoder layers over %d ranks", len(layers), mesh.size())


def all_reduce_replicated_grads(params, world_size: int) -> None:
    """Average the gradients of trainable tensors that are not sharded (plain tensors) over the ranks,
    in one flat all-reduce, in the same parameter order on every rank (a collective)."""
    from torch.distributed.tensor import DTensor

    local = [p for p in params if not isinstance(p, DTensor)]
    if not local or world_size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in local]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p, g in zip(local, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
        offset += n


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Clip the gradients of a mix of sharded (DTensor) and whole tensors to a total L2 norm of
    ``max_norm``; returns the norm before clipping. A collective when sharded tensors are present."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    squares = []
    for g in grads:
        n = g.float().pow(2).sum()
        squares.append(n.full_tensor() if isinstance(n, DTensor) else n)
    total = torch.stack([s.to(squares[0].device) for s in squares]).sum().sqrt()
    coef = min(1.0, float(max_norm) / (float(total) + 1e-6))
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


def gathered_trainable_state(model) -> dict[str, torch.Tensor]:
    """:meth:`NextGPT.trainable_state_dict` with sharded tensors gathered into whole CPU tensors.

    A collective under FSDP: every rank must call it (each gets the full tensors)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for k, v in model.trainable_state_dict().items():
        v = v.detach()
        if isinstance(v, DTensor):
            v = v.full_tensor()
        out[k] = v.to("cpu").contiguous()
    return out


class NextGPTFSDPStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` set up for nextgpt: FSDP2 over all processes (no tensor
    parallelism; :func:`shard_model` runs in ``StageModule.configure_model``) and single-file,
    trainable-only checkpoints loaded without unpickling."""

    def __init__(self) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=False)

    def setup_environment(self) -> None:
        """Resolve ``data_parallel_size="auto"`` to every process of every node, then set up as Lightning
        does."""
        if self._data_parallel_size == "auto":  # Lightning's "auto" means one data-parallel group per node
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def lightning_module_state_dict(self) -> dict:
        """Only what training changes, gathered (all ranks take part; keys prefixed ``model.``): the
        frozen LLM is not gathered into every checkpoint."""
        return {f"model.{k}": v for k, v in gathered_trainable_state(self.lightning_module.model).items()}

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        """Load a single-file checkpoint without unpickling (``weights_only`` is ignored): its
        ``state_dict`` is checked against the module before anything loads; the rest (optimiser, loops)
        comes from Lightning's loader with ``weights_only=True``."""
        from nextgpt.stages.modules import safe_load_checkpoint

        path = Path(self.broadcast(checkpoint_path))
        checkpoint = safe_load_checkpoint(path)
        self.lightning_module.check_checkpoint(checkpoint)  # strict key accounting before anything loads
        rest = super().load_checkpoint(path, weights_only=True)
        rest["state_dict"] = checkpoint["state_dict"]
        return rest
