"""ddpm.DiT: equal to reference.DiT in float64 (outputs and every gradient, relative error
<= 1e-10), diffusers DiTTransformer2DModel import/export (state dict and save_pretrained folder)
with the same outputs, the XL/2 parameter count against diffusers', and bad input.

diffusers computes the sinusoid of t (t * freq rounded to float32: up to 999 * 2^-24 ~ 6e-5 rad
off at t = 999) and the position embedding in float32 whatever the model's dtype. So the
diffusers comparisons run both models in float64 at t in {0, 1, 2} (measured max relative error
5.8e-8, the float32 position embedding; bound 1e-6) and in float32 at t up to 999 (measured
1.9e-5, the float32 sinusoid; bound 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
from ddpm import DiT
from reference import DiTConfig, dit_count_parameters
from tests.helpers import rel_error

SMALL = DiTConfig(image_size=8, in_channels=2, patch_size=2, hidden_size=32, depth=2, num_heads=4,
                  num_classes=5, learn_sigma=True, mlp_eps=1e-5)


def _randomize(params: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=v.shape) * (0.3 if v.ndim == 1 else 0.8 / np.sqrt(np.prod(v.shape[1:])))
            for k, v in params.items()}


@pytest.mark.parametrize("config", [DiTConfig.tiny(), DiTConfig.tiny(num_classes=None, learn_sigma=False, patch_size=1)],
                         ids=["conditional", "unconditional-patch1"])
def test_torch_equals_reference_in_float64(config):
    ref = reference.DiT(config, _randomize(reference.DiT(config).params, 0))
    model = DiT(config).double()
    model.load_numpy_params(ref.params)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, config.in_channels, config.image_size, config.image_size))
    t = np.array([0, 17, 999])
    y = np.array([0, 2, config.num_classes]) if config.num_classes else None
    want = ref.forward(x, t, y)
    g = rng.normal(size=want.shape)
    dx = ref.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    out = model(xt, torch.tensor(t), None if y is None else torch.tensor(y))
    out.backward(torch.tensor(g))
    assert rel_error(out, want) <= 1e-10
    assert rel_error(xt.grad, dx) <= 1e-10
    names = dict(model.named_parameters())
    assert set(names) == set(ref.grads)
    for name, p in names.items():
        assert rel_error(p.grad, ref.grads[name]) <= 1e-10, name


def test_zero_init_and_initial_scales_match_reference_scheme():
    model = DiT(SMALL)
    out = model(torch.randn(2, 2, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 5]))
    assert torch.all(out == 0)
    w = model.blocks[0].mlp.fc1.weight
    assert w.abs().max() <= (6.0 / (w.shape[0] + w.shape[1])) ** 0.5
    assert 0.015 < model.t_embedder.mlp[0].weight.std() < 0.025
    assert set(model.state_dict()) == set(reference.dit_parameter_shapes(SMALL))


def _diffusers_model(config: DiTConfig, seed: int = 0):
    """A randomly initialised DiTTransformer2DModel whose blocks share block 0's embedders (as the
    converted paper checkpoints do)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    cfg = reference.dit_config.dit_diffusers_config(config)
    model = DiTTransformer2DModel(**cfg).eval()
    state = model.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            value.copy_(torch.randn_like(value) * 0.2)
        for name in state:
            if ".norm1.emb." in name and not name.startswith("transformer_blocks.0."):
                state[name].copy_(state["transformer_blocks.0." + name.split(".", 2)[2]])
    return model


def _assert_same_outputs(ours, theirs, config):
    x, t, y = _inputs(config)
    y_theirs = y if config.num_classes is not None else torch.zeros_like(y)
    y_ours = y if config.num_classes is not None else None
    with torch.no_grad():
        assert rel_error(ours(x, t, y_ours), theirs(x, timestep=t, class_labels=y_theirs).sample) <= 1e-4
        ours64, theirs64, small_t = ours.double(), theirs.double(), torch.tensor([0, 1, 2])
        got = ours64(x.double(), small_t, y_ours)
        assert rel_error(got, theirs64(x.double(), timestep=small_t, class_labels=y_theirs).sample) <= 1e-6
    ours.float(), theirs.float()


