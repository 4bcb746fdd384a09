"""The columns of the change-polygon layer: the same in the GeoPackage and in the PostGIS table."""

COLUMNS = (
    "change_id",
    "tile_id",
    "year_from",
    "year_to",
    "class_from",
    "class_to",
    "class_from_name",
    "class_to_name",
    "area_m2",
    "confidence_from",
    "confidence_to",
    "score",
    "status",
)
TEXT_COLUMNS = ("change_id", "tile_id", "class_from_name", "class_to_name", "status")
INT_COLUMNS = ("year_from", "year_to", "class_from", "class_to")
FLOAT_COLUMNS = ("area_m2", "confidence_from", "confidence_to", "score")
