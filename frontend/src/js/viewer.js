// The map viewer: layer list with opacity, legend, compare (swipe or side by side), and the pixel inspector.
import { get } from "./api.js";
import { drawSeries } from "./chart.js";
import { addLayer, layerDefinitions, loadCatalogue, newMap, setOpacity, setVisible, syncMaps, unionBounds } from "./layers.js";
import { $, classLabel, el, sessionEnded, showMessage, startPage } from "./ui.js";

const state = {
  catalogue: null,
  defs: [],
  visible: new Set(),
  opacity: {},
  layerIds: {}, // def id -> MapLibre layer ids on map A
  mapA: null,
  mapB: null,
  compareMode: "off",
  compareLayer: null,
  swipeX: 0.5, // fraction of the width where the swipe line is
  clicked: null,
  inspectToken: 0,
};

async function main() {
  await startPage("viewer");
  let catalogue;
  try {
    catalogue = await loadCatalogue();
  } catch (error) {
    showMessage(`Cannot list the layers: ${error.message}`);
    return;
  }
  state.catalogue = catalogue;
  state.defs = layerDefinitions(catalogue);
  explainGaps(catalogue);

  // Shown at first: the latest year's map and the change polygons; compared with the first year's map.
  const labels = state.defs.filter((d) => d.group === "Maps");
  if (labels.length) state.visible.add(labels[labels.length - 1].id);
  state.defs.filter((d) => d.kind === "changes").forEach((d) => state.visible.add(d.id));
  state.compareLayer = (labels[0] || state.defs.find((d) => d.kind === "raster") || {}).id || null;

  const placeInAddress = location.hash.length > 1; // #zoom/lat/lon, as the map writes it
  state.mapA = newMap("map-a", { hash: true });
  state.mapA.on("error", (event) => reportMapError(event));
  state.mapA.on("load", () => {
    for (const def of state.defs) {
      state.layerIds[def.id] = addLayer(state.mapA, def, catalogue.legend, {
        visible: state.visible.has(def.id),
        opacity: opacityOf(def.id),
      });
    }
    addMarker(state.mapA);
    setBasemap(localStorage.getItem(BASEMAP_KEY) || "");
    if (!placeInAddress) fitToData(state.mapA);
    document.body.dataset.mapReady = "true";
  });
  state.mapA.on("click", (event) => inspect(event.lngLat));
  // Whether map A has drawn everything it fetched (read by the browser tests, and handy when debugging).
  state.mapA.on("dataloading", () => (document.body.dataset.mapIdle = "false"));
  state.mapA.on("idle", () => (document.body.dataset.mapIdle = "true"));

  renderLayerList();
  renderLegend();
  $("#basemap-url").value = localStorage.getItem(BASEMAP_KEY) || "";
  $("#basemap-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setBasemap($("#basemap-url").value.trim());
  });
  setUpCompare();
  $("#band").addEventListener("change", () => state.clicked && inspect(state.clicked));
}

const BASEMAP_KEY = "lcms-basemap";

/** An optional XYZ basemap under every layer (none by default: nothing outside the app is fetched). */
function setBasemap(url) {
  const map = state.mapA;
  if (map.getLayer("basemap")) map.removeLayer("basemap");
  if (map.getSource("basemap")) map.removeSource("basemap");
  if (url && !/\{z\}.*\{x\}.*\{y\}/.test(url)) {
    showMessage("A basemap URL needs {z}, {x} and {y}, e.g. https://tiles.example.org/{z}/{x}/{y}.png", "warning");
    return;
  }
  localStorage.setItem(BASEMAP_KEY, url);
  if (!url) return;
  map.addSource("basemap", { type: "raster", tiles: [url], tileSize: 256 });
  const first = map.getStyle().layers.find((l) => l.id !== "background");
  map.addLayer({ id: "basemap", type: "raster", source: "basemap" }, first && first.id);
}

function opacityOf(id) {
  return state.opacity[id] ?? 1;
}

/** Say which years lack maps, and when there is nothing at all to show. */
function explainGaps(catalogue) {
  const notes = [...catalogue.problems];
  const mapped = new Set(catalogue.maps.filter((m) => m.layer === "labels").map((m) => m.year));
  if (!catalogue.maps.length) {
    notes.push("No maps have been exported yet: run the pipeline (`lcms run CONFIG`) up to the export stage.");
  } else {
    const missing = catalogue.years.filter((y) => !mapped.has(y));
    if (missing.length) notes.push(`No map yet for ${missing.join(", ")} (the export stage has not run for it).`);
  }
  if (notes.length) showMessage(notes.join(" "), "warning");
}

let lastTileError = 0;
function reportMapError(event) {
  const status = event.error && event.error.status;
  if (status === 401) {
    // Tiles are the only requests while one pans: a session that ends shows here first.
    sessionEnded("the service refused the map tiles (401): log in again");
    return;
  }
  const now = Date.now();
  if (now - lastTileError < 5000) return; // one message per burst of failing tiles
  lastTileError = now;
  const what = event.sourceId ? `layer ${event.sourceId}` : "the map";
  showMessage(`Some tiles of ${what} could not be loaded: ${event.error ? event.error.message : "unknown error"}`, "warning");
}

