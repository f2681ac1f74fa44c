"""diffusers UNet2DModel weights <-> ddpm.UNet: configs, names, outputs, files, legacy names.

No network: the diffusers models are built randomly initialised from configs (the DDPM CIFAR-10
layout with small channels for the float64 output checks, the real 35.7M layout for names and
shapes only). Tests that need diffusers skip with a reason when it is not installed (it is the
optional `diffusers` extra); the config mapping and file handling run without it.

diffusers computes the sinusoidal time embedding in float32 (get_timestep_embedding), the
reference and ddpm.UNet in float64. For the 1e-10 float64 comparison the diffusers model's
`time_proj` is replaced by the reference's float64 embedding (same formula, computed in
float64); with its stock float32 embedding the outputs agree to float32 round-off of the
embedding (checked at 1e-5).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import ddpm
import reference
from ddpm.diffusers_io import (
    WEIGHTS_UNDETERMINED,
    config_from_diffusers,
    diffusers_config,
    infer_config,
    normalize_diffusers_state_dict,
    save_diffusers,
    to_diffusers,
)
from reference.layers import timestep_embedding
from tests.helpers import rel_error

REL_TOL = 1e-10
from_diffusers = ddpm.UNet.from_diffusers

# The DDPM CIFAR-10 layout (DownBlock2D / AttnDownBlock2D at 16x16 / ...) with small channels.
SMALL_CIFAR = reference.UNetConfig(image_size=16, in_channels=3, out_channels=3, ch=8,
                                   ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(8,),
                                   dropout=0.0, groups=4, eps=1e-6)
# The config.json of the hub's DDPM CIFAR-10 checkpoint (google/ddpm-cifar10-32): the keys diffusers'
# DDPM conversion wrote (older keys such as these, no dropout/add_attention: defaults apply).
HUB_DDPM_CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}


@pytest.fixture(scope="module")
def UNet2DModel():
    diffusers = pytest.importorskip(
        "diffusers", reason="diffusers is not installed (optional extra: pip install -e '.[diffusers]')")
    return diffusers.UNet2DModel


def _diffusers_model(UNet2DModel, config: reference.UNetConfig, seed: int = 0):
    kwargs = {k: v for k, v in diffusers_config(config).items() if not k.startswith("_")}
    torch.manual_seed(seed)
    model = UNet2DModel(**kwargs)
    # randomise the norms too (diffusers initialises them to 1 and 0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return model.double().eval()


class Float64TimeProj(nn.Module):
    """diffusers' Timesteps evaluated in float64 (reference.layers.timestep_embedding)."""

    def __init__(self, config: reference.UNetConfig):
        super().__init__()
        self.config = config

    def forward(self, t):
        emb = timestep_embedding(t.cpu().numpy(), self.config.ch, self.config.flip_sin_to_cos,
                                 self.config.freq_shift)
        return torch.from_numpy(emb)


def _inputs(config, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, config.in_channels, config.image_size, config.image_size,
                    generator=g, dtype=torch.float64)
    t = torch.tensor([0, 517, 999][:n])
    y = None if config.num_classes is None else torch.tensor([0, config.num_classes, 1][:n])
    return x, t, y


# ----------------------------------------------------------------------------- configs

def test_hub_ddpm_cifar10_config_is_the_cifar10_preset():
    assert config_from_diffusers(HUB_DDPM_CIFAR10_CONFIG) == reference.UNetConfig.ddpm_cifar10(dropout=0.0)


