"""ddpm.UNet.from_diffusers with no config, or only the keys the weights cannot tell.

The weights' names and shapes fix the layout: channels, levels, layers per block, attention
placement (levels and mid block), class embedding, in/out channels. They cannot fix
`WEIGHTS_UNDETERMINED` (image size, GroupNorm groups and eps, the sinusoid's order and shift,
the downsampling pad, the attention head width): loading without them is a ValueError naming
exactly the keys that are missing, never a guess. With only those keys given, every layout below
loads with the outputs of diffusers' UNet2DModel, float64, <= 1e-10 relative.

diffusers computes its sinusoidal embedding in float32; for the float64 comparison its
`time_proj` is replaced by the reference's float64 embedding (same formula), as in
test_diffusers_io.py. No network: every diffusers model is built from a config, randomly
initialised, GroupNorm affine randomised too.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ddpm
from ddpm.diffusers_io import WEIGHTS_UNDETERMINED, config_from_diffusers, infer_config
from reference.layers import timestep_embedding
from tests.helpers import rel_error

diffusers = pytest.importorskip(
    "diffusers", reason="diffusers is not installed (optional extra: pip install -e '.[diffusers]')")

REL_TOL = 1e-10

# name: (UNet2DModel keyword arguments, the WEIGHTS_UNDETERMINED keys the weights leave open)
LAYOUTS = {
    # the DDPM CIFAR-10 layout with 8 channels: attention at level 1 only, one head, its settings
    "ddpm_cifar10_small": (dict(
        sample_size=16, block_out_channels=(8, 16, 16, 16), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None, norm_num_groups=4, norm_eps=1e-6, flip_sin_to_cos=False,
        freq_shift=1, downsample_padding=0), WEIGHTS_UNDETERMINED),
    # three levels, attention at the first and last with 2 and 6 heads of 8 channels (the mid block
    # 6), one layer per block, 1 -> 2 channels, 4 classes + the null class, diffusers' defaults
    "heads_per_level_classes": (dict(
        sample_size=8, in_channels=1, out_channels=2, block_out_channels=(16, 32, 48),
        layers_per_block=1, down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"), norm_num_groups=8,
        num_class_embeds=5), WEIGHTS_UNDETERMINED),
    # no attention anywhere (so no head width to give), three layers per block, classes
    "no_attention_classes": (dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=3,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        add_attention=False, norm_num_groups=4, num_class_embeds=3, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1),
        tuple(k for k in WEIGHTS_UNDETERMINED if k != "attention_head_dim")),
    # attention in the mid block only, 6 heads of 4 channels
    "mid_attention_only": (dict(
        sample_size=8, block_out_channels=(8, 24), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        attention_head_dim=4, norm_num_groups=4), WEIGHTS_UNDETERMINED),
    # one level: no downsampler, so no downsampling pad to give
    "one_level": (dict(
        sample_size=4, block_out_channels=(8,), layers_per_block=2, down_block_types=("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",), attention_head_dim=2, norm_num_groups=2),
        tuple(k for k in WEIGHTS_UNDETERMINED if k != "downsample_padding")),
}


class Float64TimeProj(nn.Module):
    """diffusers' Timesteps evaluated in float64 (reference.layers.timestep_embedding)."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, t):
        emb = timestep_embedding(t.cpu().numpy(), self.config.ch, self.config.flip_sin_to_cos,
                                 self.config.freq_shift)
        return torch.from_numpy(emb)


def _diffusers_model(kwargs: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**kwargs)
    with torch.no_grad():  # randomise the norms too (diffusers initialises them to 1 and 0)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return model.double().eval()


def _assert_same_outputs(ours: ddpm.UNet, theirs, n: int = 2):
    config = ours.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, config.in_channels, config.image_size, config.image_size, generator=g,
                    dtype=torch.float64)
    t = torch.tensor([0, 517, 999][:n])
    y = None if config.num_classes is None else torch.tensor([config.num_classes, 1, 0][:n])
    theirs.time_proj = Float64TimeProj(config)
    with torch.no_grad():
        expected = theirs(x, t, y).sample
        actual = ours.eval()(x, t, y)
    err = rel_error(actual, expected)
    assert err <= REL_TOL, f"relative error {err:.2e} vs diffusers UNet2DModel (float64)"


