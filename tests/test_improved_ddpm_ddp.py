"""Importance-sampled t over two gloo ranks: every rank records the L_t of the whole global batch
(all-gathered in rank order), so the histories, and the t they draw, are those of one process."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

import ddpm
import reference
from ddpm.data import ImageDataset
from ddpm.distributed import init_distributed, shutdown_distributed, single_process
from ddpm.train import TrainConfig, Trainer
from helpers import assert_close

SCHEDULE = reference.make_schedule("cosine", 4)
STEPS = 4


def trainer(ctx) -> Trainer:
    g = torch.Generator().manual_seed(1)
    images = (torch.randint(0, 256, (20, 1, 4, 4), generator=g).double() / 127.5 - 1.0).float()
    torch.manual_seed(0)
    model = ddpm.UNet(reference.UNetConfig.tiny(out_channels=2), zero_init=False)
    config = TrainConfig(steps=STEPS, batch_size=16, lr=1e-3, seed=3, label_dropout=0.0, variance="learned",
                         loss="vlb", timestep_sampling="importance", importance_history=2)
    return Trainer(model, SCHEDULE, config, ImageDataset(images, None, None, None, "grid"), ctx=ctx)


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        tr = trainer(ctx)
        ts = []
        for _ in range(STEPS):
            tr.train_step()
            ts.append(tr._step_t.clone())
        state = tr.importance.state_dict()
        torch.save({"losses": torch.from_numpy(state["losses"]), "counts": torch.from_numpy(state["counts"]),
                    "t": torch.stack(ts)}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        shutdown_distributed(ctx)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_keep_the_importance_history_of_one_process(tmp_path):
    mp.start_processes(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    one = trainer(single_process("cpu"))
    ts = []
    for _ in range(STEPS):
        one.train_step()
        ts.append(one._step_t.clone())
    assert one.importance.warmed_up  # 64 draws over T = 4, 2 values each: the later steps used p_t
    for r in ranks:
        assert torch.equal(r["t"], torch.stack(ts))  # same word of the stream, same p_t
        assert np.array_equal(r["counts"].numpy(), one.importance.counts)
        # float32 L_t of the same model state, summed in another order by DDP: a few ulps
        assert_close(r["losses"], one.importance.losses, atol=1e-6, rtol=1e-4, name="L_t history")
    assert torch.equal(ranks[0]["losses"], ranks[1]["losses"])  # every rank holds the same history
