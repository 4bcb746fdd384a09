// Sample queues: probability samples for the accuracy estimates and active learning's "label next" queues
// (lcms/serve/samples.py). Operators go point by point: the place on the year's true-colour composite (both
// years side by side for a pair of years), a class from the legend, an optional comment, then the next point.
//
// A probability sample is labelled blind: the page never shows the map's class there (and the service never
// sends it), so the labels stay an independent reference. A "label next" queue may show the model's class on
// request: its labels are training data, not an estimate.
import { ApiError, get, post } from "./api.js";
import { addLayer, loadCatalogue, maplibregl, newMap, syncMaps } from "./layers.js";
import { $, el, showMessage, startPage } from "./ui.js";

const ACTIVE = "active";
const POINT_ZOOM = 16;

const state = {
  me: null,
  catalogue: null,
  designs: [],
  design: null, // the open design's row of GET /samples
  queue: null, // its GET /queue answer (classes, asks, years)
  classes: [], // [{code, name, color, key}] in the order of the buttons
  current: null, // the GET /next answer of the open point
  picked: [], // the chosen class codes: one, or from and to
  maps: [],
  saving: false,
};

const canLabel = () => state.me && ["operator", "admin"].includes(state.me.role);
const isActive = () => state.design && state.design.kind === ACTIVE;
const digitKey = (i) => (i < 9 ? String(i + 1) : i === 9 ? "0" : null);

async function main() {
  state.me = await startPage("samples");
  if (!canLabel()) $("#read-only").hidden = false;
  setUpControls();
  try {
    state.catalogue = await loadCatalogue();
  } catch (error) {
    showMessage(`Cannot list the layers: ${error.message}`);
    return;
  }
  if (state.catalogue.problems.length) showMessage(state.catalogue.problems.join(" "), "warning");
  await refreshDesigns();
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = state.designs.find((d) => d.design_id === wanted) || state.designs[0];
  if (first) await openDesign(first.design_id);
}

// ---------------------------------------------------------------------------------------------- the list

async function refreshDesigns() {
  try {
    state.designs = (await get("/samples")).designs;
  } catch (error) {
    showMessage(`Cannot list the sample queues: ${error.message}`);
    return;
  }
  const list = $("#designs");
  if (!state.designs.length) {
    list.replaceChildren(el("li", { class: "muted" }, "No queues yet: `lcms sample-design CONFIG` draws an accuracy sample, `lcms label-next CONFIG` picks units to label."));
    $("#empty").replaceChildren(el("p", {}, "There are no sample queues yet."));
    return;
  }
  list.replaceChildren(
    ...state.designs.map((d) => {
      const by = Object.entries(d.labelled_by || {}).map(([who, n]) => `${who} ${n}`).join(", ");
      return el(
        "li",
        { class: state.design && state.design.design_id === d.design_id ? "selected" : "", dataset: { designId: d.design_id, kind: d.kind }, onclick: () => openDesign(d.design_id) },
        el("span", {}, `${d.product} ${(d.years || []).join(" → ")}`),
        el("span", { class: `status ${d.kind === ACTIVE ? "corrected" : ""}` }, d.queue),
        el("span", { class: "muted small progress-count", dataset: { labelled: d.labelled, total: d.points } }, `${d.labelled} / ${d.points} labelled`),
        el("span", { class: "muted small" }, by),
        el("span", { class: "muted small design-id" }, d.design_id),
      );
    }),
  );
}

