"""Run under torchrun with 2 CPU processes (gloo): the SCOT loss gathered across processes, and the gradients DDP
averages, equal the single-process loss and gradients on the same global batch. Rank 0 prints one JSON line.

    python -m torch.distributed.run --nproc_per_node 2 tests/trainers/distributed_loss_check.py FOLDER
"""

import faulthandler
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from modeling_scot import ScotModel, compute_scot_loss
from trainers.trainer import gathered_scot_loss  # the package is installed (pip install -e .), as for scot-train

GLOBAL_BATCH = 8


def global_batch(embed_dim):
    generator = torch.Generator().manual_seed(1234)
    return [torch.nn.functional.normalize(torch.randn(GLOBAL_BATCH, embed_dim, generator=generator), dim=-1)
            for _ in range(4)]  # image, modification, modified caption, caption


def combiner_grads(model):
    return torch.cat([p.grad.flatten() for p in model.combiner.parameters()])


def main():
    # a rank stuck in a collective prints every thread's stack and exits, rather than running into the test's timeout
    faulthandler.dump_traceback_later(240, exit=True)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same Combiner init on every process
    model = ScotModel.from_backbone(sys.argv[1], combiner_dropout=0.0).train()
    image, modification, modified, caption = global_batch(model.config.embed_dim)

    # single process, whole global batch
    reference = ScotModel.from_backbone(sys.argv[1], combiner_dropout=0.0).train()
    reference.load_state_dict(model.state_dict())
    reference_composed = reference.get_composed_features(image, text_embeds=modification)
    reference_loss = compute_scot_loss(reference.config, reference_composed, modified, caption)
    reference_loss.backward()

    # this process's share, DDP-wrapped, negatives gathered with gradient
    share = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    ddp = DistributedDataParallel(model)
    composed = ddp(image_embeds=image[share], text_embeds=modification[share]).composed_embeds
    loss = gathered_scot_loss(model.config, composed, modified[share], caption[share])
    loss.backward()

    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    if rank == 0:
        print(json.dumps({
            "world_size": world,
            "single_process_loss": reference_loss.item(),
            "gathered_losses": [value.item() for value in losses],
            "max_grad_difference": (combiner_grads(model) - combiner_grads(reference)).abs().max().item(),
            "max_grad": combiner_grads(reference).abs().max().item(),
        }))
    dist.barrier()
    # no destroy_process_group(): under load, gloo's teardown has been seen to hang one rank after the barrier;
    # every result is out by now, and the process leaves through os._exit below


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    # leave without interpreter teardown: a gloo worker thread has been seen to keep a finished rank alive at exit
    os._exit(0)
