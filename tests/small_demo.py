"""A smaller copy of an example demo config for the tests that run the real `lcms` command end to end."""

from __future__ import annotations

from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def small_demo(example: str, folder: Path) -> Path:
    """examples/<example> with two tiles instead of four, 8 dates a year, fewer samples and trees, and
    its store and reference in `folder`; returns the config's path there."""
    data = yaml.safe_load((EXAMPLES / example).read_text())
    data["aoi"]["bbox"] = [460_000, 5_090_000, 465_000, 5_092_500]  # two tiles instead of four
    data["download"]["source"]["dates_per_year"] = 8
    data["store"]["url"] = str(folder / "store")
    data["reference"]["path"] = str(folder / "reference.gpkg")
    data["sampling"]["count"] = 1000
    data["training"]["num_boost_round"] = 30
    path = folder / example
    path.write_text(yaml.safe_dump(data))
    return path