function fitToData(map) {
  const bounds = unionBounds(state.defs.filter((d) => d.kind === "raster").map((d) => d.bounds)) ||
    unionBounds(state.defs.filter((d) => d.kind === "changes").map((d) => d.bounds));
  if (bounds) map.fitBounds([[bounds[0], bounds[1]], [bounds[2], bounds[3]]], { padding: 20, duration: 0 });
}

// ------------------------------------------------------------------------------------------- layer list

function renderLayerList() {
  const list = $("#layer-list");
  const groups = [...new Set(state.defs.map((d) => d.group))];
  list.replaceChildren(
    ...groups.map((group) => {
      const defs = state.defs.filter((d) => d.group === group);
      const rows = defs.map((def) => layerRow(def));
      // Imagery has many periods: folded unless one of them is shown.
      const open = group !== "Imagery" || defs.some((d) => state.visible.has(d.id));
      return el("details", { class: "layer-group", open }, el("summary", {}, `${group} (${defs.length})`), ...rows);
    }),
  );
  if (!state.defs.length) list.replaceChildren(el("p", { class: "muted" }, "No layers."));
}

function layerRow(def) {
  const checkbox = el("input", {
    type: "checkbox",
    checked: state.visible.has(def.id),
    onchange: (event) => {
      if (event.target.checked) state.visible.add(def.id);
      else state.visible.delete(def.id);
      setVisible(state.mapA, state.layerIds[def.id] || [], event.target.checked);
      updateCompareLabels();
    },
  });
  const slider = el("input", {
    type: "range",
    min: 0,
    max: 100,
    value: Math.round(opacityOf(def.id) * 100),
    title: "Opacity",
    "aria-label": `Opacity of ${def.title}`,
    oninput: (event) => {
      state.opacity[def.id] = event.target.value / 100;
      setOpacity(state.mapA, state.layerIds[def.id] || [], state.opacity[def.id]);
    },
  });
  return el("div", { class: "layer-row", dataset: { layer: def.id } }, el("label", {}, checkbox, def.title), slider);
}

function renderLegend() {
  const legend = state.catalogue.legend;
  const box = $("#legend");
  box.replaceChildren(
    el("div", { class: "legend-classes" }, ...legend.map((c) => el("div", { class: "legend-item", dataset: { code: c.code } }, classLabel(legend, c.code)))),
    el("div", { class: "legend-title" }, "Confidence"),
    el("div", { class: "ramp viridis" }),
    el("div", { class: "ramp-labels" }, el("span", {}, "0 %"), el("span", {}, "100 %")),
    el("div", { class: "legend-title" }, "Change polygons"),
    el("p", { class: "small" }, "Fill: the class after; outline: the class before (legend colours)."),
  );
  if (!legend.length) box.prepend(el("p", { class: "muted" }, "No class legend: no map exported yet."));
}

// -------------------------------------------------------------------------------------------- compare

function setUpCompare() {
  const select = $("#compare-layer");
  const rasters = state.defs.filter((d) => d.kind === "raster");
  select.replaceChildren(...rasters.map((d) => el("option", { value: d.id, selected: d.id === state.compareLayer }, `${d.group}: ${d.title}`)));
  select.addEventListener("change", () => {
    state.compareLayer = select.value;
    if (state.compareMode !== "off") showCompareLayer();
  });
  $("#compare-mode").addEventListener("change", (event) => setCompareMode(event.target.value));
  const handle = $("#swipe");
  handle.addEventListener("pointerdown", (event) => {
    handle.setPointerCapture(event.pointerId);
    const move = (e) => setSwipe((e.clientX - $("#map-area").getBoundingClientRect().left) / $("#map-area").clientWidth);
    const up = () => {
      handle.removeEventListener("pointermove", move);
      handle.removeEventListener("pointerup", up);
    };
    handle.addEventListener("pointermove", move);
    handle.addEventListener("pointerup", up);
  });
  handle.addEventListener("keydown", (event) => {
    if (event.key === "ArrowLeft") setSwipe(state.swipeX - 0.05);
    if (event.key === "ArrowRight") setSwipe(state.swipeX + 0.05);
  });
  new ResizeObserver(() => state.compareMode === "swipe" && setSwipe(state.swipeX)).observe($("#map-area"));
}

