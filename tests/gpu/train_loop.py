"""A small CUDA training loop that checkpoints on SIGUSR1 (torch.save and DCP), for tests/gpu/check.sh."""

from __future__ import annotations

import signal
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

warnings.filterwarnings("ignore", message="torch.distributed is disabled")
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
requested = []
signal.signal(signal.SIGUSR1, lambda *_: requested.append(time.time()))

device = torch.device("cuda")
model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).to(device)
optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
print(f"training on {torch.cuda.get_device_name(0)}", flush=True)
deadline = time.time() + 60
step = 0
saved = 0
while time.time() < deadline and saved < 2:
    x = torch.randn(256, 1024, device=device)
    loss = (model(x) - x).pow(2).mean()
    optim.zero_grad()
    loss.backward()
    optim.step()
    step += 1
    if requested:
        requested.clear()
        state = {"step": step, "model": model.state_dict(), "optim": optim.state_dict()}
        torch.save(state, out / f"step-{step}.pt")
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(out / f"dcp-step-{step}"))
        saved += 1
        print(f"checkpointed step {step} (loss {loss.item():.4f})", flush=True)
print("done", flush=True)
