"""Run by test_loader under torchrun: trains a small model under DDP and records each step's size."""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fastresize import ResizeCollate, wrap


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 24, 24), dtype=torch.uint8)
    data = TensorDataset(images, torch.arange(32))
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=4, sampler=sampler, collate_fn=ResizeCollate())
    wrapped = wrap(loader, 16, 64, device="cpu", value_range=(0, 1), dtype=torch.float32, max_first_steps=2)
    model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sizes, indices = [], []
    for _ in range(2):
        for batch, index in wrapped:
            sizes.append(list(batch.shape[2:]))
            indices.extend(index.tolist())
            loss = model(batch).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    gathered = [None] * world
    dist.all_gather_object(gathered, {"sizes": sizes, "indices": indices, "weights": weights})
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    del model, optimizer  # DDP's reducer holds the process group: release it first
    dist.destroy_process_group()
    # Gloo's worker threads can abort the interpreter's finalisation ("terminate called without an
    # active exception", pytorch/pytorch#190489): about 1 run in 10 here. Everything is written
    # and the group is destroyed, so skip the finalisation.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
