// A small static map: the XYZ tiles of one layer around a place, as plain <img> elements, with the
// change's outline drawn over them in SVG. Used for the Validation Tool's before/after panels, where
// six WebGL maps would be heavy; it fetches the few tiles the panel covers and nothing else.
import { el } from "./ui.js";

const SIZE = 256; // the panel's size in CSS pixels
const TILE = 256;

/** Web Mercator pixel coordinates of lon/lat at zoom z (the whole world is 256·2^z pixels). */
export function project(lon, lat, z) {
  const scale = TILE * 2 ** z;
  const sin = Math.sin((lat * Math.PI) / 180);
  return [((lon + 180) / 360) * scale, (0.5 - Math.log((1 + sin) / (1 - sin)) / (4 * Math.PI)) * scale];
}

/** The deepest zoom (at most maxZoom) at which bbox [w, s, e, n], padded by `pad`, fits the panel. */
export function fitZoom(bbox, { pad = 2.2, maxZoom = 17 } = {}) {
  for (let z = maxZoom; z > 0; z--) {
    const [x0, y0] = project(bbox[0], bbox[3], z);
    const [x1, y1] = project(bbox[2], bbox[1], z);
    if (Math.max(x1 - x0, y1 - y0) * pad <= SIZE) return z;
  }
  return 1;
}

function rings(geometry) {
  if (!geometry) return [];
  if (geometry.type === "Polygon") return geometry.coordinates;
  if (geometry.type === "MultiPolygon") return geometry.coordinates.flat();
  return [];
}

/**
 * A panel showing `template` (an XYZ URL with {z}/{x}/{y}) centred on `bbox` at zoom `z`, with `geometry`'s outline.
 * `empty` is the text shown instead when there is no such layer.
 */
export function tilePanel(title, template, bbox, z, geometry, { empty = "No layer" } = {}) {
  const view = el("div", { class: "tile-view", style: `width:${SIZE}px;height:${SIZE}px` });
  const figure = el("figure", { class: "tile-panel", dataset: { title } }, el("figcaption", {}, title), view);
  if (!template) {
    view.append(el("div", { class: "empty" }, empty));
    return figure;
  }
  const [cx, cy] = project((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2, z);
  const left = cx - SIZE / 2;
  const top = cy - SIZE / 2;
  let failed = 0;
  let tiles = 0;
  for (let tx = Math.floor(left / TILE); tx <= Math.floor((left + SIZE - 1) / TILE); tx++) {
    for (let ty = Math.floor(top / TILE); ty <= Math.floor((top + SIZE - 1) / TILE); ty++) {
      tiles++;
      const url = template.replace("{z}", z).replace("{x}", tx).replace("{y}", ty);
      const img = el("img", { src: url, alt: "", width: TILE, height: TILE, style: `left:${tx * TILE - left}px;top:${ty * TILE - top}px` });
      // A tile with no data is 204 (no image): hide it, and say so when the whole panel is empty.
      img.addEventListener("error", () => {
        img.hidden = true;
        if (++failed === tiles) view.prepend(el("div", { class: "empty" }, "No data here"));
      });
      view.append(img);
    }
  }
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${SIZE} ${SIZE}`);
  for (const ring of rings(geometry)) {
    const points = ring.map(([lon, lat]) => project(lon, lat, z)).map(([x, y]) => `${(x - left).toFixed(1)},${(y - top).toFixed(1)}`);
    const outline = document.createElementNS("http://www.w3.org/2000/svg", "polygon");
    outline.setAttribute("points", points.join(" "));
    outline.setAttribute("class", "outline");
    svg.append(outline);
  }
  view.append(svg);
  return figure;
}

/** The [w, s, e, n] box of a GeoJSON polygon or multipolygon. */
export function geometryBounds(geometry) {
  const points = rings(geometry).flat();
  const lons = points.map((p) => p[0]);
  const lats = points.map((p) => p[1]);
  return [Math.min(...lons), Math.min(...lats), Math.max(...lons), Math.max(...lats)];
}
