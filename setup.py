"""Build hook: bake the code revision into the package, so that lineage names it in any install.

pyproject.toml holds the project's metadata; this file only adds the revision: `lcms/REVISION`,
from $LCMS_REVISION (docker/Dockerfile passes it as a build argument) or the git checkout's HEAD.
Editable installs read git at run time instead (lcms/lineage.py).
"""

import os
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class BuildWithRevision(build_py):
    def run(self):
        super().run()
        revision = os.environ.get("LCMS_REVISION") or git_head()
        if revision:
            (Path(self.build_lib) / "lcms" / "REVISION").write_text(revision + "\n")


setup(cmdclass={"build_py": BuildWithRevision})