function setCompareMode(mode) {
  state.compareMode = mode;
  const area = $("#map-area");
  area.dataset.compare = mode;
  $("#map-b").hidden = mode === "off";
  $("#swipe").hidden = mode !== "swipe";
  $("#compare-labels").hidden = mode === "off";
  if (mode !== "off" && !state.mapB) {
    // Map B follows map A; in swipe mode it lies on top, clipped to the right of the line, and A takes the clicks.
    state.mapB = newMap("map-b", { center: state.mapA.getCenter(), zoom: state.mapA.getZoom() });
    state.mapB.on("error", (event) => reportMapError(event));
    state.mapB.on("load", () => {
      for (const def of state.defs.filter((d) => d.kind === "raster")) addLayer(state.mapB, def, state.catalogue.legend);
      addMarker(state.mapB);
      state.mapBReady = true;
      showCompareLayer();
    });
    state.mapB.on("click", (event) => inspect(event.lngLat));
    state.mapB.on("dataloading", () => (document.body.dataset.mapBIdle = "false"));
    state.mapB.on("idle", () => (document.body.dataset.mapBIdle = "true"));
    syncMaps(state.mapA, state.mapB);
  }
  if (state.mapB) {
    $("#map-b").style.clipPath = "";
    state.mapA.resize();
    state.mapB.resize();
    state.mapB.jumpTo({ center: state.mapA.getCenter(), zoom: state.mapA.getZoom() });
    if (mode === "swipe") setSwipe(state.swipeX);
  }
  updateCompareLabels();
}

function showCompareLayer() {
  if (!state.mapBReady) return; // called again when map B has loaded
  for (const def of state.defs.filter((d) => d.kind === "raster")) setVisible(state.mapB, [def.id], def.id === state.compareLayer);
  updateCompareLabels();
}

function setSwipe(fraction) {
  state.swipeX = Math.min(1, Math.max(0, fraction));
  const width = $("#map-area").clientWidth;
  const x = Math.round(state.swipeX * width);
  $("#swipe").style.left = `${x}px`;
  $("#swipe").setAttribute("aria-valuenow", Math.round(state.swipeX * 100));
  $("#map-b").style.clipPath = `inset(0 0 0 ${x}px)`;
}

function updateCompareLabels() {
  const shown = state.defs.filter((d) => state.visible.has(d.id) && d.kind === "raster").map((d) => d.title);
  const right = state.defs.find((d) => d.id === state.compareLayer);
  $("#label-a").textContent = `◀ ${shown.length ? shown.join(" + ") : "no raster layer"}`;
  $("#label-b").textContent = `${right ? right.title : "—"} ▶`;
}

// --------------------------------------------------------------------------------------- pixel inspector

function addMarker(map) {
  map.addSource("clicked", { type: "geojson", data: { type: "FeatureCollection", features: [] } });
  map.addLayer({
    id: "clicked",
    type: "circle",
    source: "clicked",
    paint: { "circle-radius": 6, "circle-color": "rgba(0,0,0,0)", "circle-stroke-color": "#ff00ff", "circle-stroke-width": 2.5 },
  });
}

async function inspect(lngLat) {
  state.clicked = lngLat;
  const token = ++state.inspectToken;
  const lon = +lngLat.lng.toFixed(6);
  const lat = +lngLat.lat.toFixed(6);
  const point = { type: "FeatureCollection", features: [{ type: "Feature", geometry: { type: "Point", coordinates: [lon, lat] }, properties: {} }] };
  for (const map of [state.mapA, state.mapB]) if (map && map.getSource("clicked")) map.getSource("clicked").setData(point);

  const info = $("#pixel-info");
  $("#pixel-hint").hidden = true;
  info.replaceChildren(el("p", { class: "place", dataset: { lon, lat } }, `${lat.toFixed(5)}° N, ${lon.toFixed(5)}° E`), el("p", { class: "muted" }, "Loading…"));
  const legend = state.catalogue.legend;
  const labelled = state.catalogue.maps.filter((m) => m.layer === "labels");
  const answers = await Promise.allSettled(labelled.map((m) => get(`/maps/${m.product}/${m.year}/point`, { lon, lat })));
  if (token !== state.inspectToken) return; // a newer click took over
  const rows = labelled.map((m, i) => {
    const answer = answers[i];
    if (answer.status === "rejected") {
      return el("tr", { dataset: { year: m.year } }, el("td", {}, m.year), el("td", { colspan: 2, class: "muted" }, answer.reason.message));
    }
    const p = answer.value;
    return el(
      "tr",
      { class: "pixel-year", dataset: { year: m.year, product: m.product, class: p.class ?? "", confidence: p.confidence ?? "" } },
      el("td", {}, m.year),
      el("td", {}, classLabel(legend, p.class)),
      el("td", { class: "num" }, p.confidence === null ? "—" : `${p.confidence} %`),
    );
  });
  const table = el(
    "table",
    { class: "pixel-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "Year"), el("th", {}, "Class"), el("th", {}, "Confidence"))),
    el("tbody", {}, rows),
  );
  info.replaceChildren(info.firstChild, labelled.length ? table : el("p", { class: "muted" }, "No maps exported yet."));

  $("#band-choice").hidden = false;
  const chart = $("#pixel-chart");
  chart.replaceChildren(el("p", { class: "muted" }, "Loading the time series…"));
  try {
    const series = await get("/imagery/timeseries", { lon, lat, band: $("#band").value });
    if (token !== state.inspectToken) return;
    drawSeries(chart, series);
  } catch (error) {
    if (token === state.inspectToken) chart.replaceChildren(el("p", { class: "error-text" }, `No time series: ${error.message}`));
  }
}

main();
