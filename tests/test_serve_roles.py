"""Every route of `lcms serve` against a table of who may call it.

The walk takes the routes from the app itself (`app.routes`, flattened), so a route added anywhere in the
service (changes, reviews, users, maps, imagery, ...) is walked too, and the test fails until
`EXPECTED_ROLES` says who may call it. Each route is called on the real server unauthenticated,
as viewer, operator and admin:

- a caller below the route's role gets exactly 401 (not logged in) or 403 (logged in, role too low);
- a caller with the role gets neither, and no server error (a 4xx about the made-up parameters
  or the empty body is fine: the role check came first and let the call through).
"""

from __future__ import annotations

import re

import pytest
from fastapi.routing import iter_route_contexts

# (method, path) → the least role that may call it; "public" needs no login.
# Add a row here for every new route.
EXPECTED_ROLES: dict[tuple[str, str], str] = {
    # service
    ("GET", "/health"): "public",
    ("GET", "/openapi.json"): "public",
    ("GET", "/docs"): "public",
    ("GET", "/docs/oauth2-redirect"): "public",
    ("GET", "/redoc"): "public",
    # auth and users
    ("POST", "/auth/login"): "public",
    ("POST", "/auth/logout"): "viewer",
    ("GET", "/auth/me"): "viewer",
    ("GET", "/users"): "admin",
    ("POST", "/users"): "admin",
    ("PATCH", "/users/{username}"): "admin",
    # change polygons
    ("GET", "/changes"): "viewer",
    ("GET", "/changes/conformance"): "viewer",
    ("GET", "/changes/collections"): "viewer",
    ("GET", "/changes/collections/{collection_id}"): "viewer",
    ("GET", "/changes/collections/{collection_id}/items"): "viewer",
    ("GET", "/changes/collections/{collection_id}/items/{change_id}"): "viewer",
    ("GET", "/changes/collections/{collection_id}/tiles/{z}/{x}/{y}.mvt"): "viewer",
    # reviews
    ("GET", "/changes/collections/{collection_id}/items/{change_id}/reviews"): "viewer",
    ("POST", "/changes/collections/{collection_id}/items/{change_id}/reviews"): "operator",
    ("POST", "/changes/collections/{collection_id}/items/{change_id}/resolution"): "admin",
    ("GET", "/changes/collections/{collection_id}/reviews"): "viewer",
    ("GET", "/changes/collections/{collection_id}/export"): "viewer",
    # maps (lcms/serve/maps.py)
    ("GET", "/maps"): "viewer",
    ("GET", "/maps/{product}/{year}/{layer}/tilejson.json"): "viewer",
    ("GET", "/maps/{product}/{year}/{layer}/tiles/{z}/{x}/{y}.{fmt}"): "viewer",
    ("GET", "/maps/{product}/{year}/point"): "viewer",
    ("GET", "/grid"): "viewer",
    ("GET", "/stac"): "viewer",
    ("GET", "/stac/{path}"): "viewer",
    # imagery (lcms/serve/imagery.py)
    ("GET", "/imagery"): "viewer",
    ("GET", "/imagery/{period}/{composite}/tilejson.json"): "viewer",
    ("GET", "/imagery/{period}/{composite}/tiles/{z}/{x}/{y}.{fmt}"): "viewer",
    ("GET", "/imagery/chips"): "viewer",
    ("POST", "/imagery/chips"): "viewer",
    ("GET", "/imagery/chips/{year}/{tile_id}/{date}.png"): "viewer",
    ("GET", "/imagery/timeseries"): "viewer",
    ("POST", "/imagery/timeseries"): "viewer",
    # accuracy sample queues (lcms/serve/samples.py)
    ("GET", "/samples"): "viewer",
    ("GET", "/samples/{design_id}/queue"): "viewer",
    ("GET", "/samples/{design_id}/next"): "viewer",
    ("POST", "/samples/{design_id}/points/{sample_id}/labels"): "operator",
}

# Values for path parameters (anything plausible: only the role check is under test).
SAMPLE_PARAMS = {
    "product": "land-cover",
    "year": "2023",
    "layer": "labels",
    "z": "0",
    "x": "0",
    "y": "0",
    "fmt": "png",
    "period": "2023",
    "composite": "true-colour",
    "path": "catalog.json",
    "tile_id": "33N_0185_2036",
    "date": "2023-06-01",
    "username": "nobody",
}
ROLES = ("viewer", "operator", "admin")
RANK = {"public": -1, **{role: rank for rank, role in enumerate(ROLES)}}
USERS = {"viewer": "vera", "operator": "olga", "admin": "ada"}


def routes_of_the_app(world) -> list[tuple[str, str]]:
    from lcms.serve.app import create_app, open_state

    app = create_app(open_state(world.config))
    found = []
    # FastAPI keeps included routers as such in `app.routes`; iter_route_contexts flattens them.
    for route in iter_route_contexts(app.routes):
        if route.methods:  # mounts (the static files) have none
            for method in sorted(set(route.methods) - {"HEAD"}):
                found.append((method, re.sub(r"{(\w+):\w+}", r"{\1}", route.path)))
    return found


def concrete(path: str, world) -> str:
    values = {**SAMPLE_PARAMS, "collection_id": "land-cover_2023-2024", "change_id": world.frame["change_id"].iloc[0]}
    return re.sub(r"{(\w+)}", lambda m: values.get(m[1], "x"), path)


def test_every_route_answers_each_role_as_the_table_says(serve_world):
    routes = routes_of_the_app(serve_world)
    missing = [r for r in routes if r not in EXPECTED_ROLES]
    assert not missing, f"routes without a row in EXPECTED_ROLES (tests/test_serve_roles.py): {missing}"
    assert ("POST", "/changes/collections/{collection_id}/items/{change_id}/reviews") in routes

    callers = {"anonymous": serve_world.client(), **{role: serve_world.client(USERS[role]) for role in ROLES}}
    problems = []
    # Logout last: it ends the caller's session.
    for method, path in sorted(routes, key=lambda r: r == ("POST", "/auth/logout")):
        needed = RANK[EXPECTED_ROLES[(method, path)]]
        for who, client in callers.items():
            body = {} if method in ("POST", "PUT", "PATCH") else None
            answer = client.request(method, concrete(path, serve_world), json=body)
            rank = RANK.get(who, -1)
            if rank < needed:
                want = 401 if who == "anonymous" else 403
                if answer.status_code != want:
                    problems.append(f"{who} {method} {path}: {answer.status_code}, expected {want}")
            elif answer.status_code in (401, 403) or answer.status_code >= 500:
                problems.append(f"{who} {method} {path}: {answer.status_code} {answer.text[:120]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("role", ROLES)
def test_a_role_below_gets_a_message_naming_the_role_needed(serve_world, role):
    client = serve_world.client(USERS[role])
    answer = client.get("/users")
    if role == "admin":
        assert answer.status_code == 200 and {"vera", "olga", "ada"} <= {u["username"] for u in answer.json()["users"]}
    else:
        assert (
            answer.status_code == 403
            and answer.json()["detail"] == f"this needs the admin role; {USERS[role]} is a {role}"
        )
