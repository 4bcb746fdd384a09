"""`lcms serve`: the results service over a run's store.

An ASGI app (FastAPI on uvicorn) that serves the maps and imagery as XYZ tiles (maps.py,
imagery.py), the change polygons as an OGC API - Features style API with vector tiles
(changes.py), operators' reviews of the changes (reviews.py), and users with roles (users.py,
auth.py). Users, sessions and reviews live in one database (db.py): an embedded SQLite file
by default, PostGIS in production. app.py puts the parts together; cli.py holds the commands.
"""
