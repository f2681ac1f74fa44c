"""The one UNet configuration and parameter naming (DESIGN contract 3).

The NumPy UNet (`reference.unet`) and the torch UNet (`ddpm.UNet`) are both built from a
`UNetConfig` and hold exactly the parameters listed by `parameter_shapes(config)`: same names,
same shapes, so a state dict moves between them by name with no mapping table.

The names are those of diffusers' `UNet2DModel` (DownBlock2D / AttnDownBlock2D / UNetMidBlock2D /
UpBlock2D / AttnUpBlock2D), the layout of the DDPM CIFAR-10 checkpoint, so its weights load by
name too. Levels are numbered from the input resolution down; up blocks from the bottom up.

    conv_in                                   3x3 conv, in_channels -> ch * ch_mult[0]
    time_embedding.linear_1, .linear_2        sinusoidal(ch) -> 4ch -> SiLU -> 4ch
    class_embedding                           (num_classes + 1, 4ch); row num_classes = null
    down_blocks.{i}.resnets.{j}               ResBlock (below)
    down_blocks.{i}.attentions.{j}            attention after resnet j (levels with attention)
    down_blocks.{i}.downsamplers.0.conv       3x3 stride-2 conv (all but the last level)
    mid_block.resnets.0, mid_block.attentions.0, mid_block.resnets.1
    up_blocks.{i}.resnets.{j}                 num_res_blocks + 1 ResBlocks on [h, skip] concat
    up_blocks.{i}.attentions.{j}
    up_blocks.{i}.upsamplers.0.conv           nearest 2x + 3x3 conv (all but the last up block)
    conv_norm_out, conv_out                   GroupNorm+SiLU, 3x3 conv -> out_channels

    ResBlock:  norm1 (GroupNorm+SiLU) -> conv1 -> + time_emb_proj(SiLU(temb))[:, :, None, None]
               -> norm2 (GroupNorm+SiLU) -> dropout -> conv2 ; + conv_shortcut(x) (1x1, only
               when channels change) or + x.
    Attention: group_norm (no SiLU) -> to_q, to_k, to_v (per-pixel linear maps over channels,
               i.e. 1x1 convs, weights (C, C)) -> softmax(q k^T / sqrt(C / heads)) over the H*W
               positions -> to_out.0 (C, C) -> + x.  heads = num_heads in every block, or
               C / head_channels (diffusers' attention_head_dim: a fixed head width, so the
               head count grows with the level's channels).

Weights are (out, in) for linear maps and (out, in, kh, kw) for convolutions, as torch stores them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

__all__ = ["UNetConfig", "parameter_shapes", "count_parameters"]


def _int_tuple(value, name: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}") from None
    if any(isinstance(v, bool) for v in value):
        raise TypeError(f"{name} must hold ints, got {value!r}")
    return out


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of the DDPM UNet. Defaults are the DDPM paper's CIFAR-10 model."""

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    groups: int = 32
    eps: float = 1e-6
    num_heads: int = 1
    # Channels per head (diffusers' attention_head_dim): heads = C / head_channels per block,
    # which differs between levels of different widths. None: num_heads heads everywhere.
    head_channels: int | None = None
    num_classes: int | None = None
    mid_attention: bool = True
    # Sinusoidal embedding: sin first unless flipped; frequencies exp(-log(10000) k / (half - shift)).
    flip_sin_to_cos: bool = False
    freq_shift: int = 1
    # 0: pad (0, 1, 0, 1) then a padding-0 stride-2 conv (the original DDPM); 1: padding-1 conv.
    downsample_padding: int = 0

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", _int_tuple(self.ch_mult, "ch_mult"))
        object.__setattr__(self, "attn_resolutions", _int_tuple(self.attn_resolutions, "attn_resolutions"))
        for name in ("image_size", "in_channels", "out_channels", "ch", "num_res_blocks",
                     "groups", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult}")
        if self.ch_mult[0] != 1:
            # diffusers' UNet2DModel ties the time embedding to block_out_channels[0]
            # (sinusoid width ch*ch_mult[0], MLP 4*ch*ch_mult[0]); the DDPM code to ch. They only
            # agree, and parameter_shapes only matches diffusers, when ch_mult[0] == 1.
            raise ValueError(f"ch_mult[0] must be 1 (scale ch instead), got ch_mult={self.ch_mult}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not float(self.eps) > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise ValueError(f"num_classes must be None or a positive int, got {self.num_classes!r}")
        if self.downsample_padding not in (0, 1):
            raise ValueError(f"downsample_padding must be 0 or 1, got {self.downsample_padding}")
        if self.ch % 2:
            raise ValueError(f"ch must be even (sinusoidal embedding of width ch), got {self.ch}")
        if self.ch // 2 - self.freq_shift <= 0:
            raise ValueError(f"freq_shift={self.freq_shift} too large for ch={self.ch}")
        levels = len(self.ch_mult)
        if self.image_size % (2 ** (levels - 1)):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2^(levels-1) = "
                f"{2 ** (levels - 1)} for ch_mult={self.ch_mult}"
            )
        for c in sorted(set(self.block_channels)):
            if c % self.groups:
                raise ValueError(f"channels {c} (from ch={self.ch}, ch_mult={self.ch_mult}) "
                                 f"are not divisible by groups={self.groups}")
        valid = {self.image_size // 2**i for i in range(levels)}
        bad = [r for r in self.attn_resolutions if r not in valid]
        if bad:
            raise ValueError(f"attn_resolutions {bad} match no level; levels have {sorted(valid)}")
        self._check_heads()

    def _check_heads(self) -> None:
        # Only attention blocks split into heads: other levels' widths need not divide.
        if self.head_channels is None:
            for c in self.attention_channels:
                if c % self.num_heads:
                    raise ValueError(f"attention channels {c} are not divisible by num_heads={self.num_heads}")
            return
        if isinstance(self.head_channels, bool) or not isinstance(self.head_channels, int) \
                or self.head_channels < 1:
            raise ValueError(f"head_channels must be None or a positive int, got {self.head_channels!r}")
        if self.num_heads != 1:
            raise ValueError(f"set num_heads (heads per block) or head_channels (channels per head), "
                             f"not both: got num_heads={self.num_heads}, head_channels={self.head_channels}")
        for c in self.attention_channels:
            if c % self.head_channels:
                raise ValueError(f"head_channels={self.head_channels} must divide the channels {c} "
                                 f"of every attention block")

    # ----- derived -----
    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.ch

    @property
    def levels(self) -> int:
        return len(self.ch_mult)

    def resolution(self, level: int) -> int:
        return self.image_size // 2**level

    def level_has_attention(self, level: int) -> bool:
        return self.resolution(level) in self.attn_resolutions

    @property
    def attention_channels(self) -> tuple[int, ...]:
        """The distinct channel counts of the attention blocks (levels with attention, mid block)."""
        chans = {c for i, c in enumerate(self.block_channels) if self.level_has_attention(i)}
        if self.mid_attention:
            chans.add(self.block_channels[-1])
        return tuple(sorted(chans))

    def heads(self, channels: int) -> int:
        """Attention heads of a block over `channels` channels (head width channels / heads)."""
        if self.head_channels is None:
            return self.num_heads
        return channels // self.head_channels

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNetConfig field(s): {sorted(unknown)}")
        return cls(**d)

    # ----- presets -----
    @classmethod
    def ddpm_cifar10(cls, **overrides) -> "UNetConfig":
        """The DDPM paper's CIFAR-10 model (Ho et al. 2020): 35,746,307 parameters."""
        return cls(**overrides)

    @classmethod
    def digits8(cls, **overrides) -> "UNetConfig":
        """8x8 single-channel digits (scikit-learn's bundled set), with attention at 4x4."""
        base = dict(image_size=8, in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2),
                    num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, groups=8, eps=1e-6)
        return cls(**{**base, **overrides})

    @classmethod
    def mnist(cls, image_size: int = 28, **overrides) -> "UNetConfig":
        """28x28 (or padded 32x32) single-channel MNIST, attention at the coarsest level."""
        levels = 3
        base = dict(image_size=image_size, in_channels=1, out_channels=1, ch=32,
                    ch_mult=(1, 2, 2), num_res_blocks=2,
                    attn_resolutions=(image_size // 2 ** (levels - 1),), dropout=0.1,
                    groups=8, eps=1e-6)
        return cls(**{**base, **overrides})

    @classmethod
    def mnist_small(cls, image_size: int = 28, **overrides) -> "UNetConfig":
        """The mnist preset at half width with one ResBlock per level and no dropout (280,881
        parameters class-conditional): about 4x cheaper per step, sized for a CPU run."""
        base = dict(ch=16, num_res_blocks=1, dropout=0.0)
        return cls.mnist(image_size=image_size, **{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "UNetConfig":
        """A minimal config for gradient checks: every block type, a handful of channels."""
        base = dict(image_size=4, in_channels=1, out_channels=1, ch=4, ch_mult=(1, 2),
                    num_res_blocks=1, attn_resolutions=(2,), dropout=0.0, groups=2, eps=1e-6)
        return cls(**{**base, **overrides})


def _resnet(shapes: OrderedDict, prefix: str, cin: int, cout: int, temb: int) -> None:
    shapes[f"{prefix}.norm1.weight"] = (cin,)
    shapes[f"{prefix}.norm1.bias"] = (cin,)
    shapes[f"{prefix}.conv1.weight"] = (cout, cin, 3, 3)
    shapes[f"{prefix}.conv1.bias"] = (cout,)
    shapes[f"{prefix}.time_emb_proj.weight"] = (cout, temb)
    shapes[f"{prefix}.time_emb_proj.bias"] = (cout,)
    shapes[f"{prefix}.norm2.weight"] = (cout,)
    shapes[f"{prefix}.norm2.bias"] = (cout,)
    shapes[f"{prefix}.conv2.weight"] = (cout, cout, 3, 3)
    shapes[f"{prefix}.conv2.bias"] = (cout,)
    if cin != cout:
        shapes[f"{prefix}.conv_shortcut.weight"] = (cout, cin, 1, 1)
        shapes[f"{prefix}.conv_shortcut.bias"] = (cout,)


def _attention(shapes: OrderedDict, prefix: str, c: int) -> None:
    shapes[f"{prefix}.group_norm.weight"] = (c,)
    shapes[f"{prefix}.group_norm.bias"] = (c,)
    for name in ("to_q", "to_k", "to_v", "to_out.0"):
        shapes[f"{prefix}.{name}.weight"] = (c, c)
        shapes[f"{prefix}.{name}.bias"] = (c,)


def parameter_shapes(config: UNetConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """Every parameter of the UNet for `config`, name -> shape, in a fixed order (diffusers registers some in another order; names and shapes match)."""
    if not isinstance(config, UNetConfig):
        raise TypeError(f"config must be a UNetConfig, got {type(config).__name__}")
    s: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    ch, temb = config.ch, config.time_embed_dim
    chans = config.block_channels
    c0 = chans[0]
    s["conv_in.weight"] = (c0, config.in_channels, 3, 3)
    s["conv_in.bias"] = (c0,)
    s["time_embedding.linear_1.weight"] = (temb, ch)
    s["time_embedding.linear_1.bias"] = (temb,)
    s["time_embedding.linear_2.weight"] = (temb, temb)
    s["time_embedding.linear_2.bias"] = (temb,)
    if config.num_classes is not None:
        s["class_embedding.weight"] = (config.num_classes + 1, temb)

    cin = c0
    for i, cout in enumerate(chans):
        for j in range(config.num_res_blocks):
            _resnet(s, f"down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout, temb)
        if config.level_has_attention(i):
            for j in range(config.num_res_blocks):
                _attention(s, f"down_blocks.{i}.attentions.{j}", cout)
        if i < config.levels - 1:
            s[f"down_blocks.{i}.downsamplers.0.conv.weight"] = (cout, cout, 3, 3)
            s[f"down_blocks.{i}.downsamplers.0.conv.bias"] = (cout,)
        cin = cout

    c_mid = chans[-1]
    if config.mid_attention:
        _attention(s, "mid_block.attentions.0", c_mid)
    _resnet(s, "mid_block.resnets.0", c_mid, c_mid, temb)
    _resnet(s, "mid_block.resnets.1", c_mid, c_mid, temb)

    rev = list(reversed(chans))
    prev_out = rev[0]
    for i, cout in enumerate(rev):
        level = config.levels - 1 - i
        skip_in = rev[min(i + 1, len(rev) - 1)]  # channels of the level below's skips
        for j in range(config.num_res_blocks + 1):
            res_skip = skip_in if j == config.num_res_blocks else cout
            res_in = prev_out if j == 0 else cout
            _resnet(s, f"up_blocks.{i}.resnets.{j}", res_in + res_skip, cout, temb)
        if config.level_has_attention(level):
            for j in range(config.num_res_blocks + 1):
                _attention(s, f"up_blocks.{i}.attentions.{j}", cout)
        if i < config.levels - 1:
            s[f"up_blocks.{i}.upsamplers.0.conv.weight"] = (cout, cout, 3, 3)
            s[f"up_blocks.{i}.upsamplers.0.conv.bias"] = (cout,)
        prev_out = cout

    s["conv_norm_out.weight"] = (c0,)
    s["conv_norm_out.bias"] = (c0,)
    s["conv_out.weight"] = (config.out_channels, c0, 3, 3)
    s["conv_out.bias"] = (config.out_channels,)
    return s


def count_parameters(config: UNetConfig) -> int:
    total = 0
    for shape in parameter_shapes(config).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
