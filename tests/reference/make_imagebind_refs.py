"""Write reference values of the official ImageBind model for our parity tests.

Runs ONLY in a throwaway environment that can import upstream ImageBind (torch + timm + einops +
ftfy + regex + iopath; see docs of tests/reference): never a dependency of nextgpt.

    /tmp/refenv/bin/python tests/reference/make_imagebind_refs.py --imagebind-src /path/to/ImageBind

Writes
- ``imagebind_huge_keys.json``: every state-dict key of upstream ``imagebind_huge()`` with its shape
  (random init; no weights are downloaded);
- ``imagebind_tiny_ref.npz``: outputs of an upstream model of tiny dims (``imagebind_det.TINY_*``)
  whose parameters are filled by ``imagebind_det.det_state`` on the inputs ``det_inputs()``.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--imagebind-src", required=True, help="folder containing the upstream `imagebind` package"
    )
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    # Register the upstream package without running its __init__ (which imports the data loaders
    # and their video/audio dependencies); the model modules need only torch, timm, einops, ftfy.
    pkg = types.ModuleType("imagebind")
    pkg.__path__ = [str(Path(args.imagebind_src) / "imagebind")]
    sys.modules["imagebind"] = pkg
    from imagebind.models import imagebind_model as ib  # upstream, in the throwaway env only
    from imagebind_det import TINY_OUT, TINY_TRUNKS, det_inputs, det_state

    # Built on the CPU (upstream's init calls .item(), which the meta device refuses); bf16 halves RAM.
    torch.set_default_dtype(torch.bfloat16)
    huge = ib.imagebind_huge(pretrained=False)
    torch.set_default_dtype(torch.float32)
    keys = {k: list(v.shape) for k, v in huge.state_dict().items()}
    (HERE / "imagebind_huge_keys.json").write_text(json.dumps(keys, indent=0))
    print(f"huge: {len(keys)} keys, {sum(np.prod(s) for s in keys.values()) / 1e6:.1f}M values")

    kw = {"out_embed_dim": TINY_OUT}
    for name, (dim, blocks, heads) in TINY_TRUNKS.items():
        kw.update({f"{name}_embed_dim": dim, f"{name}_num_blocks": blocks, f"{name}_num_heads": heads})
    model = ib.ImageBindModel(**kw).eval()
    params = dict(model.named_parameters())
    model.load_state_dict(det_state([(k, tuple(p.shape)) for k, p in params.items()]), strict=False)
    inputs = det_inputs()
    out = {}
    with torch.no_grad():
        for name, x in inputs.items():
            trunk = "vision" if name.startswith("vision") else name
            out[name] = model({trunk: x})[trunk].numpy()
    np.savez_compressed(HERE / "imagebind_tiny_ref.npz", **out)
    print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
