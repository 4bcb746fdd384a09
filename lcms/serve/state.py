"""What every request of the service needs: the run's config, its store, the database and the change layers.

One `ServeState` is made when the app starts (`lcms.serve.app.open_state`) and kept on ``app.state.lcms``;
routes get it with the FastAPI dependency `get_state`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from lcms.config import RunConfig
from lcms.store import TileStore

PRODUCT_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")  # as RunConfig.product


@dataclass
class ServeState:
    """The service's shared handles; built once per process."""

    config: RunConfig
    store: TileStore  # the store of the config's product
    db: object  # lcms.serve.db.Database (SQLite or PostGIS)
    layers: object = None  # lcms.serve.changes.ChangeLayers: the current change layer of each product and years
    demo: bool = False
    _stores: dict[str, TileStore] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def store_for(self, product: str) -> TileStore:
        """The store handle reading `product`'s outputs (404 for a name that cannot be a product)."""
        if not isinstance(product, str) or not PRODUCT_NAME.match(product):
            raise HTTPException(404, f"unknown product {product!r}: product names look like 'land-cover'")
        if product == self.store.product:
            return self.store
        with self._lock:
            if product not in self._stores:
                self._stores[product] = self.store.for_product(product)
            return self._stores[product]

    def close(self) -> None:
        close = getattr(self.db, "close", None)
        if close is not None:
            close()


def get_state(request: Request) -> ServeState:
    """FastAPI dependency: the app's ServeState."""
    return request.app.state.lcms


StateDep = Annotated[ServeState, Depends(get_state)]
