"""Download stage flow: bands, cloud masks and valid-data masks for every tile and year of the AOI.

The flow itself is made from the stage's declaration (lcms/stages.py) by flows/common.py; what
is particular to this stage is where Sentinel Hub's credentials come from: the environment, or
Prefect Secret blocks named in the source config. They are resolved inside each tile task, so
they never travel as task parameters and never reach a log.
"""

from __future__ import annotations

import os

from flows.common import tile_stage_flow
from lcms.config import DownloadConfig, SentinelHubSourceConfig
from lcms.stages import get_stage
from tasks.download.sentinelhub_source import CLIENT_ID_ENV, CLIENT_SECRET_ENV, CREDENTIALS_HINT
from tasks.download.sources import SourceCredentials, SourceError


def resolve_credentials(cfg: SentinelHubSourceConfig) -> SourceCredentials:
    """OAuth client id and secret: SH_CLIENT_ID / SH_CLIENT_SECRET from the environment, else the
    Prefect Secret blocks named by `cfg.client_id_block` / `cfg.client_secret_block`."""
    env_id, env_secret = os.environ.get(CLIENT_ID_ENV, ""), os.environ.get(CLIENT_SECRET_ENV, "")
    if env_id and env_secret:
        return SourceCredentials(env_id, env_secret)
    if cfg.client_id_block and cfg.client_secret_block:
        return SourceCredentials(_load_secret(cfg.client_id_block), _load_secret(cfg.client_secret_block))
    missing = [n for n, v in ((CLIENT_ID_ENV, env_id), (CLIENT_SECRET_ENV, env_secret)) if not v]
    raise SourceError(
        f"No Sentinel Hub credentials: {' and '.join(missing)} not set and no Prefect Secret blocks named. "
        + CREDENTIALS_HINT
    )


def _load_secret(block_name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(block_name, _sync=True).get()
    except Exception as exc:  # missing block, unreachable Prefect API, ...
        # The exception text is about the block, never its value.
        raise SourceError(
            f"Cannot load the Prefect Secret block {block_name!r} ({type(exc).__name__}: {exc}). {CREDENTIALS_HINT}"
        ) from exc
    if not isinstance(value, str) or not value:
        raise SourceError(
            f"The Prefect Secret block {block_name!r} does not hold a non-empty string. {CREDENTIALS_HINT}"
        )
    return value


def download_secrets(cfg: DownloadConfig) -> dict:
    """The download tile function's credentials, for the sources that need them."""
    if isinstance(cfg.source, SentinelHubSourceConfig):
        return {"credentials": resolve_credentials(cfg.source)}
    return {}


download_flow = tile_stage_flow(get_stage("download"), secrets=download_secrets)
