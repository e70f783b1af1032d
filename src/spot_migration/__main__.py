"""python -m spot_migration: the same command line as ``spot-migration``."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="spot-migration")
