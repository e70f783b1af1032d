#!/usr/bin/env python
"""Ansible inventory script: the nodes of the local fleet this scenario's create.yml brought up (its inventory, as
JSON, in the scenario's ephemeral directory); no hosts before create and after destroy. Standard library only."""

import json
import os
import sys


def main():
    path = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ""), "fleet", "inventory.json")
    out = {"_meta": {"hostvars": {}}}
    if os.path.isfile(path):
        with open(path) as handle:
            top = json.load(handle)["all"]
        common = top.get("vars") or {}
        out["all"] = {"vars": common, "children": sorted(top.get("children") or {})}
        for group, body in (top.get("children") or {}).items():
            hosts = (body or {}).get("hosts") or {}
            out[group] = {"hosts": sorted(hosts)}
            for host, variables in hosts.items():
                out["_meta"]["hostvars"][host] = dict(variables or {})
    if "--host" in sys.argv:
        name = sys.argv[sys.argv.index("--host") + 1]
        json.dump(out["_meta"]["hostvars"].get(name, {}), sys.stdout)
    else:
        json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
