"""Benchmarks for issue [B]: manifest hashing throughput vs sha256sum, and checkpoint_info on 10,000 files.

Run: .venv/bin/python bench/checkpoint_bench.py [--size-gib 2] [--dir DIR] [--out DIR]
Prints a table and writes OUT/checkpoint_bench.json (default bench/out). Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from spot_migration import collections_path  # noqa: E402

sys.path.insert(0, str(collections_path()))
from ansible_collections.spot.migration.plugins.module_utils import _checkpoint as ck  # noqa: E402

MIB = 1024 * 1024


def write_random(path: Path, size: int) -> None:
    block = os.urandom(64 * MIB)
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            handle.write(block[:min(left, len(block))])
            left -= len(block)


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_hashing(workdir: Path, size_gib: float) -> dict:
    size = int(size_gib * 1024 * MIB)
    one = workdir / "one"
    one.mkdir()
    write_random(one / "model.safetensors", size)
    sha = best_of(2, lambda: subprocess.run(["sha256sum", str(one / "model.safetensors")], check=True,
                                            capture_output=True))
    ours = best_of(2, lambda: ck.hash_files(str(one)))
    shards = workdir / "shards"
    shards.mkdir()
    for i in range(8):
        write_random(shards / f"shard-{i}.bin", size // 8)
    files = sorted(str(p) for p in shards.iterdir())
    sha_multi = best_of(2, lambda: subprocess.run(["sha256sum", *files], check=True, capture_output=True))
    ours_multi = best_of(2, lambda: ck.hash_files(str(shards)))
    mb = size / MIB
    return {
        "size_mib": round(mb),
        "single_file": {"sha256sum_mib_s": round(mb / sha), "ours_mib_s": round(mb / ours),
                        "ratio": round(sha / ours, 2)},
        "eight_shards": {"sha256sum_mib_s": round(mb / sha_multi), "ours_mib_s": round(mb / ours_multi),
                         "ratio": round(sha_multi / ours_multi, 2)},
    }


def tiny_safetensors(path: Path, step: int) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                         "__metadata__": {"step": str(step)}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<4f", step, step, step, step))


def bench_info(workdir: Path) -> dict:
    many = workdir / "many"
    many.mkdir()
    now = time.time()
    for i in range(10_000):
        p = many / f"step-{i}.safetensors"
        tiny_safetensors(p, i)
        os.utime(p, (now - 10_000 + i, now - 10_000 + i))
    for i in range(9_900, 10_000):  # the newest hundred are torn
        p = many / f"step-{i}.safetensors"
        p.write_bytes(p.read_bytes()[:-3])
        os.utime(p, (now - 10_000 + i, now - 10_000 + i))
    result = ck.find_checkpoint(str(many))
    assert result["step"] == 9_899 and len(result["rejected"]) == 100
    candidates = best_of(3, lambda: ck.find_checkpoint(str(many)))
    big = workdir / "big" / "snapshot-1"
    (big / "shards").mkdir(parents=True)
    for i in range(10_000):
        (big / "shards" / f"{i:05d}.bin").write_bytes(b"x" * 64)
    ck.seal(str(big))
    one_dir = best_of(3, lambda: ck.find_checkpoint(str(big.parent)))
    return {"ten_thousand_candidates_s": round(candidates, 3), "one_checkpoint_of_ten_thousand_files_s": round(one_dir, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="where checkpoint_bench.json goes")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="spot-bench-", dir=args.dir))
    try:
        hashing = bench_hashing(workdir, args.size_gib)
        info = bench_info(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
                         f"{platform.python_version()}", "date": time.strftime("%Y-%m-%d"),
              "manifest_hashing": hashing, "checkpoint_info": info}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint_bench.json").write_text(json.dumps(report, indent=2))
    h = hashing
    print(f"machine: {report['machine']}, {report['date']}")
    print(f"{'manifest hashing (' + str(h['size_mib']) + ' MiB)':40} {'sha256sum':>12} {'ours':>12} {'ours/sha256sum':>15}")
    for name in ("single_file", "eight_shards"):
        row = h[name]
        print(f"{name:40} {row['sha256sum_mib_s']:>8} MiB/s {row['ours_mib_s']:>8} MiB/s {row['ratio']:>14}x")
    print(f"checkpoint_info, 10,000 candidate files (newest 100 torn): {info['ten_thousand_candidates_s']} s")
    print(f"checkpoint_info, one checkpoint of 10,000 files:            {info['one_checkpoint_of_ten_thousand_files_s']} s")


if __name__ == "__main__":
    main()