async function openDesign(designId) {
  state.design = state.designs.find((d) => d.design_id === designId);
  if (!state.design) return;
  history.replaceState(null, "", `#${encodeURIComponent(designId)}`);
  [...$("#designs").children].forEach((li) => li.classList.toggle("selected", li.dataset.designId === designId));
  try {
    state.queue = await get(`/samples/${encodeURIComponent(designId)}/queue`, { limit: 1 });
  } catch (error) {
    showMessage(`Cannot open the queue: ${error.message}`);
    return;
  }
  const legend = state.catalogue.legend;
  state.classes = Object.entries(state.queue.classes).map(([code, name], i) => {
    const entry = legend.find((c) => c.code === Number(code));
    return { code: Number(code), name, color: entry ? entry.color : "#999999", key: digitKey(i) };
  });
  $("#empty").hidden = true;
  $("#labelling").hidden = false;
  $("#labelling").dataset.kind = state.design.kind;
  $("#design-title").textContent = `${state.design.queue}: ${state.design.product} ${(state.design.years || []).join(" → ")}`;
  $("#blind-note").textContent = isActive()
    ? "A unit picked by active learning: give the class that covers most of the outlined unit. Its label becomes training data."
    : "A probability sample: give the class you see at the marked point. The map's class is not shown, so your label stays an independent reference.";
  $("#predicted-toggle").hidden = !isActive();
  $("#show-predicted").checked = false;
  buildPickers();
  buildMaps();
  await nextPoint(0);
}

// ---------------------------------------------------------------------------------------- the pickers

function buildPickers() {
  const asks = state.queue.asks.split(" and ");
  const years = state.queue.years || [];
  $("#pickers").replaceChildren(
    ...asks.map((field, slot) =>
      el(
        "div",
        { class: "class-picker", dataset: { field, slot } },
        el("strong", {}, asks.length > 1 ? `Class in ${years[slot] ?? (slot ? "the second year" : "the first year")}` : "Class"),
        ...state.classes.map((c) =>
          el(
            "button",
            { type: "button", class: "class-button", dataset: { code: c.code }, disabled: !canLabel(), title: c.key ? `${c.name} (${c.key})` : c.name, onclick: () => pick(slot, c.code) },
            el("span", { class: "swatch", style: `background:${c.color}` }),
            c.name,
            c.key ? [" ", el("kbd", {}, c.key)] : null,
          ),
        ),
      ),
    ),
  );
  for (const id of ["#confirm", "#comment"]) $(id).disabled = !canLabel(); // viewers may still step through (Skip)
  state.picked = asks.map(() => null);
  showPicked();
}

function pick(slot, code) {
  if (!canLabel() || !state.current || state.current.done) return;
  state.picked[slot] = code;
  showPicked();
}

/** A digit: the first empty slot gets the class (both full: the digit starts again at the first). */
function pickByKey(key) {
  const c = state.classes.find((x) => x.key === key);
  if (!c) return;
  let slot = state.picked.findIndex((v) => v === null);
  if (slot < 0) {
    state.picked = state.picked.map(() => null);
    slot = 0;
  }
  pick(slot, c.code);
}

function showPicked() {
  for (const picker of $("#pickers").children) {
    const chosen = state.picked[Number(picker.dataset.slot)];
    picker.dataset.picked = chosen ?? "";
    for (const button of picker.querySelectorAll(".class-button")) button.classList.toggle("chosen", Number(button.dataset.code) === chosen);
  }
  $("#confirm").disabled = !canLabel() || state.picked.some((v) => v === null) || !state.current || state.current.done;
}

// ------------------------------------------------------------------------------------------ the maps

/** One map per year of the design (two side by side for a pair of years), kept on the same place. */
function buildMaps() {
  for (const map of state.maps) map.remove();
  state.maps = [];
  const box = $("#sample-maps");
  const years = state.queue.years && state.queue.years.length ? state.queue.years : [null];
  box.replaceChildren();
  box.dataset.count = years.length;
  for (const year of years) {
    const container = el("div", { class: "sample-map", dataset: { year: year ?? "" } });
    box.append(el("figure", { class: "sample-map-figure" }, el("figcaption", {}, year ? `${year}` : "imagery"), container));
    const map = newMap(container, { center: [0, 0], zoom: 1 });
    map.addControl(new maplibregl.NavigationControl({ showCompass: false }));
    map.year = year;
    map.on("load", () => {
      drawImagery(map);
      const empty = { type: "FeatureCollection", features: [] };
      map.addSource("unit", { type: "geojson", data: empty });
      map.addSource("point", { type: "geojson", data: empty });
      map.addLayer({ id: "unit-casing", type: "line", source: "unit", paint: { "line-color": "#202020", "line-width": 4.5 } });
      map.addLayer({ id: "unit", type: "line", source: "unit", paint: { "line-color": "#ff00ff", "line-width": 2.5 } });
      map.addLayer({ id: "point", type: "circle", source: "point", paint: { "circle-radius": 7, "circle-color": "rgba(0,0,0,0)", "circle-stroke-color": "#ff00ff", "circle-stroke-width": 2.5 } });
      map.loadedOnce = true;
      showPlace();
    });
    map.on("idle", () => (container.dataset.idle = "true"));
    map.on("movestart", () => (container.dataset.idle = "false"));
    state.maps.push(map);
  }
  if (state.maps.length > 1) syncMaps(...state.maps);
  window.lcmsSampleMaps = state.maps; // for the browser tests: the maps' sources
}