def test_hub_ddpm_256_layout_maps_attention_levels_by_mirroring():
    # google/ddpm-cat-256's layout: six levels, attention at 16x16 (down index 4 = up index 1)
    cfg = {**HUB_DDPM_CIFAR10_CONFIG, "sample_size": 256,
           "block_out_channels": [128, 128, 256, 256, 512, 512],
           "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
           "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4}
    config = config_from_diffusers(cfg)
    assert config.ch_mult == (1, 1, 2, 2, 4, 4) and config.attn_resolutions == (16,)
    assert [config.level_has_attention(i) for i in range(6)] == [False] * 4 + [True, False]
    assert diffusers_config(config)["up_block_types"] == cfg["up_block_types"]


@pytest.mark.parametrize("config", [
    reference.UNetConfig.ddpm_cifar10(),
    SMALL_CIFAR,
    reference.UNetConfig.tiny(num_classes=5, num_heads=2, flip_sin_to_cos=True, freq_shift=0,
                              downsample_padding=1, mid_attention=False),
    reference.UNetConfig.digits8(attn_resolutions=(), num_classes=10),
])
def test_diffusers_config_round_trip(config):
    cfg = diffusers_config(config)
    assert json.loads(json.dumps(cfg)) == cfg  # JSON-ready
    assert config_from_diffusers(cfg) == config


def test_missing_config_keys_take_diffusers_defaults():
    cfg = {"sample_size": 8, "block_out_channels": [32, 64],
           "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
           "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
    config = config_from_diffusers(cfg)
    # UNet2DModel defaults: flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
    # norm_eps=1e-5, attention_head_dim=8 (64 / 8 = 8 heads), in/out channels 3
    assert (config.flip_sin_to_cos, config.freq_shift, config.downsample_padding) == (True, 0, 1)
    assert (config.eps, config.num_heads, config.in_channels, config.groups) == (1e-5, 8, 3, 32)
    assert config.attn_resolutions == (4,) and config.mid_attention


@pytest.mark.parametrize("change, match", [
    ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]},
     "down_block_types"),
    ({"up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D", "SkipUpBlock2D"]}, "up_block_types"),
    ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}, "mirrors"),
    ({"time_embedding_type": "fourier"}, "time_embedding_type"),
    ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ({"class_embed_type": "timestep"}, "class_embed_type"),
    ({"center_input_sample": True}, "center_input_sample"),
    ({"act_fn": "gelu"}, "act_fn"),
    ({"mid_block_scale_factor": 1.41421356}, "mid_block_scale_factor"),
    ({"mid_block_type": None}, "mid_block_type"),
    ({"downsample_type": "resnet"}, "downsample_type"),
    ({"attn_norm_num_groups": 8}, "attn_norm_num_groups"),
    ({"time_embedding_dim": 256}, "time_embedding_dim"),
    ({"attention_head_dim": 96}, "attention_head_dim=96 .* must divide the attention channels 256"),
    ({"sample_size": None}, "sample_size=None"),
    ({"sample_size": [32, 16]}, "sample_size"),
    ({"_class_name": "UNet2DConditionModel"}, "_class_name"),
])
def test_unrepresentable_diffusers_configs_are_rejected(change, match):
    with pytest.raises(ValueError, match=match):
        config_from_diffusers({**HUB_DDPM_CIFAR10_CONFIG, **change})


def test_unknown_config_keys_warn_and_bad_types_raise():
    with pytest.warns(UserWarning, match="unknown to UNet2DModel"):
        config_from_diffusers({**HUB_DDPM_CIFAR10_CONFIG, "upcast_everything": True})
    with pytest.raises(TypeError, match="diffusers_cfg must be a dict"):
        config_from_diffusers(reference.UNetConfig.tiny())
    with pytest.raises(ValueError, match="num_heads=2 with attention on"):
        diffusers_config(reference.UNetConfig.tiny(num_heads=2, attn_resolutions=(4,), ch_mult=(1, 2)))


# ----------------------------------------------------------------------------- the real layout

def test_ddpm_cifar10_layout_names_and_shapes_match_diffusers(UNet2DModel):
    config = reference.UNetConfig.ddpm_cifar10()
    kwargs = {k: v for k, v in diffusers_config(config).items() if not k.startswith("_")}
    with torch.device("meta"):  # names and shapes only: no 35.7M-parameter initialisation
        model = UNet2DModel(**kwargs)
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = dict(reference.parameter_shapes(config))
    assert theirs == ours
    assert sum(int(np.prod(s)) for s in theirs.values()) == 35_746_307
    assert config_from_diffusers(dict(model.config)) == config
    with torch.device("meta"):
        unet = ddpm.UNet(config)
    assert {k: tuple(v.shape) for k, v in unet.state_dict().items()} == ours


