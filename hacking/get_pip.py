"""Local stand-in for the get-pip.py that ``ansible-test --venv`` downloads.

ansible-test runs this with the pip arguments it wants (``pip==X`` and options) inside a
fresh virtual environment without pip. We install pip from the wheel that ships with
Python's own ``ensurepip`` and let that pip install the requested version from the index.
"""

import glob
import os
import sys

import ensurepip


def main():
    bundled = sorted(glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl")))
    if not bundled:
        sys.exit("get_pip stand-in: this Python has no ensurepip wheel to bootstrap pip from")
    sys.path.insert(0, bundled[-1])
    from pip._internal.cli.main import main as pip_main

    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    sys.exit(pip_main(["install", "--upgrade", "--force-reinstall"] + args))


if __name__ == "__main__":
    main()