/** The year's composite (true or false colour), and for a "label next" queue on request the model's map. */
function drawImagery(map) {
  for (const id of ["imagery", "model-map"]) {
    if (map.getLayer(id)) map.removeLayer(id);
    if (map.getSource(id)) map.removeSource(id);
  }
  const composite = $("#composite").value;
  const year = map.year ?? (state.catalogue.years.length ? state.catalogue.years[state.catalogue.years.length - 1] : null);
  const imagery = state.catalogue.imagery.find((i) => i.period === String(year) && i.composite === composite);
  const before = map.getLayer("unit-casing") ? "unit-casing" : undefined;
  if (imagery) {
    addLayer(map, { id: "imagery", kind: "raster", tilejson: imagery.tilejson }, [], { visible: true });
    if (before) map.moveLayer("imagery", before);
  }
  // Never for a probability sample: its labels must not see the map they assess.
  if (isActive() && $("#show-predicted").checked) {
    const labels = state.catalogue.maps.find((m) => m.layer === "labels" && m.year === year && m.product === state.design.product);
    if (labels) {
      addLayer(map, { id: "model-map", kind: "raster", tilejson: labels.tilejson, nearest: true }, [], { visible: true, opacity: 0.5 });
      if (before) map.moveLayer("model-map", before);
    }
  }
}

function unitBounds(geometry) {
  const rings = geometry.type === "Polygon" ? geometry.coordinates : geometry.type === "MultiPolygon" ? geometry.coordinates.flat() : [];
  const points = rings.flat();
  const lons = points.map((p) => p[0]);
  const lats = points.map((p) => p[1]);
  return [
    [Math.min(...lons), Math.min(...lats)],
    [Math.max(...lons), Math.max(...lats)],
  ];
}

/** Centre the maps on the open point (its marker), or fit its unit's outline. */
function showPlace() {
  const point = state.current && !state.current.done ? state.current.point : null;
  const empty = { type: "FeatureCollection", features: [] };
  for (const map of state.maps) {
    if (!map.loadedOnce) continue;
    map.getSource("point").setData(point && !point.unit ? { type: "Feature", geometry: { type: "Point", coordinates: [point.lon, point.lat] }, properties: {} } : empty);
    map.getSource("unit").setData(point && point.unit ? { type: "Feature", geometry: point.unit, properties: { sample_id: point.sample_id } } : empty);
  }
  if (!point || !state.maps.length) return;
  const first = state.maps[0];
  if (point.unit) first.fitBounds(unitBounds(point.unit), { padding: 80, duration: 0, maxZoom: 17 });
  else first.jumpTo({ center: [point.lon, point.lat], zoom: POINT_ZOOM });
  for (const other of state.maps.slice(1)) other.jumpTo({ center: first.getCenter(), zoom: first.getZoom() });
}

// ------------------------------------------------------------------------------------------ the points

