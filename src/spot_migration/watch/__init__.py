"""The watcher: agent pushes, probe sweep, ledger, migrations, alerts."""