# ----------------------------------------------------------------------------- several layouts

@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_comes_from_the_weights_and_outputs_equal_diffusers(name):
    kwargs, open_keys = LAYOUTS[name]
    theirs = _diffusers_model(kwargs)
    full = dict(theirs.config)
    state = theirs.state_dict()

    # no config: a ValueError naming exactly the keys the weights leave open
    with pytest.raises(ValueError, match="do not determine") as info:
        ddpm.UNet.from_diffusers(state)
    assert f"{list(open_keys)}" in str(info.value)

    # those keys alone: the rest (channels, levels, layers, attention, classes) from the weights
    ours = ddpm.UNet.from_diffusers(state, {k: full[k] for k in open_keys})
    assert ours.config == config_from_diffusers(full)
    assert ours.dtype == torch.float64
    for key, value in state.items():  # copies of the weights, not views of diffusers' tensors
        assert torch.equal(ours.state_dict()[key], value)
        assert ours.state_dict()[key].data_ptr() != value.data_ptr()
    _assert_same_outputs(ours, theirs)


def test_inferred_fields_of_the_heads_per_level_layout():
    theirs = _diffusers_model(LAYOUTS["heads_per_level_classes"][0])
    settings = {k: dict(theirs.config)[k] for k in WEIGHTS_UNDETERMINED}
    config = infer_config(theirs.state_dict(), settings)
    assert (config.in_channels, config.out_channels, config.ch, config.ch_mult) == (1, 2, 16, (1, 2, 3))
    assert (config.num_res_blocks, config.attn_resolutions, config.mid_attention) == (1, (8, 2), True)
    assert config.num_classes == 4  # 5 rows: 4 classes and the null class
    assert (config.head_channels, [config.heads(c) for c in config.block_channels]) == (8, [2, 4, 6])
    heads = {name: m.heads for name, m in theirs.named_modules() if type(m).__name__ == "Attention"}
    ours = ddpm.UNet(config)
    assert heads == {name: m.num_heads for name, m in ours.named_modules()
                     if isinstance(m, ddpm.unet.AttentionBlock)}


def test_a_save_pretrained_folder_needs_no_config(tmp_path):
    theirs = _diffusers_model(LAYOUTS["heads_per_level_classes"][0], seed=2)
    theirs.save_pretrained(tmp_path / "unet")  # config.json beside the weights
    ours = ddpm.UNet.from_diffusers(tmp_path / "unet")
    assert ours.config == config_from_diffusers(dict(theirs.config))
    _assert_same_outputs(ours, theirs)


def test_a_given_dict_completes_the_stored_config(tmp_path):
    # diffusers' default sample_size=None (any size): the folder's config.json cannot say it
    kwargs = {**LAYOUTS["mid_attention_only"][0], "sample_size": None}
    theirs = _diffusers_model(kwargs, seed=3)
    theirs.save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="sample_size=None"):
        ddpm.UNet.from_diffusers(tmp_path / "unet")
    ours = ddpm.UNet.from_diffusers(tmp_path / "unet", {"sample_size": 8})
    assert ours.config == config_from_diffusers({**theirs.config, "sample_size": 8})
    _assert_same_outputs(ours, theirs)


# ----------------------------------------------------------------------------- diffusers' default

