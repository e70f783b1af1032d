#!/usr/bin/env python3
"""The reference trainer: a small, real training loop that checkpoints like a well-behaved job.

Standard library only, so it runs unchanged as a plain process on a node, in the minimal
container image, and under the GPU stand-in. It fits y = w.x + b to a fixed synthetic data set
with SGD and:

* writes a safetensors checkpoint every ``--every`` steps and at the next step after SIGUSR1,
  atomically (``.tmp`` name, fsync, rename), keeping the newest ``--keep``;
* on SIGTERM writes a final checkpoint and exits 0;
* resumes from ``--resume PATH`` (weights and step), refusing a file that is not a complete
  safetensors checkpoint;
* records its progress (step, resumed-from step, last checkpoint, loss) in ``--progress`` so tests
  and the demo can prove where it resumed.

Checkpoints are named ``step-<8 digits>.safetensors`` with ``__metadata__.step``; ``--size-mb`` pads
them with an optimizer-state tensor to a realistic size.
"""

import argparse
import array
import json
import math
import os
import random
import signal
import struct
import sys
import time

DIM = 16


class Trainer:
    def __init__(self, args):
        self.args = args
        self.step = 0
        self.resumed_from = None
        rng = random.Random(1234)
        self.true_w = [rng.uniform(-1, 1) for _ in range(DIM)]
        self.data = []
        for _ in range(256):
            x = [rng.uniform(-1, 1) for _ in range(DIM)]
            self.data.append((x, sum(a * b for a, b in zip(self.true_w, x)) + 0.5))
        self.w = array.array("f", [0.0] * DIM)
        self.b = array.array("f", [0.0])
        self.loss = float("nan")
        self.checkpoint_requested = False
        self.stop_requested = False
        self.last_checkpoint = None
        # Random, like real weights and optimizer state: checkpoints do not compress.
        self.padding = os.urandom(int(args.size_mb * 1024 * 1024))

    # ------------------------------------------------------------ training
    def train_step(self):
        x, y = self.data[self.step % len(self.data)]
        pred = sum(wi * xi for wi, xi in zip(self.w, x)) + self.b[0]
        err = pred - y
        lr = self.args.lr
        for i in range(DIM):
            self.w[i] -= lr * err * x[i]
        self.b[0] -= lr * err
        self.loss = err * err
        self.step += 1

    # ------------------------------------------------------------ checkpoints
    def save(self, reason):
        name = "step-%08d.safetensors" % self.step
        final = os.path.join(self.args.checkpoint_dir, name)
        tmp = final + ".tmp"
        tensors = [("b", "F32", [1], self.b.tobytes()), ("opt_state", "U8", [len(self.padding)], self.padding),
                   ("w", "F32", [DIM], self.w.tobytes())]
        header = {"__metadata__": {"step": str(self.step), "loss": repr(self.loss), "reason": reason,
                                   "resumed_from": str(self.resumed_from)}}
        offset = 0
        for tname, dtype, shape, data in tensors:
            header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
            offset += len(data)
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
        with open(tmp, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)))
            handle.write(raw)
            for _, _, _, data in tensors:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, final)
        self.last_checkpoint = final
        self.prune()
        self.record()
        log("checkpoint %s (%s)" % (final, reason))

    def prune(self):
        names = sorted(n for n in os.listdir(self.args.checkpoint_dir)
                       if n.startswith("step-") and n.endswith(".safetensors"))
        for old in names[:-self.args.keep]:
            try:
                os.unlink(os.path.join(self.args.checkpoint_dir, old))
            except OSError:
                pass

    def resume(self, path):
        header, data_start = read_safetensors(path)
        meta = header.get("__metadata__", {})
        self.step = int(meta["step"])
        self.resumed_from = self.step
        with open(path, "rb") as handle:
            for tname, target in (("w", self.w), ("b", self.b)):
                start, end = header[tname]["data_offsets"]
                handle.seek(data_start + start)
                target[:] = array.array("f", handle.read(end - start))
        log("resumed from %s at step %d" % (path, self.step))

    def record(self):
        if not self.args.progress:
            return
        doc = {"step": self.step, "resumed_from": self.resumed_from, "pid": os.getpid(),
               "last_checkpoint": self.last_checkpoint, "loss": None if math.isnan(self.loss) else self.loss,
               "updated_at": time.time()}
        tmp = self.args.progress + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(doc, handle)
        os.rename(tmp, self.args.progress)

    # ------------------------------------------------------------ main loop
    def run(self):
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(signal.SIGTERM, self._on_term)
        self.record()
        if self.args.initial_checkpoint:
            self.save("initial")
        while not self.stop_requested:
            if self.args.max_steps and self.step >= self.args.max_steps:
                break
            self.train_step()
            if self.checkpoint_requested:
                self.checkpoint_requested = False
                self.save("signal")
            elif self.step % self.args.every == 0:
                self.save("periodic")
            elif self.step % 10 == 0:
                self.record()
            time.sleep(self.args.step_time)
        self.save("final")
        log("stopped at step %d" % self.step)
        return 0

    def _on_usr1(self, signum, frame):
        if not self.args.ignore_checkpoint_signal:
            self.checkpoint_requested = True

    def _on_term(self, signum, frame):
        self.stop_requested = True


def read_safetensors(path):
    """Parse and check a safetensors file's header; returns (header, data start offset)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > size - 8:
            raise ValueError("%s: header length %d beyond file size %d" % (path, length, size))
        header = json.loads(handle.read(length))
    end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"] or [0])
    if 8 + length + end != size:
        raise ValueError("%s: truncated (%d bytes, header needs %d)" % (path, size, 8 + length + end))
    return header, 8 + length


def log(message):
    sys.stdout.write("[trainer %s] %s\n" % (time.strftime("%H:%M:%S"), message))
    sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description="spot.migration reference trainer")
    parser.add_argument("--checkpoint-dir", required=True)
    parser.add_argument("--resume", default=None, help="safetensors checkpoint to resume from")
    parser.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    parser.add_argument("--step-time", type=float, default=0.05, help="seconds per step")
    parser.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    parser.add_argument("--size-mb", type=float, default=0.0, help="pad checkpoints to about this size")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: never)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--progress", default=None, help="JSON progress file")
    parser.add_argument("--initial-checkpoint", action="store_true", help="write a checkpoint before the first step")
    parser.add_argument("--ignore-checkpoint-signal", action="store_true",
                        help="act like a job that cannot checkpoint on demand (SIGUSR1 does nothing)")
    args = parser.parse_args(argv)
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    trainer = Trainer(args)
    if args.resume:
        try:
            trainer.resume(args.resume)
        except (OSError, ValueError, KeyError) as exc:
            log("cannot resume from %s: %s" % (args.resume, exc))
            return 2
    return trainer.run()


if __name__ == "__main__":
    sys.exit(main())
