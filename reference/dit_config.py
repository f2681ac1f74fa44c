"""The DiT configuration, presets, parameter naming and the diffusers mapping (Peebles & Xie 2023).

The NumPy `reference.DiT` and the torch `ddpm.DiT` hold exactly `parameter_shapes(config)`. The
names are those of the paper's code (facebookresearch/DiT `models.py`), so its checkpoints load
by name:

    x_embedder.proj.weight / .bias           (D, C, p, p) / (D,)   patch embedding (a p x p stride-p conv)
    t_embedder.mlp.0.weight / .bias          (D, F) / (D,)         sinusoid(t, F = 256) -> D -> SiLU -> D
    t_embedder.mlp.2.weight / .bias          (D, D) / (D,)
    y_embedder.embedding_table.weight        (num_classes + 1, D)  row num_classes = the null label (CFG)
    blocks.{i}.attn.qkv.weight / .bias       (3D, D) / (3D,)       rows [q; k; v], heads contiguous
    blocks.{i}.attn.proj.weight / .bias      (D, D) / (D,)
    blocks.{i}.mlp.fc1.weight / .bias        (M, D) / (M,)         M = mlp_ratio * D, tanh GELU
    blocks.{i}.mlp.fc2.weight / .bias        (D, M) / (D,)
    blocks.{i}.adaLN_modulation.1.weight     (6D, D) / (6D,)       shift, scale, gate (attn), shift, scale, gate (mlp)
    final_layer.adaLN_modulation.1.weight    (2D, D) / (2D,)       shift, scale
    final_layer.linear.weight / .bias        (p*p*out, D) / (p*p*out,)

The mapping to diffusers' `DiTTransformer2DModel` (`diffusers_names`) is exact: qkv splits into
attn1.to_q/to_k/to_v; diffusers keeps one timestep/label embedder per block (norm1.emb), so the
shared embedders are copied into every block on export and must agree across blocks on import.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

__all__ = ["DiTConfig", "DIT_PRESETS", "dit_parameter_shapes", "dit_count_parameters", "diffusers_names",
           "dit_diffusers_config", "dit_config_from_diffusers", "PAPER_SIZES"]

# Table 1 of the paper: (depth, hidden size, heads); patch sizes 2, 4, 8.
PAPER_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of DiT. Defaults: DiT-XL/2 on 256x256 images (32x32x4 latents, 1000 classes).

    learn_sigma doubles the output channels (eps, then the variance interpolation v of Improved
    DDPM Eq. 15). freq_shift 1 and [cos, sin] order are diffusers' DiT time embedding (the
    paper's code divides by half, i.e. shift 0). eps: the attention and final LayerNorms;
    mlp_eps: the MLP's (diffusers' norm_eps).
    """

    image_size: int = 32
    in_channels: int = 4
    patch_size: int = 2
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: int = 4
    num_classes: int | None = 1000
    learn_sigma: bool = True
    frequency_embedding_size: int = 256
    freq_shift: int = 1
    eps: float = 1e-6
    mlp_eps: float = 1e-6

    def __post_init__(self):
        for name in ("image_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads",
                     "mlp_ratio", "frequency_embedding_size"):
            _positive_int(getattr(self, name), name)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (2-D sin-cos position embedding), "
                             f"got {self.hidden_size}")
        if self.num_classes is not None:
            _positive_int(self.num_classes, "num_classes")
        if not isinstance(self.learn_sigma, bool):
            raise ValueError(f"learn_sigma must be a bool, got {self.learn_sigma!r}")
        if self.frequency_embedding_size % 2 or self.frequency_embedding_size // 2 - self.freq_shift <= 0:
            raise ValueError(f"frequency_embedding_size must be even and > 2 freq_shift, "
                             f"got {self.frequency_embedding_size} (freq_shift={self.freq_shift})")
        for name in ("eps", "mlp_eps"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        """Patches per side: the token grid is grid_size x grid_size."""
        return self.image_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return self.mlp_ratio * self.hidden_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown DiTConfig field(s): {sorted(unknown)}")
        return cls(**d)

    # ----- presets -----
    @classmethod
    def paper(cls, size: str = "XL", patch_size: int = 2, **overrides) -> "DiTConfig":
        """DiT-{S,B,L,XL}/{2,4,8} of Table 1, at 256x256 (32x32x4 latents), 1000 classes, learned sigma."""
        if size not in PAPER_SIZES:
            raise ValueError(f"size must be one of {sorted(PAPER_SIZES)}, got {size!r}")
        if patch_size not in (2, 4, 8):
            raise ValueError(f"patch_size must be 2, 4 or 8 (the paper's), got {patch_size!r}")
        depth, hidden, heads = PAPER_SIZES[size]
        return cls(**{**dict(patch_size=patch_size, depth=depth, hidden_size=hidden, num_heads=heads), **overrides})

    @classmethod
    def digits(cls, **overrides) -> "DiTConfig":
        """8x8 digits, 16 tokens of 2x2 patches; 723,844 parameters with 10 classes, within 3%
        of the digits8 UNet (702,753) for the equal-size comparison."""
        base = dict(image_size=8, in_channels=1, patch_size=2, hidden_size=96, depth=4, num_heads=4,
                    num_classes=None, learn_sigma=False)
        return cls(**{**base, **overrides})

    @classmethod
    def mnist(cls, **overrides) -> "DiTConfig":
        """28x28 MNIST, 49 tokens of 4x4 patches; within 4% of the mnist UNet's 1,624,577 parameters."""
        base = dict(image_size=28, in_channels=1, patch_size=4, hidden_size=128, depth=5, num_heads=4,
                    num_classes=None, learn_sigma=False)
        return cls(**{**base, **overrides})

    @classmethod
    def mnist_small(cls, **overrides) -> "DiTConfig":
        """28x28 MNIST, 49 tokens of 4x4 patches, width 60 (4 heads of 15); 291,856 parameters with
        10 classes, within 4% of the mnist_small UNet (280,881) for the equal-size comparison."""
        base = dict(image_size=28, in_channels=1, patch_size=4, hidden_size=60, depth=4, num_heads=4,
                    num_classes=None, learn_sigma=False)
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "DiTConfig":
        """A minimal config for gradient checks: 2 blocks, 4 tokens, 2 heads of width 4."""
        base = dict(image_size=4, in_channels=1, patch_size=2, hidden_size=8, depth=2, num_heads=2,
                    num_classes=3, learn_sigma=True, frequency_embedding_size=8)
        return cls(**{**base, **overrides})


def _preset_table() -> dict:
    table = {"dit-digits": DiTConfig.digits, "dit-mnist": DiTConfig.mnist,
             "dit-mnist-small": DiTConfig.mnist_small, "dit-tiny": DiTConfig.tiny}
    for size in PAPER_SIZES:
        for patch in (2, 4, 8):
            table[f"dit-{size.lower()}-{patch}"] = (lambda s, p: lambda **kw: DiTConfig.paper(s, p, **kw))(size, patch)
    return table


# name -> constructor(**overrides): "dit-xl-2" is DiT-XL/2 of the paper.
DIT_PRESETS = _preset_table()


def dit_parameter_shapes(config: DiTConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """Every parameter name -> shape, in the order the models create them."""
    if not isinstance(config, DiTConfig):
        raise TypeError(f"config must be a DiTConfig, got {type(config).__name__}")
    D, p, M = config.hidden_size, config.patch_size, config.mlp_hidden
    shapes = OrderedDict()
    shapes["x_embedder.proj.weight"] = (D, config.in_channels, p, p)
    shapes["x_embedder.proj.bias"] = (D,)
    shapes["t_embedder.mlp.0.weight"] = (D, config.frequency_embedding_size)
    shapes["t_embedder.mlp.0.bias"] = (D,)
    shapes["t_embedder.mlp.2.weight"] = (D, D)
    shapes["t_embedder.mlp.2.bias"] = (D,)
    if config.num_classes is not None:
        shapes["y_embedder.embedding_table.weight"] = (config.num_classes + 1, D)
    for i in range(config.depth):
        b = f"blocks.{i}."
        for name, (out_f, in_f) in (("attn.qkv", (3 * D, D)), ("attn.proj", (D, D)), ("mlp.fc1", (M, D)),
                                    ("mlp.fc2", (D, M)), ("adaLN_modulation.1", (6 * D, D))):
            shapes[b + name + ".weight"] = (out_f, in_f)
            shapes[b + name + ".bias"] = (out_f,)
    shapes["final_layer.adaLN_modulation.1.weight"] = (2 * D, D)
    shapes["final_layer.adaLN_modulation.1.bias"] = (2 * D,)
    shapes["final_layer.linear.weight"] = (p * p * config.out_channels, D)
    shapes["final_layer.linear.bias"] = (p * p * config.out_channels,)
    return shapes


def dit_count_parameters(config: DiTConfig) -> int:
    total = 0
    for shape in dit_parameter_shapes(config).values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


# ----------------------------------------------------------------------------- diffusers

_BLOCK_MAP = {"attn.proj": "attn1.to_out.0", "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2",
              "adaLN_modulation.1": "norm1.linear"}
_EMBEDDER_MAP = {"t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
                 "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
                 "y_embedder.embedding_table": "norm1.emb.class_embedder.embedding_table"}
_TOP_MAP = {"x_embedder.proj": "pos_embed.proj", "final_layer.adaLN_modulation.1": "proj_out_1",
            "final_layer.linear": "proj_out_2"}


def diffusers_names(config: DiTConfig) -> "OrderedDict[str, list[tuple[str, int | None]]]":
    """Our name -> [(diffusers name, part)]: part k of 3 (rows k*D:(k+1)*D of qkv) or None (the whole).

    An embedder maps to one diffusers name per block (the same values in each).
    """
    table = OrderedDict()
    for name in dit_parameter_shapes(config):
        module, leaf = name.rsplit(".", 1)
        if module in _TOP_MAP:
            table[name] = [(f"{_TOP_MAP[module]}.{leaf}", None)]
        elif module in _EMBEDDER_MAP:
            table[name] = [(f"transformer_blocks.{i}.{_EMBEDDER_MAP[module]}.{leaf}", None)
                           for i in range(config.depth)]
        else:
            _, i, local = module.split(".", 2)
            if local == "attn.qkv":
                table[name] = [(f"transformer_blocks.{i}.attn1.to_{x}.{leaf}", k) for k, x in enumerate("qkv")]
            else:
                table[name] = [(f"transformer_blocks.{i}.{_BLOCK_MAP[local]}.{leaf}", None)]
    return table


def dit_diffusers_config(config: DiTConfig) -> dict:
    """The `DiTTransformer2DModel` config of the same model. An unconditional DiT exports as one
    class whose label rows are zero (diffusers always adds a label embedding)."""
    unsupported = {"mlp_ratio": (config.mlp_ratio, 4), "frequency_embedding_size": (config.frequency_embedding_size, 256),
                   "freq_shift": (config.freq_shift, 1), "eps": (config.eps, 1e-6)}
    bad = [f"{k}={got} (diffusers fixes {want})" for k, (got, want) in unsupported.items() if got != want]
    if bad:
        raise ValueError(f"DiTTransformer2DModel cannot express {', '.join(bad)}")
    return {"num_attention_heads": config.num_heads, "attention_head_dim": config.hidden_size // config.num_heads,
            "in_channels": config.in_channels, "out_channels": config.out_channels, "num_layers": config.depth,
            "sample_size": config.image_size, "patch_size": config.patch_size,
            "num_embeds_ada_norm": config.num_classes or 1, "norm_eps": config.mlp_eps,
            "activation_fn": "gelu-approximate", "norm_type": "ada_norm_zero", "attention_bias": True,
            "norm_elementwise_affine": False, "dropout": 0.0}


def dit_config_from_diffusers(d: dict, *, num_classes: int | None = -1) -> DiTConfig:
    """A DiTConfig from a `DiTTransformer2DModel` config dict (defaults as diffusers' __init__).

    num_classes=-1 takes num_embeds_ada_norm; pass None to read the model as unconditional."""
    required = {"activation_fn": "gelu-approximate", "norm_type": "ada_norm_zero", "attention_bias": True,
                "norm_elementwise_affine": False}
    bad = [f"{k}={d[k]!r} (supported: {v!r})" for k, v in required.items() if k in d and d[k] != v]
    if bad:
        raise ValueError(f"unsupported DiTTransformer2DModel config: {', '.join(bad)}")
    heads, head_dim = d.get("num_attention_heads", 16), d.get("attention_head_dim", 72)
    in_channels = d.get("in_channels", 4)
    out_channels = d.get("out_channels") or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"out_channels {out_channels} must be in_channels ({in_channels}) or twice it (learn_sigma)")
    return DiTConfig(image_size=d.get("sample_size", 32), in_channels=in_channels, patch_size=d.get("patch_size", 2),
                     hidden_size=heads * head_dim, depth=d.get("num_layers", 28), num_heads=heads,
                     num_classes=d.get("num_embeds_ada_norm", 1000) if num_classes == -1 else num_classes,
                     learn_sigma=out_channels == 2 * in_channels, mlp_eps=float(d.get("norm_eps", 1e-5)))
