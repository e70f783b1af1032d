"""The contract between the playbooks and the watcher is data, not names: in a copy of the collection where every
task and play of migrate, recover and replicate is renamed, a real migration through the watcher's own event handling
advances a real ledger exactly through the states (and targets, steps) it does with the names as shipped."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from spot_migration import fleet as fleet_mod
from spot_migration.watch import actions as actions_mod
from spot_migration.watch.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]
RENAMED = [*(f"playbooks/{p}.yml" for p in ("migrate", "recover", "replicate")),
           *(str(p.relative_to(ROOT)) for r in ("migrate", "recover", "replicate") for p in (ROOT / "roles" / r / "tasks").glob("*.yml"))]


def renamed_copy(tmp_path: Path) -> Path:
    base = tmp_path / "collections"
    dest = base / "ansible_collections" / "spot" / "migration"
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", ".collections", "build", ".demo", "bench",
                                                              "tests", "src", "__pycache__"))
    count = 0
    for rel in RENAMED:
        path = dest / rel
        text, n = re.subn(r"^(\s*- name:) .*$", lambda m: f"{m.group(1)} renamed step {count + 1}", path.read_text(),
                          flags=re.M)
        # Every name different from every other one, and from the shipped one.
        lines, index = [], 0
        for line in text.splitlines():
            if re.match(r"^\s*- name: renamed step", line):
                index += 1
                line = re.sub(r"renamed step \d+", f"renamed {Path(rel).stem} {index}", line)
            lines.append(line)
        path.write_text("\n".join(lines) + "\n")
        count += n
    assert count > 20, f"only {count} names renamed: the test would prove little"
    return base


def test_renamed_tasks_and_plays_advance_the_ledger_as_before(fleet, migrations, tmp_path):
    name = "contract-renamed"
    migrations.deploy("node1", name)
    fleet_mod.inject(fleet.dir, "node1", "spot_interruption")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    notice = {"notice_id": "n-contract", "evicting": True, "kind": "spot_interruption", "provider": "aws"}
    ledger.record_notice("node1", notice, "push", time.time())
    _created, migration_id = ledger.open_migration("n-contract", "node1", time.time(), time.time())
    fence = ledger.claim(migration_id)
    events = actions_mod.MigrationEvents(lambda state, **kw: ledger.advance(migration_id, fence, state, **kw))
    actions = actions_mod.Actions(str(fleet.inventory_path), tmp_path / "runs", collections=renamed_copy(tmp_path))
    rc, private = actions.run("contract", "spot.migration.migrate", {
        "source": "node1", "migration_id": migration_id, "spot_record_dir": str(migrations.records),
        "spot_reservation_file": str(migrations.reservations)}, on_event=events)
    stdout = next((private / "artifacts").glob("*/stdout")).read_text()
    assert rc == 0, stdout[-6000:]
    assert "renamed migrate" in stdout and "Stop, take the newest" not in stdout, "the renamed copy ran"
    states = [t["state"] for t in ledger.transitions(migration_id)]
    # noticed (opened), noticed (claimed), then every step of the run in order, none missing, none twice.
    # The emergency checkpoints are asked for without waiting (checkpointing) and written while the target is
    # reserved; the release waits for them: no separate "checkpointed" step.
    assert states == ["noticed", "noticed", "checkpointing", "target_reserved", "transferring", "verified",
                      "resuming"], states
    m = ledger.migration(migration_id)
    [record] = migrations.records_written()
    assert m["workloads"] == [name] and m["targets"] == {name: "standby1"}
    assert m["steps"] == {name: record["migrations"][0]["checkpoint_step"]}
    assert migrations.where(name) == {"standby1": True}
    json.dumps(m)  # plain data