async function nextPoint(after) {
  if (!state.design) return;
  const designId = state.design.design_id;
  let answer;
  try {
    answer = await get(`/samples/${encodeURIComponent(designId)}/next`, { after, mine: $("#mine").checked ? 1 : undefined });
  } catch (error) {
    showMessage(`Cannot get the next point: ${error.message}`);
    return;
  }
  if (!state.design || state.design.design_id !== designId) return;
  state.current = answer;
  state.picked = state.picked.map(() => null);
  $("#comment").value = "";
  const labelled = answer.total - answer.remaining;
  $("#progress-text").textContent = `${labelled} of ${answer.total} ${$("#mine").checked ? "labelled by you" : "labelled"}`;
  $("#progress-text").dataset.labelled = labelled;
  $("#progress-text").dataset.total = answer.total;
  $("#progress-bar").style.width = answer.total ? `${(100 * labelled) / answer.total}%` : "0";
  const view = $("#labelling");
  if (answer.done) {
    delete view.dataset.sampleId;
    $("#point-title").textContent = "";
    $("#predicted").hidden = true;
    $("#done").hidden = false;
    $("#done").textContent = $("#mine").checked ? "You have labelled every point of this queue." : "Every point of this queue is labelled.";
  } else {
    const p = answer.point;
    view.dataset.sampleId = p.sample_id;
    $("#done").hidden = true;
    $("#point-title").textContent = `point ${p.sample_id} · ${answer.position} of ${answer.total} in the queue's order · ${p.lat.toFixed(5)}, ${p.lon.toFixed(5)}${p.labelled_by.length ? ` · labelled by ${p.labelled_by.join(", ")}` : ""}`;
    showPredicted();
  }
  showPicked();
  showPlace();
}

function showPredicted() {
  const p = state.current && !state.current.done ? state.current.point : null;
  const shown = isActive() && $("#show-predicted").checked && p;
  $("#predicted").hidden = !shown;
  if (!shown) return;
  const c = state.classes.find((x) => x.code === p.predicted_class);
  $("#predicted").textContent = `model: ${c ? c.name : p.predicted_class ?? "unknown"}`;
}

async function saveLabel() {
  if (!canLabel() || state.saving || !state.current || state.current.done) return;
  if (state.picked.some((v) => v === null)) {
    showMessage(state.picked.length > 1 ? "Pick the class of both years first." : "Pick a class first (a digit or a click).", "info");
    return;
  }
  const point = state.current.point;
  const fields = state.queue.asks.split(" and ");
  const body = { comment: $("#comment").value };
  fields.forEach((field, i) => (body[field] = state.picked[i]));
  state.saving = true;
  $("#save-state").textContent = "Saving…";
  try {
    await post(`/samples/${encodeURIComponent(state.design.design_id)}/points/${point.sample_id}/labels`, body);
    $("#save-state").textContent = `Saved point ${point.sample_id}.`;
  } catch (error) {
    $("#save-state").textContent = "";
    showMessage(`Not saved: ${error.message}`);
    return;
  } finally {
    state.saving = false;
  }
  await nextPoint(point.sample_id);
  refreshDesigns();
}

function skip() {
  if (!state.current || state.current.done) return;
  nextPoint(state.current.point.sample_id);
}

// ---------------------------------------------------------------------------------------- controls

function setUpControls() {
  $("#confirm").addEventListener("click", () => saveLabel());
  $("#skip").addEventListener("click", () => skip());
  $("#mine").addEventListener("change", () => nextPoint(0));
  $("#composite").addEventListener("change", () => state.maps.forEach((m) => m.loadedOnce && drawImagery(m)));
  $("#show-predicted").addEventListener("change", () => {
    state.maps.forEach((m) => m.loadedOnce && drawImagery(m));
    showPredicted();
  });
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName) && event.target.type !== "checkbox";
    if (event.key === "Enter" && (!typing || event.target.id === "comment")) {
      if (canLabel()) saveLabel();
    } else if (typing) {
      return;
    } else if (/^[0-9]$/.test(event.key)) {
      if (canLabel()) pickByKey(event.key);
      else showMessage("Viewers cannot label: ask an admin for the operator role.", "info");
    } else if (event.key.toLowerCase() === "s") {
      skip();
    } else {
      return;
    }
    event.preventDefault();
  });
}

main().catch((error) => {
  if (!(error instanceof ApiError)) showMessage(`Something went wrong: ${error.message}`);
});