# ----------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("config", [
    SMALL_CIFAR,
    SMALL_CIFAR.__class__(**{**SMALL_CIFAR.to_dict(), "num_classes": 4, "num_heads": 2,
                             "ch_mult": (1, 2, 2), "image_size": 8, "attn_resolutions": (4,),
                             "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1}),
])
def test_outputs_equal_diffusers_in_float64(UNet2DModel, config):
    theirs = _diffusers_model(UNet2DModel, config)
    ours = from_diffusers(theirs.state_dict(), dict(theirs.config)).eval()
    assert ours.config == config and ours.dtype == torch.float64
    x, t, y = _inputs(config)
    with torch.no_grad():
        expected_stock = theirs(x, t, y).sample
        theirs.time_proj = Float64TimeProj(config)
        expected = theirs(x, t, y).sample
        actual = ours(x, t, y)
    err = rel_error(actual, expected)
    assert err <= REL_TOL, f"relative error {err:.2e} vs diffusers (float64 time embedding)"
    # stock diffusers: its float32 sinusoidal embedding is the only difference
    assert rel_error(actual, expected_stock) <= 1e-5


def test_state_dict_round_trip_through_diffusers(UNet2DModel):
    config = SMALL_CIFAR
    torch.manual_seed(3)
    ours = ddpm.UNet(config, zero_init=False)
    state = to_diffusers(ours)
    assert list(state) == list(reference.parameter_shapes(config))
    assert all(torch.equal(state[k], v) for k, v in ours.to_diffusers().items())
    theirs = UNet2DModel(**{k: v for k, v in diffusers_config(config).items() if not k.startswith("_")})
    theirs.load_state_dict(state, strict=True)
    back = ddpm.UNet.from_diffusers(theirs.state_dict(), dict(theirs.config))
    assert back.config == config
    for name, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


# ----------------------------------------------------------------------------- files

def test_safetensors_file_round_trip(tmp_path):
    config = reference.UNetConfig.tiny(num_classes=3, flip_sin_to_cos=True, image_size=8,
                                       attn_resolutions=(4,))
    torch.manual_seed(4)
    model = ddpm.UNet(config, zero_init=False).double()
    path = save_diffusers(model, tmp_path / "unet.safetensors")
    loaded = ddpm.UNet.from_diffusers(path)  # config from the file's metadata
    assert loaded.config == config and loaded.dtype == torch.float64
    x, t, y = _inputs(config, n=2)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))
    as_float32 = ddpm.UNet.from_diffusers(str(path), dtype=torch.float32)
    assert as_float32.dtype == torch.float32


def test_save_pretrained_directories_load_both_ways(UNet2DModel, tmp_path):
    config = SMALL_CIFAR
    torch.manual_seed(5)
    model = ddpm.UNet(config, zero_init=False).double().eval()
    save_diffusers(model, tmp_path / "ours")
    theirs = UNet2DModel.from_pretrained(tmp_path / "ours").double().eval()  # a local directory
    theirs.time_proj = Float64TimeProj(config)
    x, t, _ = _inputs(config)
    with torch.no_grad():
        assert rel_error(model(x, t), theirs(x, t).sample) <= REL_TOL
    # diffusers' own save_pretrained layout (config.json + diffusion_pytorch_model.safetensors)
    theirs_saved = _diffusers_model(UNet2DModel, config, seed=6)
    theirs_saved.save_pretrained(tmp_path / "theirs")
    loaded = from_diffusers(tmp_path / "theirs")
    assert loaded.config == config
    for name, value in theirs_saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_broken_and_missing_files_are_value_errors(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="cannot read"):
        from_diffusers(broken)
    with pytest.raises(ValueError, match="no such file"):
        from_diffusers(tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="holds none of"):
        from_diffusers(tmp_path)
    other = tmp_path / "weights.npz"
    other.write_bytes(b"PK")
    with pytest.raises(ValueError, match="is not a .safetensors/.bin/.pt file"):
        from_diffusers(other)
    with pytest.raises(TypeError, match="state_dict_or_path must be"):
        from_diffusers(42)


