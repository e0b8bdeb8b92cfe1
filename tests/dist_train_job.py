"""Run under torchrun by tests/store/test_concurrency.py: each rank records its share of every stored batch."""
import json
import sys

import torch
import torch.distributed as dist

torch.set_num_threads(1)
from score_codec.training.replay import ReplayBatchSampler  # noqa: E402

if __name__ == "__main__":
    store, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    sampler = ReplayBatchSampler(store, num_replicas=world, rank=rank)
    mine = {}
    for e in range(3):
        sampler.set_epoch(e)
        mine[e] = [[int(i) for i in batch] for batch in sampler]
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({str(e): {str(r): gathered[r][e] for r in range(world)} for e in range(3)}, fh)
    dist.destroy_process_group()
