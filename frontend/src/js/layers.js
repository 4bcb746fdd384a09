// The layers the service offers (maps, confidence, imagery composites, change polygons, tile grid),
// read from its listing routes, and how each is drawn with MapLibre. Only tiles are ever fetched
// for the rasters and the change polygons; the tile grid is one small GeoJSON (one outline per tile).
import * as maplibregl from "../vendor/maplibre-gl.mjs";
import { get } from "./api.js";

/** Everything the service lists; a part that fails is left out and named in `problems`. */
export async function loadCatalogue() {
  const problems = [];
  const attempt = async (what, fn, empty) => {
    try {
      return await fn();
    } catch (error) {
      if (error.status === 401) throw error;
      problems.push(`${what}: ${error.message}`);
      return empty;
    }
  };
  const [maps, imagery, collections] = await Promise.all([
    attempt("maps", async () => (await get("/maps")).layers, []),
    attempt("imagery", async () => (await get("/imagery")).layers, []),
    attempt("change polygons", async () => (await get("/changes/collections")).collections, []),
  ]);
  const labels = maps.filter((m) => m.layer === "labels");
  const legend = labels.length ? labels[labels.length - 1].legend : [];
  // Every year something exists for: maps, change layers, imagery periods (2023, 2023-Q1, ...).
  const imageryYears = imagery.map((i) => Number(String(i.period).slice(0, 4)));
  const years = [...new Set([...maps.map((m) => m.year), ...collections.flatMap((c) => c.years), ...imageryYears])].sort();
  return { maps, imagery, collections, legend, years, problems };
}

/** The layer definitions, in drawing order (bottom first). */
export function layerDefinitions(catalogue) {
  const origin = window.location.origin;
  const defs = [];
  for (const item of catalogue.imagery) {
    defs.push({
      id: `imagery-${item.period}-${item.composite}`,
      group: "Imagery",
      title: `${item.period} ${item.composite.replace("-", " ")}`,
      kind: "raster",
      tilejson: item.tilejson,
      bounds: item.bounds,
      period: item.period,
      composite: item.composite,
    });
  }
  for (const name of ["confidence", "labels"]) {
    for (const item of catalogue.maps.filter((m) => m.layer === name)) {
      defs.push({
        id: `map-${item.product}-${item.year}-${name}`,
        group: name === "labels" ? "Maps" : "Confidence",
        title: `${item.product} ${item.year}${name === "labels" ? "" : " confidence"}`,
        kind: "raster",
        tilejson: item.tilejson,
        bounds: item.bounds,
        product: item.product,
        year: item.year,
        layer: name,
        nearest: true, // class maps: show pixels as they are, never blended
      });
    }
  }
  for (const c of catalogue.collections) {
    defs.push({
      id: `changes-${c.id}`,
      group: "Changes",
      title: `changes ${c.years[0]} → ${c.years[1]} (${c.polygons})`,
      kind: "changes",
      tiles: `${origin}/changes/collections/${c.id}/tiles/{z}/{x}/{y}.mvt`,
      bounds: c.extent.spatial.bbox[0],
      collection: c.id,
    });
  }
  defs.push({ id: "grid", group: "Tile grid", title: "tile grid", kind: "grid", data: `${origin}/grid` });
  return defs;
}

/** A MapLibre expression: the legend colour of a class property. */
export function classColour(legend, property) {
  const match = ["match", ["get", property]];
  for (const c of legend) match.push(c.code, c.color);
  match.push("#888888");
  return legend.length ? match : "#888888";
}

/** Add a layer definition to a map (hidden unless `visible`); returns the MapLibre layer ids it made. */
export function addLayer(map, def, legend, { visible = false, opacity = 1 } = {}) {
  const visibility = visible ? "visible" : "none";
  if (def.kind === "raster") {
    map.addSource(def.id, { type: "raster", url: def.tilejson, tileSize: 256 });
    map.addLayer({
      id: def.id,
      type: "raster",
      source: def.id,
      layout: { visibility },
      paint: { "raster-opacity": opacity, "raster-resampling": def.nearest ? "nearest" : "linear", "raster-fade-duration": 0 },
    });
    return [def.id];
  }
  if (def.kind === "changes") {
    // Colour by transition: the fill is the class after, the outline the class before.
    map.addSource(def.id, { type: "vector", tiles: [def.tiles], minzoom: 10, maxzoom: 16, bounds: def.bounds });
    map.addLayer({
      id: def.id,
      type: "fill",
      source: def.id,
      "source-layer": "changes",
      layout: { visibility },
      paint: { "fill-color": classColour(legend, "class_to"), "fill-opacity": 0.55 * opacity },
    });
    map.addLayer({
      id: `${def.id}-casing`, // a dark edge under the outline, so it shows on a background of its own colour
      type: "line",
      source: def.id,
      "source-layer": "changes",
      layout: { visibility },
      paint: { "line-color": "#202020", "line-width": 4.5, "line-opacity": opacity },
    });
    map.addLayer({
      id: `${def.id}-outline`,
      type: "line",
      source: def.id,
      "source-layer": "changes",
      layout: { visibility },
      paint: { "line-color": classColour(legend, "class_from"), "line-width": 2.5, "line-opacity": opacity },
    });
    return [def.id, `${def.id}-casing`, `${def.id}-outline`];
  }
  map.addSource(def.id, { type: "geojson", data: def.data });
  map.addLayer({
    id: def.id,
    type: "line",
    source: def.id,
    layout: { visibility },
    paint: { "line-color": "#202020", "line-width": 1.2, "line-dasharray": [3, 2], "line-opacity": opacity },
  });
  return [def.id];
}

export function setVisible(map, ids, visible) {
  for (const id of ids) if (map.getLayer(id)) map.setLayoutProperty(id, "visibility", visible ? "visible" : "none");
}

export function setOpacity(map, ids, opacity) {
  for (const id of ids) {
    if (!map.getLayer(id)) continue;
    const type = map.getLayer(id).type;
    if (type === "raster") map.setPaintProperty(id, "raster-opacity", opacity);
    else if (type === "fill") map.setPaintProperty(id, "fill-opacity", 0.55 * opacity);
    else if (type === "line") map.setPaintProperty(id, "line-opacity", opacity);
  }
}

/** A map with an empty style: no glyphs, no sprites, no basemap (nothing outside the app is fetched). */
export function newMap(container, options = {}) {
  return new maplibregl.Map({
    container,
    style: {
      version: 8,
      sources: {},
      layers: [{ id: "background", type: "background", paint: { "background-color": "#e4e7eb" } }],
    },
    attributionControl: false,
    preserveDrawingBuffer: true, // so the canvas can be read back (screenshots, tests)
    dragRotate: false,
    pitchWithRotate: false,
    ...options,
  });
}

/** Keep maps showing the same place: moving one moves the others. */
export function syncMaps(...maps) {
  let moving = false;
  for (const source of maps) {
    source.on("move", () => {
      if (moving) return;
      moving = true;
      for (const other of maps) {
        if (other !== source) other.jumpTo({ center: source.getCenter(), zoom: source.getZoom(), bearing: source.getBearing(), pitch: source.getPitch() });
      }
      moving = false;
    });
  }
}

/** The union of several [w, s, e, n] boxes. */
export function unionBounds(boxes) {
  const valid = boxes.filter(Boolean);
  if (!valid.length) return null;
  return [
    Math.min(...valid.map((b) => b[0])),
    Math.min(...valid.map((b) => b[1])),
    Math.max(...valid.map((b) => b[2])),
    Math.max(...valid.map((b) => b[3])),
  ];
}

export { maplibregl };