# ----------------------------------------------------------------------------- legacy names

def _legacy(state: dict, conv_shaped: bool) -> dict:
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    out = {}
    for key, value in state.items():
        for new, old in legacy_names.items():
            if f".{new}." in key and ".attentions." in key:
                key = key.replace(f".{new}.", f".{old}.")
                if conv_shaped and value.ndim == 2:
                    value = value[:, :, None, None]
        out[key] = value
    return out


@pytest.mark.parametrize("conv_shaped", [False, True])
def test_legacy_attention_names_load(conv_shaped):
    config = SMALL_CIFAR
    torch.manual_seed(7)
    model = ddpm.UNet(config, zero_init=False)
    legacy = _legacy(model.state_dict(), conv_shaped)
    assert any(".query.weight" in k for k in legacy) and any(".proj_attn.bias" in k for k in legacy)
    loaded = ddpm.UNet.from_diffusers(legacy, config)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_legacy_and_current_names_together_are_rejected():
    torch.manual_seed(0)
    state = ddpm.UNet(SMALL_CIFAR).state_dict()
    key = next(k for k in state if k.endswith("attentions.0.to_q.weight"))
    state[key.replace("to_q", "query")] = state[key]
    with pytest.raises(ValueError, match="both"):
        normalize_diffusers_state_dict(state)


# ----------------------------------------------------------------------------- bad state dicts

def test_missing_unexpected_and_wrong_shape_keys_are_listed():
    torch.manual_seed(0)
    state = dict(ddpm.UNet(SMALL_CIFAR).state_dict())
    del state["conv_in.bias"]
    state["mid_block.attentions.0.rel_pos"] = torch.zeros(3)
    state["conv_out.weight"] = torch.zeros(3, 8, 1, 1)
    with pytest.raises(ValueError) as info:
        from_diffusers(state, SMALL_CIFAR)
    message = str(info.value)
    assert "missing 1 key(s): ['conv_in.bias']" in message
    assert "unexpected 1 key(s): ['mid_block.attentions.0.rel_pos']" in message
    assert "conv_out.weight: expected (3, 8, 3, 3), got (3, 8, 1, 1)" in message


def test_non_finite_and_non_float_weights_are_rejected():
    torch.manual_seed(0)
    state = dict(ddpm.UNet(SMALL_CIFAR).state_dict())
    state["conv_in.bias"] = state["conv_in.bias"].clone()
    state["conv_in.bias"][0] = float("nan")
    with pytest.raises(ValueError, match="conv_in.bias contains NaN"):
        from_diffusers(state, SMALL_CIFAR)
    state["conv_in.bias"] = torch.zeros(8, dtype=torch.int64)
    with pytest.raises(TypeError, match="conv_in.bias must be a floating tensor"):
        from_diffusers(state, SMALL_CIFAR)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        from_diffusers({"conv_in.weight": np.zeros((8, 3, 3, 3))}, SMALL_CIFAR)
    with pytest.raises(TypeError, match="config must be"):
        from_diffusers(ddpm.UNet(SMALL_CIFAR).state_dict(), config="cifar10")


def test_infer_config_recovers_what_shapes_record():
    config = reference.UNetConfig.ddpm_cifar10(ch=32, num_classes=10, dropout=0.0)
    with torch.device("meta"):
        state = ddpm.UNet(config).state_dict()
    settings = {k: v for k, v in diffusers_config(config).items() if k in WEIGHTS_UNDETERMINED}
    assert infer_config(state, settings) == config
    with pytest.raises(ValueError, match="has no 'conv_in.weight'"):
        infer_config({})
