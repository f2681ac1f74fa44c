"""Exact parameter counts of the paper's DiT presets (256x256: 32x32x4 latents, 1000 classes,
learned sigma): ours, the paper code's count (which also counts its frozen 2-D position embedding,
an nn.Parameter with requires_grad=False), and diffusers' DiTTransformer2DModel of the same config
(built on the meta device: nothing allocated; it holds one timestep/label embedder per block).

    python -m benchmarks.dit_params
"""

from __future__ import annotations

import torch

from ddpm import DiT
from reference.dit_config import PAPER_SIZES, DiTConfig, dit_count_parameters, dit_diffusers_config


def rows():
    from diffusers import DiTTransformer2DModel

    for size in PAPER_SIZES:
        for patch in (2, 4, 8):
            cfg = DiTConfig.paper(size, patch)
            with torch.device("meta"):
                ours = sum(p.numel() for p in DiT(cfg).parameters())
                theirs = sum(p.numel() for p in DiTTransformer2DModel(**dit_diffusers_config(cfg)).parameters())
            assert ours == dit_count_parameters(cfg)
            yield f"DiT-{size}/{patch}", ours, ours + cfg.grid_size ** 2 * cfg.hidden_size, theirs


def main() -> int:
    print("| model | ours (trainable) | paper code (+ frozen pos_embed) | diffusers DiTTransformer2DModel |")
    print("|---|---|---|---|")
    for name, ours, paper_code, theirs in rows():
        print(f"| {name} | {ours:,} | {paper_code:,} | {theirs:,} |")
    print("\nThe paper gives DiT-XL/2 as 675M parameters.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
