"""eo-learn 1.5.7 in its own virtual environment, for the benchmarks that run it beside LCMS.

eo-learn pins other versions than LCMS, so it cannot live in the project's venv. The venv
is created on first use in benchmarks/.venv-eolearn (ignored by git).
"""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venv-eolearn"


def ensure_eolearn_venv(venv: Path = VENV) -> Path:
    """The python of a venv with eo-learn 1.5.7, created if missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} (eo-learn 1.5.7) ...", flush=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        (venv / ".gitignore").write_text("*\n")  # keep the venv out of git wherever it is made
        pip = [str(venv / "bin" / "pip"), "install", "-q"]
        if subprocess.run([*pip, "eo-learn[extra]==1.5.7"]).returncode != 0:
            subprocess.run([*pip, "eo-learn==1.5.7", "s2cloudless"], check=True)
    return python


def peak_rss_mib() -> float:
    """This process's own peak resident memory so far.

    VmHWM, not getrusage: on Linux a child started by subprocess inherits its parent's ru_maxrss,
    so a worker would report the driver's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
