"""Process-wide settings of the fused kernels, read once from the environment.

DDPM_KERNELS_NORMAL_FP64=1   evaluate Box-Muller of the in-kernel noise in float64 and round
                             once (as the reference does) instead of float32 (as tl.randn does):
                             bit-exact normals at the price of float64 log/cos/sqrt per element.
"""

from __future__ import annotations

import os

NORMAL_FP64_ENV = "DDPM_KERNELS_NORMAL_FP64"
NORMAL_FP64 = os.environ.get(NORMAL_FP64_ENV, "0") not in ("", "0", "false", "False")