def _fill_from_a_random_pool(model) -> None:
    """Every parameter from one pool of 1,000,003 normals, cycled, scaled by 1/sqrt(fan_in).

    Drawing 274M fresh normals takes ~10 s; the pool's prime length keeps its period off every
    row length, so no two rows or channels are equal, which is all this comparison needs.
    """
    pool = torch.randn(1_000_003, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    offset = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            start = offset % pool.numel()
            values = pool.repeat(-(-(start + p.numel()) // pool.numel()))[start:start + p.numel()]
            fan_in = p[0].numel() if p.ndim > 1 else 1
            shift = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(values.view_as(p) * fan_in ** -0.5 + shift)
            offset += p.numel()


@pytest.mark.slow
def test_diffusers_default_config_loads_with_equal_outputs():
    """UNet2DModel(): 274M parameters, attention_head_dim=8 -> 56, 84, 112 heads at levels 1-3.

    Built on the meta device in float64 and filled without diffusers' initialisation (tens of
    seconds for 274M parameters); 8x8 inputs, the smallest its four levels allow (its
    sample_size is None: any size, which ddpm.UNet must be told). ~15 s on an idle core.
    """
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.device("meta"):
            theirs = diffusers.UNet2DModel()
    finally:
        torch.set_default_dtype(default_dtype)
    theirs = theirs.to_empty(device="cpu").eval()
    _fill_from_a_random_pool(theirs)
    full = dict(theirs.config)
    with pytest.raises(ValueError, match="sample_size=None"):
        ddpm.UNet.from_diffusers(theirs.state_dict(), full)
    ours = ddpm.UNet.from_diffusers(theirs.state_dict(), {**full, "sample_size": 8})
    assert ours.config.head_channels == 8 and ours.config.block_channels == (224, 448, 672, 896)
    heads = {name: m.heads for name, m in theirs.named_modules() if type(m).__name__ == "Attention"}
    assert heads == {name: m.num_heads for name, m in ours.named_modules()
                     if isinstance(m, ddpm.unet.AttentionBlock)}
    assert sorted(set(heads.values())) == [56, 84, 112]  # level 0 has no attention
    _assert_same_outputs(ours, theirs, n=1)


# ----------------------------------------------------------------------------- refusals

SMALL = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
             down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
             attention_head_dim=4)


@pytest.mark.parametrize("change, key", [
    ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift='scale_shift'"),
    ({"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
    ({"time_embedding_type": "learned", "num_train_timesteps": 10}, "time_embedding_type='learned'"),
    ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
    ({"mid_block_type": None}, "mid_block_type=None"),
    ({"downsample_type": "resnet"}, "downsample_type='resnet'"),
])
def test_weights_of_an_unsupported_variant_are_refused_naming_the_key(change, key):
    with torch.device("meta"):  # names and shapes are all that is read
        theirs = diffusers.UNet2DModel(**{**SMALL, **change})
    settings = {k: dict(theirs.config)[k] for k in WEIGHTS_UNDETERMINED}
    with pytest.raises(ValueError, match=f"diffusers config {key} cannot be represented"):
        infer_config(theirs.state_dict(), settings)


def test_refused_and_contradicting_settings_name_the_key():
    with torch.device("meta"):
        state = diffusers.UNet2DModel(**SMALL).state_dict()
    settings = {k: SMALL.get(k, diffusers_default) for k, diffusers_default in
                [("sample_size", 8), ("norm_num_groups", 4), ("norm_eps", 1e-5), ("flip_sin_to_cos", True),
                 ("freq_shift", 0), ("downsample_padding", 1), ("attention_head_dim", 4)]}
    with pytest.raises(ValueError, match="attention_head_dim=3 .* must divide the attention channels 8"):
        infer_config(state, {**settings, "attention_head_dim": 3})
    with pytest.raises(ValueError, match="sample_size=None"):
        infer_config(state, {**settings, "sample_size": None})
    with pytest.raises(ValueError, match="sample_size=6 cannot .* a multiple of 4"):
        config_from_diffusers({"sample_size": 6, "block_out_channels": [8, 16, 16],
                               "down_block_types": ["DownBlock2D"] * 3, "up_block_types": ["UpBlock2D"] * 3})
    # a given key that contradicts the weights
    with pytest.raises(ValueError, match=r"block_out_channels=\[16, 32\] contradicts the weights, .*=\[8, 16\]"):
        ddpm.UNet.from_diffusers(state, {**settings, "block_out_channels": [16, 32]})
    with pytest.raises(ValueError, match="num_class_embeds=11 contradicts the weights"):
        ddpm.UNet.from_diffusers(state, {**settings, "num_class_embeds": 11})
    with pytest.raises(ValueError, match="down_block_types.* contradicts the weights"):
        ddpm.UNet.from_diffusers(state, {**settings, "down_block_types": ["DownBlock2D", "DownBlock2D"]})
    with pytest.raises(TypeError, match="config must be a UNetConfig, a diffusers config dict or None"):
        ddpm.UNet.from_diffusers(state, "cifar10")
