"""The seed README's ``python gpu_test.py``, from the repository root: runs ``scripts/gpu_test.py``.

    python gpu_test.py [--allow_cpu] [--skip_lora]      # flags and exit code are scripts/gpu_test.py's

The check belongs to the project's environment, so when the venv exists (``RECRL_VENV``, default
``<repo>/.venv``; ``bash scripts/setup.sh`` makes it) and this interpreter is not it, the check runs with
the venv's python (plain ``python3`` works after setup); otherwise it runs with this interpreter.
The code lives in ``scripts/gpu_test.py``; this file only forwards to it.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SCRIPT = ROOT / "scripts" / "gpu_test.py"


def venv_python() -> Path | None:
    """The project venv's interpreter, when there is one."""
    venv = Path(os.environ.get("RECRL_VENV") or ROOT / ".venv").expanduser()
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    return python if python.exists() else None


def main() -> int:
    python = venv_python()
    if python is not None and Path(sys.prefix).resolve() != python.parents[1].resolve():
        print(f"[gpu_test] running scripts/gpu_test.py with the project's venv: {python}", file=sys.stderr, flush=True)
        return subprocess.call([str(python), str(SCRIPT), *sys.argv[1:]])
    sys.argv[0] = str(SCRIPT)
    runpy.run_path(str(SCRIPT), run_name="__main__")  # ends with SystemExit(the script's exit code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
