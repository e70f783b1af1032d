#!/usr/bin/env python3
"""The reference multi-node trainer: a small torch.distributed job that checkpoints like a well-behaved gang.

Started once per member (node) by ``spot.migration.workload`` with the rendezvous in its environment - directly, one
process per member (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), or under ``torchrun``, which reads
the same values from ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_NPROC_PER_NODE``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT`` and sets ``RANK``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` for each process it starts::

    torchrun spot_migration/gang_trainer.py --checkpoint-dir /data/ckpt/ddp        # every value from PET_*

What a job must do to be moved member by member (docs/gang.md):

* **save together, each member its own part**: on ``SIGUSR1`` (any rank) or every ``--every`` steps, all ranks agree
  on the step (an all-reduce of the request at every step) and save it with torch.distributed.checkpoint over the
  *member's* process group (the ranks on this node): each member's ``checkpoint_dir`` then holds a complete DCP
  checkpoint (``.metadata`` + its ranks' ``.distcp`` files) of its own ranks' state, under ``step-<8 digits>``,
  written as ``.step-<n>.tmp`` and renamed once complete;
* **load its own part**: ``--resume PATH`` loads the member's part with the same process group;
* with ``SPOT_GANG_LAYOUT=shared`` (``gang.layout: shared``: a checkpoint directory every member mounts at the same
  path) the whole gang saves one DCP checkpoint there instead, and loads it;
* **read the rendezvous from the environment**, never from its own arguments, so a restart on other hosts (a new
  master when the master was replaced) needs no change to the job;
* **let SIGTERM kill it**: a rank blocked in a collective whose peer is gone cannot run a Python handler; the
  controller stops the members only after their parts of the gang checkpoint are complete.

Each rank keeps a state of its own (``rank<r>.*``, e.g. its data position) besides the replicated model, and writes
``progress-rank<r>.json`` (step, resumed-from step, generation, world size, master) beside its checkpoints; with
``--dump-resumed DIR`` it also writes what it loaded (``DIR/resumed-rank<r>.pt``) so tests can compare tensors.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import time
from datetime import timedelta

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402

DIM = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint-dir", required=True)
    parser.add_argument("--every", type=int, default=0, help="also save every N steps (0: only on SIGUSR1)")
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="stop after this step (0: run until stopped)")
    parser.add_argument("--step-time", type=float, default=0.02)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--collective-timeout", type=float, default=60.0)
    parser.add_argument("--dump-resumed", default=None, metavar="DIR",
                        help="write the state loaded at resume to DIR/resumed-rank<r>.pt (not beside the checkpoints, "
                             "where it would look like one)")
    return parser.parse_args(argv)


def step_name(step):
    return "step-%08d" % step


class GangTrainer:
    def __init__(self, args):
        self.args = args
        self.rank = int(os.environ["RANK"])
        self.world = int(os.environ["WORLD_SIZE"])
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("NPROC_PER_NODE") or 1)
        dist.init_process_group("gloo", timeout=timedelta(seconds=args.collective_timeout))
        if os.environ.get("SPOT_GANG_LAYOUT") == "shared":
            # One directory every member mounts: the whole gang saves one DCP checkpoint there, and loads it.
            self.member_group = dist.group.WORLD
        else:
            # The ranks of this member (torchrun numbers them contiguously per node): the save's and the load's group.
            self.member_group, _ = dist.new_subgroups(group_size=self.local_world)
        torch.manual_seed(1234)
        self.model = torch.nn.Linear(DIM, 1)
        self.optim = torch.optim.SGD(self.model.parameters(), lr=args.lr)
        gen = torch.Generator().manual_seed(99)
        self.data_x = torch.rand(256, DIM, generator=gen) * 2 - 1
        self.data_y = self.data_x @ torch.linspace(-1, 1, DIM) + 0.5
        self.step = 0
        self.position = torch.tensor([self.rank], dtype=torch.int64)  # this rank's own place in the data
        self.resumed_from = None
        self.requested = False
        self.last_checkpoint = None
        signal.signal(signal.SIGUSR1, self._on_usr1)

    def _on_usr1(self, *_):
        self.requested = True

    def state(self):
        return {"model": self.model.state_dict(), "optim": self.optim.state_dict(),
                "step": torch.tensor([self.step], dtype=torch.int64),
                "rank%d" % self.rank: {"position": self.position}}

    # ------------------------------------------------------------ checkpoints
    def resume(self, path):
        state = self.state()
        dcp.load(state, checkpoint_id=path, process_group=self.member_group)
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.step = int(state["step"].item())
        self.position = state["rank%d" % self.rank]["position"]
        self.resumed_from = self.step
        if self.args.dump_resumed:
            os.makedirs(self.args.dump_resumed, exist_ok=True)
            torch.save(self.state(), os.path.join(self.args.dump_resumed, "resumed-rank%d.pt" % self.rank))

    def save(self):
        directory = self.args.checkpoint_dir
        final = os.path.join(directory, step_name(self.step))
        tmp = os.path.join(directory, "." + step_name(self.step) + ".tmp")
        local_first = dist.get_rank(self.member_group) == 0
        if local_first:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
        dist.barrier(group=self.member_group)
        dcp.save(self.state(), checkpoint_id=tmp, process_group=self.member_group)
        dist.barrier(group=self.member_group)
        if local_first:
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.rename(tmp, final)
            self._prune()
        self.last_checkpoint = final

    def _prune(self):
        directory = self.args.checkpoint_dir
        names = sorted(n for n in os.listdir(directory) if n.startswith("step-") and n[5:].isdigit())
        for name in names[:-self.args.keep] if self.args.keep > 0 else []:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            for extra in (".spot-manifest.json",):
                try:
                    os.unlink(os.path.join(directory, name + extra))
                except OSError:
                    pass

    # ------------------------------------------------------------ training
    def train_step(self):
        index = int(self.position.item()) % len(self.data_x)
        x, y = self.data_x[index:index + 1], self.data_y[index:index + 1]
        self.optim.zero_grad()
        loss = torch.nn.functional.mse_loss(self.model(x).squeeze(-1), y)
        loss.backward()
        for param in self.model.parameters():  # what DDP does: the mean gradient over every rank
            dist.all_reduce(param.grad)
            param.grad /= self.world
        self.optim.step()
        self.position += self.world
        self.step += 1
        return float(loss.item())

    def agreed(self, periodic):
        """Every rank saves at the same step: a request seen by any rank is seen by all."""
        flag = torch.tensor([1 if (self.requested or periodic) else 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def write_progress(self, loss):
        path = os.path.join(self.args.checkpoint_dir, "progress-rank%d.json" % self.rank)
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump({"step": self.step, "resumed_from": self.resumed_from, "rank": self.rank, "world_size": self.world,
                       "generation": os.environ.get("SPOT_GANG_GENERATION"), "master": os.environ.get("MASTER_ADDR"),
                       "pid": os.getpid(), "loss": loss, "last_checkpoint": self.last_checkpoint,
                       "time": time.time()}, handle)
        os.replace(tmp, path)

    def run(self):
        os.makedirs(self.args.checkpoint_dir, exist_ok=True)
        if self.args.resume:
            self.resume(self.args.resume)
        self.write_progress(None)
        while not self.args.steps or self.step < self.args.steps:
            loss = self.train_step()
            periodic = self.args.every > 0 and self.step % self.args.every == 0
            if self.agreed(periodic):
                self.requested = False
                self.save()
            self.write_progress(loss)
            time.sleep(self.args.step_time)
        dist.barrier()
        dist.destroy_process_group()
        return 0


def main(argv=None):
    return GangTrainer(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
