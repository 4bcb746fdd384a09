"""Prefect settings that LCMS needs on a fresh, offline machine; set before Prefect is imported."""

from __future__ import annotations

import os

DEFAULTS = {
    # A fresh home needs longer than the default 20 s to start the ephemeral server.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # No telemetry from offline machines (it only logs connection errors).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Let Prefect's log handlers show what lcms and the tile tasks log.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "lcms,tasks",
    # The same loggers also run outside flows (e.g. `lcms grid`); there they log locally only.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def configure_prefect_defaults() -> None:
    """Apply the defaults without overriding anything the user has set."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
