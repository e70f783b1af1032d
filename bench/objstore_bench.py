"""Benchmark for issue [L]: replicas in object storage, ours against a bare ``rclone copy`` of the same bytes.

Run: .venv/bin/python bench/objstore_bench.py [--size-mb 512] [--services s3,gcs] [--repeat 3] [--out DIR]
Prints a table and writes DIR/objstore.json (default bench/out). Not a test: it asserts nothing.

Each service is a real server started here on loopback (moto's S3 server mode, gcp-storage-emulator), reached through
the machine's rclone. The checkpoint is a sealed directory of four shards (SIZE MiB together, random bytes). Side by
side, alternating, REPEAT times each:

* upload - ours: ``Store.upload`` (the shards, then the manifest, then ``latest.json``, then pruning to the last 2);
  bare: ``rclone copy`` of the same directory with the same number of streams;
* restore - ours: ``Store.download`` of the step ``latest.json`` names and the sha256 check of every file against
  the manifest (what a restore does before the rename into place: up to 32 files hashed as they are written, else
  after); bare: ``rclone copy`` back, nothing checked.

The order alternates from round to round and the disk is synced between the sides, so neither pays for the other's
writeback.

Reported: the median seconds of each and ours / bare (the issue's target: at most 1.15).

gcp-storage-emulator answers a resumable upload's chunks with a 308 that Debian's rclone 1.60 does not take (and
rclone 1.60 has no GCS chunk size to set), so objects above 16 MiB cannot be uploaded to it: the GCS rounds use
``--gcs-size-mb`` (64: four 16 MiB shards), which says more about per-call overhead than about throughput."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from spot_migration import collections_path  # noqa: E402

sys.path.insert(0, str(collections_path()))

from ansible_collections.spot.migration.plugins.module_utils import _agent, _checkpoint, _objstore  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from watch_bench import free_port  # noqa: E402

BIN = Path(sys.executable).parent
SERVICES = {
    "s3": (lambda port: [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
           lambda port: {"type": "s3", "provider": "Other", "endpoint": f"http://127.0.0.1:{port}",
                         "region": "us-east-1", "access_key_id": "test", "secret_access_key": "test"}),
    "gcs": (lambda port: [str(BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port),
                          "--in-memory"],
            lambda port: {"type": "google cloud storage", "endpoint": f"http://127.0.0.1:{port}", "anonymous": "true",
                          "project_number": "spot"}),
}
CLEAN = ("AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS")
TRANSFERS = 4


def rclone(*args: str) -> float:
    start = time.monotonic()
    subprocess.run(["rclone", *args, "--transfers", str(TRANSFERS), "--multi-thread-streams", str(TRANSFERS), "-q"],
                   check=True)
    return time.monotonic() - start


def checkpoint(directory: Path, size_mb: int, step: int) -> Path:
    ck = directory / f"step-{step:08d}"
    ck.mkdir(parents=True)
    shard = size_mb * 2**20 // 4
    block = os.urandom(2**20)
    for i in range(4):
        with open(ck / f"shard-{i}.safetensors", "wb") as handle:
            for _ in range(shard // len(block)):
                handle.write(block[:8] + os.urandom(8) + block[16:])  # no two MiB alike, cheap to make
    _checkpoint.seal(str(ck), step=step)
    return ck


def one_service(kind: str, size_mb: int, repeat: int, work: Path, log) -> dict:
    argv, options = SERVICES[kind]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    server_log = open(work / f"{kind}.log", "w")  # noqa: SIM115 - closed below
    # In this process's group: whoever kills the bench's group (the smoke test) takes the server along.
    proc = subprocess.Popen(argv(port), stdout=server_log, stderr=subprocess.STDOUT, env=env, cwd=work)
    conf = work / f"{kind}.conf"
    conf.write_text("[store]\n" + "".join(f"{k} = {v}\n" for k, v in options(port).items()))
    os.environ["RCLONE_CONFIG"] = str(conf)
    try:
        deadline = time.time() + 30
        while subprocess.run(["rclone", "mkdir", "store:bench"], capture_output=True, check=False).returncode != 0:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{kind} server did not start: {(work / f'{kind}.log').read_text()[-1000:]}")
            time.sleep(0.3)
        store = _objstore.Store(_agent._run, "store:bench/ours", transfers=TRANSFERS)
        times = {"upload ours": [], "upload rclone copy": [], "restore ours": [], "restore rclone copy": []}
        for i in range(repeat):
            ck = checkpoint(work / f"src-{kind}-{i}", size_mb, 1000 * (i + 1))
            os.sync()  # the gigabyte just written is on disk before either side reads it (no writeback to compete)

            def ours(ck=ck, i=i):
                start = time.monotonic()
                store.upload("job", str(ck), True, 1000 * (i + 1), keep=2)
                return time.monotonic() - start

            def bare(ck=ck, i=i):
                return rclone("copy", str(ck), f"store:bench/bare/{i}")
            # Side by side, the order alternating from round to round (the server's state is not the first one's).
            first, second = (ours, bare) if i % 2 == 0 else (bare, ours)
            took = {first: first()}
            took[second] = second()
            times["upload ours"].append(took[ours])
            times["upload rclone copy"].append(took[bare])
            staging = work / f"restore-{kind}-{i}"
            staging.mkdir()

            def restore(staging=staging):
                start = time.monotonic()
                got = store.download("job", str(staging))
                _checkpoint.verify(got["staged"], got.get("hashes"))  # as a restore does: hashed while written, or after
                return time.monotonic() - start

            def fetch(i=i):
                return rclone("copy", f"store:bench/bare/{i}", str(work / f"bare-{kind}-{i}"))
            os.sync()
            first, second = (restore, fetch) if i % 2 == 0 else (fetch, restore)
            took = {first: first()}
            os.sync()  # the first one's gigabyte written back before the second writes its own
            took[second] = second()
            times["restore ours"].append(took[restore])
            times["restore rclone copy"].append(took[fetch])
            for path in (ck.parent, staging, work / f"bare-{kind}-{i}"):
                shutil.rmtree(path, ignore_errors=True)
            log(f"{kind} round {i + 1}/{repeat}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
        median = {k: round(statistics.median(v), 3) for k, v in times.items()}
        return {"seconds": median, "all_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
                "upload_ratio": round(median["upload ours"] / median["upload rclone copy"], 3),
                "restore_ratio": round(median["restore ours"] / median["restore rclone copy"], 3),
                "upload_mib_s": round(size_mb / median["upload ours"], 1),
                "restore_mib_s": round(size_mb / median["restore ours"], 1)}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server_log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--gcs-size-mb", type=int, default=64, help="the GCS emulator's limit: 4 x 16 MiB at most")
    parser.add_argument("--services", default="s3,gcs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    if shutil.which("rclone") is None:
        raise SystemExit("objstore_bench: needs rclone (make setup installs it)")
    services = [s.strip() for s in args.services.split(",") if s.strip()]
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        parser.error(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    for key in CLEAN:
        os.environ.pop(key, None)
    results = {}
    with tempfile.TemporaryDirectory(prefix="spot-objstore-bench-") as tmp:
        for kind in services:
            size = min(args.size_mb, args.gcs_size_mb) if kind == "gcs" else args.size_mb
            print(f"{kind}: {size} MiB in 4 shards, {args.repeat} rounds", flush=True)
            results[kind] = dict(one_service(kind, size, args.repeat, Path(tmp), lambda line: print(line, flush=True)),
                                 size_mib=size)
    out = {"size_mib": args.size_mb, "transfers": TRANSFERS, "repeat": args.repeat,
           "rclone": subprocess.run(["rclone", "version"], capture_output=True, text=True, check=False).stdout.splitlines()[0],
           "services": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "objstore.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n| service | MiB | upload ours | rclone copy | ours/bare | restore+verify ours | rclone copy | ours/bare |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, r in results.items():
        s = r["seconds"]
        print(f"| {kind} | {r['size_mib']} | {s['upload ours']} s | {s['upload rclone copy']} s | x{r['upload_ratio']} | "
              f"{s['restore ours']} s | {s['restore rclone copy']} s | x{r['restore_ratio']} |")


if __name__ == "__main__":
    main()
