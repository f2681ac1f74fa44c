"""ddpm.FastSampler: the same images as ddpm.sample, eagerly on the CPU and replayed in a CUDA graph."""

import numpy as np
import pytest
import torch

import ddpm
import reference
from ddpm import FastSampler
from tests.helpers import assert_close

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device (none here)")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ddpm.UNet(reference.UNetConfig.tiny(num_classes=10), zero_init=False)


@pytest.fixture(scope="module")
def schedule():
    return reference.make_schedule("linear", 100)


@pytest.mark.parametrize("kind, extra", [("ddim", {}), ("ddim", {"eta": 0.5}), ("ddpm", {}),
                                         ("dpm_solver++", {})])
def test_eager_path_equals_sample(model, schedule, kind, extra):
    fast = FastSampler(model, schedule, sampler=kind, num_steps=8, clip=(-1, 1), **extra)
    y = torch.tensor([0, 3, 9])
    got = fast(3, seed=11, samples=[4, 5, 6], y=y)
    want = ddpm.sample(model, (3, 1, 4, 4), schedule, sampler=kind, num_steps=8, clip=(-1, 1), seed=11,
                       samples=[4, 5, 6], y=y, **extra)
    assert torch.equal(got, want)


def test_guidance_and_repeated_calls(model, schedule):
    fast = FastSampler(model, schedule, num_steps=6, guidance_scale=3.0)
    y = torch.tensor([1, 2])
    first = fast(2, seed=1, y=y)
    other = fast(2, seed=2, y=torch.tensor([5, 6]))   # same cached runner, new seed and labels
    again = fast(2, seed=1, y=y)
    want = ddpm.sample(model, (2, 1, 4, 4), schedule, num_steps=6, seed=2, y=torch.tensor([5, 6]),
                       guidance_scale=3.0)
    assert torch.equal(first, again)
    assert torch.equal(other, want)
    assert not torch.equal(first, other)


def test_model_left_unchanged(model, schedule):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FastSampler(model, schedule, num_steps=4, dtype=torch.float64)(1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)


def test_bad_arguments(model, schedule):
    with pytest.raises(ValueError, match="sampler"):
        FastSampler(model, schedule, sampler="euler")
    with pytest.raises(ValueError, match="class labels"):
        FastSampler(model, schedule, guidance_scale=2.0)(2)
    with pytest.raises(TypeError, match="model"):
        FastSampler(lambda x, t: x, schedule)
    with pytest.raises(ValueError, match="image_shape"):
        FastSampler(torch.nn.Linear(2, 2), schedule)
    fast = FastSampler(model, schedule, num_steps=4)
    with pytest.raises(ValueError, match="n must"):
        fast(0)
    with pytest.raises(ValueError, match="y must"):
        fast(2, y=torch.tensor([0, 11]))


@needs_cuda
@pytest.mark.parametrize("kind, extra", [("ddim", {}), ("ddpm", {}), ("dpm_solver++", {}),
                                         ("ddim", {"eta": 1.0, "guidance_scale": 2.0})])
def test_cuda_graph_replay_equals_eager_fp32(model, schedule, kind, extra):
    dev = torch.device("cuda")
    y = torch.arange(4, device=dev)
    graph = FastSampler(model.to(dev), schedule, sampler=kind, num_steps=10, dtype=torch.float32,
                        channels_last=True, **extra)
    eager = FastSampler(model.to(dev), schedule, sampler=kind, num_steps=10, dtype=torch.float32,
                        channels_last=True, cuda_graph=False, **extra)
    for seed in (0, 1):
        assert torch.equal(graph(4, seed=seed, y=y), eager(4, seed=seed, y=y))


@needs_cuda
def test_cuda_bf16_close_to_fp32_eager(model, schedule):
    """bf16 weights/activations vs the fp32 eager sampler: the stated bf16 tolerance (atol 0.1 on
    images in [-1, 1] after 10 clipped DDIM steps; bf16 keeps 8 bits of mantissa)."""
    dev = torch.device("cuda")
    y = torch.arange(8, device=dev) % 10
    fast = FastSampler(model.to(dev), schedule, num_steps=10, clip=(-1, 1))
    want = ddpm.sample(model.to(dev), (8, 1, 4, 4), schedule, num_steps=10, clip=(-1, 1), seed=0, y=y)
    assert_close(fast(8, seed=0, y=y).float(), want, atol=0.1, rtol=0.0, name="bf16 fast vs fp32 eager")


def test_callers_index_and_label_tensors_are_not_written(model, schedule):
    """The runner keeps private copies of samples and y: later calls copy into those, not into
    the tensors a caller passed before."""
    fast = FastSampler(model, schedule, num_steps=3)
    samples, y = torch.tensor([0, 1]), torch.tensor([2, 3])
    fast(2, samples=samples, y=y)
    fast(2, samples=torch.tensor([5, 6]), y=torch.tensor([7, 8]))
    assert samples.tolist() == [0, 1] and y.tolist() == [2, 3]


def test_graph_cache_keeps_the_most_recent(model, schedule):
    fast = FastSampler(model, schedule, sampler="ddpm", num_steps=3, max_graphs=2)
    for seed in (0, 1, 2, 1):
        fast(1, seed=seed)
    assert list(fast._cache) == [(1, True, 2), (1, True, 1)]
    with pytest.raises(ValueError, match="max_graphs"):
        FastSampler(model, schedule, max_graphs=0)


@pytest.mark.parametrize("kind, extra, stochastic", [("ddim", {}, False), ("ddim", {"eta": 0.5}, True),
                                                     ("ddpm", {}, True), ("dpm_solver++", {}, False)])
def test_runs_the_reference_plan(model, schedule, kind, extra, stochastic):
    """FastSampler holds the plan of reference.sampling_plan (the one ddpm.Sampler runs) and
    captures per seed exactly when the plan draws per-step noise."""
    fast = FastSampler(model, schedule, sampler=kind, num_steps=5, **extra)
    plan = reference.sampling_plan(schedule, kind, 5, **extra)
    assert np.array_equal(fast.plan.coefficients, plan.coefficients)
    assert fast.plan.timesteps.tolist() == plan.timesteps.tolist()
    assert fast.stochastic is stochastic


def test_writes_no_private_state_of_the_sampler():
    """FastSampler drives ddpm.Sampler through its public loop/copy_inputs_ only."""
    import ast
    import inspect

    import ddpm.fast_sampler

    tree = ast.parse(inspect.getsource(ddpm.fast_sampler))
    written = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
               and isinstance(node.ctx, ast.Store) and node.attr.startswith("_")
               and not (isinstance(node.value, ast.Name) and node.value.id == "self")]
    assert written == []
