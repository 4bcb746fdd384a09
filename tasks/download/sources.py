"""Where a tile's Sentinel-2 bands come from: the interface every download source implements.

The download stage asks a source for the acquisition dates of a tile and year, then reads
the tile block by block (each block a `PixelGrid` window of the tile, all dates at once),
so that memory stays bounded whatever the tile size.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from lcms.geometry import PixelGrid


class SourceError(RuntimeError):
    """A source that cannot deliver: bad credentials, unreadable scenes, missing bands.

    Raised for problems a retry will not fix; the message says what to do.
    """


class SourceCredentials(NamedTuple):
    """A source's OAuth client id and secret; the secret never appears in a repr or a log."""

    client_id: str
    client_secret: str

    def __repr__(self) -> str:
        return f"SourceCredentials(client_id={self.client_id!r}, client_secret='***')"


class BandSource(Protocol):
    """A source of Sentinel-2 bands on a tile's grid."""

    #: Band names in the order `read` returns them (lcms.sentinel2.L1C_BANDS or L2A_BANDS).
    band_names: tuple[str, ...]

    def acquisition_dates(self, grid: PixelGrid, year: int) -> np.ndarray:
        """Sorted, unique datetime64[s] dates with data over `grid` in `year` (may be empty)."""
        ...

    def read(self, grid: PixelGrid, dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bands and data mask of `grid` (a block of a tile) at `dates`.

        Returns bands as uint16 (t, y, x, b) digital numbers, reflectance × 10000, 0 where
        there is no data; and data_mask as bool (t, y, x), True inside the swath.
        """
        ...