def _inputs(config, n=3):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(n, config.in_channels, config.image_size, config.image_size, generator=gen)
    return x, torch.tensor([0, 250, 999][:n]), torch.tensor([0, 3, (config.num_classes or 1) - 1][:n])


def test_import_from_diffusers_state_dict_gives_the_same_outputs():
    theirs = _diffusers_model(SMALL)
    ours = DiT.from_diffusers(theirs.state_dict(), dict(theirs.config)).eval()
    assert ours.config == SMALL and ours.dtype == torch.float32
    _assert_same_outputs(ours, theirs, SMALL)


def test_export_and_save_pretrained_round_trip(tmp_path):
    from diffusers import DiTTransformer2DModel

    ours = DiT(SMALL)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    folder = ours.save_diffusers(tmp_path / "dit")
    theirs = DiTTransformer2DModel.from_pretrained(folder).eval()
    _assert_same_outputs(ours, theirs, SMALL)
    back = DiT.from_diffusers(folder)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))
    state = ours.to_diffusers()
    assert set(state) == set(theirs.state_dict())


def test_unconditional_exports_with_a_zero_label_embedding():
    from diffusers import DiTTransformer2DModel

    cfg = DiTConfig.from_dict({**SMALL.to_dict(), "num_classes": None, "learn_sigma": False})
    ours = DiT(cfg)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    theirs = DiTTransformer2DModel(**reference.dit_config.dit_diffusers_config(cfg)).eval()
    theirs.load_state_dict(ours.to_diffusers())
    _assert_same_outputs(ours.eval(), theirs, cfg)


def test_import_refuses_per_block_embedders_and_missing_heads():
    theirs = _diffusers_model(SMALL)
    state = dict(theirs.state_dict())
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.weight"
    state[key] = state[key] + 1
    with pytest.raises(ValueError, match="shares one timestep/label embedder"):
        DiT.from_diffusers(state, SMALL)
    with pytest.raises(ValueError, match="num_attention_heads cannot be read"):
        DiT.from_diffusers(theirs.state_dict())


def test_xl2_parameter_count_against_paper_and_diffusers():
    """DiT-XL/2 at 256x256: ours 674,834,720 (+ the paper code's frozen pos_embed 294,912 =
    675,129,632, the paper's "675M"); diffusers' model holds one t/label embedder per block."""
    from diffusers import DiTTransformer2DModel

    cfg = DiTConfig.paper("XL", 2)
    with torch.device("meta"):
        ours = DiT(cfg)
        theirs = DiTTransformer2DModel(**reference.dit_config.dit_diffusers_config(cfg))
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    per_block_embedders = 256 * 1152 + 1152 + 1152 * 1152 + 1152 + 1001 * 1152
    assert n_ours == dit_count_parameters(cfg) == 674_834_720
    assert n_theirs == n_ours + 27 * per_block_embedders
    print(f"DiT-XL/2: ours {n_ours:,}; paper 675M (its code: {n_ours + 256 * 1152:,} with the frozen "
          f"pos_embed); diffusers DiTTransformer2DModel {n_theirs:,}")


def test_bad_input_is_named():
    model = DiT(SMALL)
    with pytest.raises(ValueError, match="not divisible by patch_size 2"):
        model(torch.randn(1, 2, 7, 7), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 5\]"):
        model(torch.randn(1, 2, 8, 8), torch.tensor([1]), torch.tensor([6]))
    with pytest.raises(ValueError, match="hidden_size 30 is not divisible by num_heads 4"):
        DiTConfig.from_dict({**SMALL.to_dict(), "hidden_size": 30})
