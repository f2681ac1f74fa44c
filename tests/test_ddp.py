"""ddpm.distributed: two gloo processes on the CPU behave like one process.

Training: W ranks with batch B/W each have the per-step losses and gradient norms of one process
with batch B, and end with its parameters (DDP averages gradients; every random draw is made for
the global batch and sliced), on random weights so that no gradient is zero by construction. Sampling:
samples split over ranks by global index equal one process's (the counter-based noise stream).
The workers join through torchrun's environment variables, as `torchrun -m ddpm train` does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import ddpm
import reference
from ddpm.checkpoint import load_checkpoint
from ddpm.cli import main
from ddpm.data import ImageDataset
from ddpm.distributed import init_distributed, sample_distributed, shutdown_distributed, single_process
from ddpm.train import TrainConfig, Trainer
from helpers import assert_close, randomize_

SCHEDULE = reference.make_schedule("linear", 40)
STEPS = 3
GLOBAL_BATCH = 8
SAMPLE_N = 5  # split 3 + 2 over two ranks


def dataset() -> ImageDataset:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(20, 1, 4, 4, generator=g) * 2 - 1
    return ImageDataset(images, torch.arange(20) % 3, 3, None, "tiny", hflip=True)


def trainer(ctx) -> Trainer:
    torch.manual_seed(0)
    # random weights (not the zero-initialised output layer), so every gradient is non-zero
    model = randomize_(ddpm.UNet(reference.UNetConfig.tiny(num_classes=3)), seed=4)
    config = TrainConfig(steps=STEPS, batch_size=GLOBAL_BATCH, lr=1e-2, warmup_steps=1, grad_clip=0.5,
                         ema_decay=0.5, label_dropout=0.3, seed=3, adam_eps=1e-3)
    return Trainer(model, SCHEDULE, config, dataset(), ctx=ctx)


def draw(model, ctx):
    y = torch.tensor([0, 1, 2, 0, 1])
    return sample_distributed(model, (SAMPLE_N, 1, 4, 4), SCHEDULE, ctx, y=y, num_steps=4,
                              guidance_scale=2.0, eta=0.5, seed=9)


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        assert (ctx.rank, ctx.world_size, ctx.backend) == (rank, world_size, "gloo")
        tr = trainer(ctx)
        tr.fit(STEPS, progress=False, run_dir=os.path.join(out_dir, "run"))
        images = draw(tr.model.eval(), ctx)
        torch.save({"params": tr.model.state_dict(), "ema": tr.ema.state_dict(),
                    "history": tr.history, "images": images}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        shutdown_distributed(ctx)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(worker, args=(2, free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def one_process():
    tr = trainer(single_process("cpu"))
    tr.fit(STEPS, progress=False)
    return tr


def test_two_gloo_ranks_end_with_the_parameters_of_one_process_with_the_doubled_batch(two_ranks, one_process):
    """Per-step global-batch loss and gradient norm, then weights and EMA, vs one process.

    Tolerances. Both runs compute the same float32 numbers summed in another order (DDP
    all-reduces two half-batch gradients; the loss is a mean of two half-batch means): a few
    float32 ulps, measured <= 2.4e-7 relative for losses and gradient norms, so rtol 2e-6. A
    gradient-averaging error (summed instead of averaged, one rank's gradient only) is a
    factor ~2 in the gradient norm. The weights: adam_eps = 1e-3 makes Adam's update
    lr g / (sqrt(v) + eps) Lipschitz in g (constant lr / eps = 10), so the ~1e-8 gradient
    round-off moves a weight by <= 1e-7 (measured max 1.2e-7); with eps = 1e-8 the gradients
    that are zero in exact arithmetic (to_k.bias) would be moved by lr * sign(round-off).
    """
    _, results = two_ranks
    for key in ("loss", "grad_norm"):
        assert_close(torch.tensor(results[0]["history"][key]), torch.tensor(one_process.history[key]),
                     atol=0, rtol=2e-6, name=f"per-step {key}")
        assert results[0]["history"][key] == results[1]["history"][key], f"ranks disagree on {key}"
    assert results[0]["history"]["step"] == list(range(STEPS))
    for name, value in one_process.model.state_dict().items():
        assert_close(results[0]["params"][name], value, atol=1e-6, rtol=0, name=name)
        assert torch.equal(results[0]["params"][name], results[1]["params"][name]), \
            f"ranks disagree on {name}"
    for name, value in one_process.ema.shadow.items():
        assert_close(results[0]["ema"][name], value, atol=1e-6, rtol=0, name=f"EMA {name}")


def test_only_rank_zero_writes_the_checkpoint_and_it_loads(two_ranks):
    out, _ = two_ranks
    ckpt = load_checkpoint(out / "run")
    assert ckpt.step == STEPS and ckpt.trainer_state["world_size"] == 2
    assert [p.name for p in (out / "run" / "checkpoints").iterdir()] == [f"step_{STEPS:08d}"]


def test_sampling_split_over_two_ranks_equals_one_process(two_ranks):
    _, results = two_ranks
    model = ddpm.UNet(reference.UNetConfig.tiny(num_classes=3))
    model.load_state_dict(results[0]["params"])
    alone = draw(model.eval(), single_process("cpu"))
    assert torch.equal(results[0]["images"], results[1]["images"])  # gathered on every rank
    # same weights, same noise stream; only the batch composition of the model calls differs
    assert_close(results[0]["images"], alone, atol=1e-6, rtol=1e-6, name="split samples")


@pytest.mark.parametrize("draw", [["--num-samples", "2", "--class", "all"],
                                  ["--num-samples", "1", "--class", "2"]],  # rank 1 draws nothing
                         ids=["a-row-per-class", "one-sample"])
def test_torchrun_sample_on_two_ranks_writes_the_one_process_pictures(two_ranks, tmp_path, draw):
    """`torchrun --nproc_per_node 2 -m ddpm sample` (gloo) == `python -m ddpm sample`, byte for byte."""
    out, _ = two_ranks
    root = Path(__file__).resolve().parents[1]
    common = ["sample", "--checkpoint", str(out / "run"), *draw,
              "--guidance", "2", "--steps", "3", "--ema", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ddpm", *common, "--out", str(tmp_path / "two.png"), "--gif", str(tmp_path / "two.gif")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert main(common + ["--out", str(tmp_path / "one.png"), "--gif", str(tmp_path / "one.gif")]) == 0
    for name in ("png", "gif"):
        assert (tmp_path / f"two.{name}").read_bytes() == (tmp_path / f"one.{name}").read_bytes(), name

