// The Validation Tool: a queue of change polygons with filters, each change with its before/after maps,
// composites, acquisitions and time series, and the decisions (confirm, reject, correct, not sure).
//
// Decisions are sent with the version of the change they were made on. The service answers 409 when
// someone decided meanwhile: the page then shows the current state and the operator decides again.
// A decision that got no answer (network, server, expired session) is kept in this browser
// (localStorage) and listed as unsaved with a Retry button until the service confirms it.
import { ApiError, get, post } from "./api.js";
import { drawSeries } from "./chart.js";
import { addLayer, loadCatalogue, maplibregl, newMap } from "./layers.js";
import { fitZoom, geometryBounds, tilePanel } from "./tilepanel.js";
import { $, classLabel, el, formatDate, showMessage, startPage } from "./ui.js";

const PAGE = 50;
const REVIEWED = ["confirmed", "rejected", "corrected", "unsure", "conflict"];
const UNSAVED_KEY = "lcms-unsaved-decisions";
const DECISION_NAMES = { confirmed: "Confirm", rejected: "Reject", corrected: "Correct", unsure: "Not sure" };

const state = {
  me: null,
  catalogue: null,
  legend: [],
  collection: null, // the change collection being reviewed
  queue: [], // features of the current page(s)
  matched: 0,
  index: -1, // position of the open change in the queue
  change: null, // the open change (GeoJSON feature)
  review: null, // its review state (version, status, history)
  box: null, // drawn filter box [w, s, e, n]
  drawing: null, // "box" or "outline" while the context map takes clicks
  outline: [], // vertices of a redrawn outline
  acquisitions: [],
  chip: -1,
  undo: [], // [{collection, change_id, previous}] of this session's decisions, newest last
  map: null,
  saving: false,
};

const percent = (value) => (value === null || value === undefined ? "—" : `${Math.round(value)} %`);
const canDecide = () => state.me && ["operator", "admin"].includes(state.me.role);
const isAdmin = () => state.me && state.me.role === "admin";
const collectionPath = () => `/changes/collections/${state.collection.id}`;

async function main() {
  state.me = await startPage("validate");
  if (!canDecide()) {
    // Viewers see everything, read-only: the decision controls are not there at all.
    for (const id of ["decisions", "correction", "resolve"]) $(`#${id}`).remove();
    $("#undo")?.remove();
  }
  try {
    state.catalogue = await loadCatalogue();
  } catch (error) {
    showMessage(`Cannot list the layers: ${error.message}`);
    return;
  }
  state.legend = state.catalogue.legend;
  const collections = state.catalogue.collections;
  if (!collections.length) {
    $("#empty").replaceChildren(el("p", {}, "There are no change polygons yet: run the change stage (`lcms run CONFIG`), then reload this page."));
    $("#progress-text").textContent = "No changes.";
    if (state.catalogue.problems.length) showMessage(state.catalogue.problems.join(" "), "warning");
    return;
  }
  setUpFilters(collections);
  setUpDecisions();
  setUpKeys();
  showUnsaved();
  await reloadQueue();
}

// ------------------------------------------------------------------------------------------------ filters

function setUpFilters(collections) {
  const select = $("#f-collection");
  select.replaceChildren(...collections.map((c) => el("option", { value: c.id }, `${c.product} ${c.years[0]} → ${c.years[1]}`)));
  state.collection = collections[collections.length - 1];
  select.value = state.collection.id;
  for (const id of ["#f-from", "#f-to", "#c-from", "#c-to", "#r-from", "#r-to"]) {
    const target = $(id);
    if (!target) continue;
    target.append(...state.legend.map((c) => el("option", { value: c.code }, `${c.code} ${c.name}`)));
  }
  select.addEventListener("change", () => {
    state.collection = collections.find((c) => c.id === select.value);
    reloadQueue();
  });
  for (const id of ["#f-from", "#f-to", "#f-status", "#f-sort", "#f-score", "#f-area"]) $(id).addEventListener("change", () => reloadQueue());
  $("#f-draw").addEventListener("click", () => startDrawing("box"));
  $("#f-clear-box").addEventListener("click", () => {
    state.box = null;
    $("#f-clear-box").hidden = true;
    drawBox();
    reloadQueue();
  });
  $("#more").addEventListener("click", () => loadPage(state.queue.length));
}

function filterParams() {
  const params = {};
  if ($("#f-from").value) params.class_from = $("#f-from").value;
  if ($("#f-to").value) params.class_to = $("#f-to").value;
  if ($("#f-status").value) params.status = $("#f-status").value;
  if ($("#f-score").value !== "") params.min_score = $("#f-score").value;
  if ($("#f-area").value !== "") params.min_area = $("#f-area").value;
  if (state.box) params.bbox = state.box.map((v) => v.toFixed(6)).join(",");
  return params;
}

async function reloadQueue() {
  state.queue = [];
  state.index = -1;
  const exportBase = `${collectionPath()}/export`;
  $("#export-gpkg").href = `${exportBase}?format=gpkg`;
  $("#export-csv").href = `${exportBase}?format=csv`;
  await loadPage(0);
  if (state.queue.length) openChange(0);
  else showEmpty(state.matched === 0 && !Object.keys(filterParams()).length ? "This layer has no change polygons." : "No changes match these filters.");
  refreshConflicts();
}

async function loadPage(offset) {
  let page;
  try {
    page = await get(`${collectionPath()}/items`, { ...filterParams(), sortby: $("#f-sort").value, limit: PAGE, offset });
  } catch (error) {
    showMessage(`Cannot load the queue: ${error.message}`);
    return;
  }
  state.queue.push(...page.features);
  state.matched = page.numberMatched;
  renderQueue();
  refreshProgress();
}

/** "214 of 870 reviewed": the changes matching the filters, and those of them with any decision. */
async function refreshProgress() {
  const params = filterParams();
  const wanted = params.status ? REVIEWED.filter((s) => s === params.status) : REVIEWED;
  let reviewed = 0;
  if (wanted.length) {
    try {
      reviewed = (await get(`${collectionPath()}/items`, { ...params, status: wanted, limit: 1 })).numberMatched;
    } catch {
      return;
    }
  }
  const total = state.matched;
  $("#progress-text").textContent = `${reviewed} of ${total} reviewed`;
  $("#progress-text").dataset.reviewed = reviewed;
  $("#progress-text").dataset.total = total;
  $("#progress-bar").style.width = total ? `${(100 * reviewed) / total}%` : "0";
}

function renderQueue() {
  const list = $("#queue");
  list.replaceChildren(
    ...state.queue.map((f, i) => {
      const p = f.properties;
      return el(
        "li",
        { class: i === state.index ? "selected" : "", dataset: { changeId: f.id, status: p.status }, onclick: () => openChange(i) },
        el("span", {}, `${p.class_from_name} → ${p.class_to_name}`),
        el("span", { class: `status ${p.status}` }, p.status),
        el("span", { class: "muted small" }, `${(p.area_m2 / 10000).toFixed(2)} ha · score ${p.score === null ? "—" : p.score.toFixed(1)}`),
        el("span", { class: "muted small" }, p.reviewers.length ? p.reviewers.join(", ") : ""),
      );
    }),
  );
  $("#more").hidden = state.queue.length >= state.matched;
}

async function refreshConflicts() {
  const box = $("#conflicts");
  if (!isAdmin()) return;
  try {
    const page = await get(`${collectionPath()}/items`, { status: "conflict", limit: 100, sortby: "id" });
    box.hidden = !page.features.length;
    box.replaceChildren(
      el("strong", {}, `Conflicts to resolve (${page.numberMatched})`),
      el(
        "ul",
        { id: "conflict-list" },
        ...page.features.map((f) =>
          el("li", { dataset: { changeId: f.id } }, el("a", { href: "#", onclick: (e) => (e.preventDefault(), openById(f)) }, `${f.properties.class_from_name} → ${f.properties.class_to_name}`), ` (${f.properties.reviewers.join(", ")})`),
        ),
      ),
    );
  } catch (error) {
    box.hidden = false;
    box.replaceChildren(`Cannot list the conflicts: ${error.message}`);
  }
}

function openById(feature) {
  const i = state.queue.findIndex((f) => f.id === feature.id);
  if (i >= 0) return openChange(i);
  state.queue.push(feature);
  renderQueue();
  return openChange(state.queue.length - 1);
}

function showEmpty(text) {
  $("#change").hidden = true;
  $("#empty").hidden = false;
  $("#empty").replaceChildren(el("p", {}, text));
}

// ---------------------------------------------------------------------------------------------- one change

async function openChange(index) {
  if (index < 0 || index >= state.queue.length) return;
  state.index = index;
  state.change = state.queue[index];
  state.outline = [];
  state.drawing = null;
  closeForms();
  renderQueue();

  $("#empty").hidden = true;
  $("#change").hidden = false;
  $("#change").dataset.changeId = state.change.id;
  delete $("#change").dataset.version; // set again when this change's review state has loaded
  state.review = null;
  if ($("#comment")) $("#comment").value = "";
  const p = state.change.properties;
  $("#change-title").replaceChildren(classLabel(state.legend, p.class_from), " → ", classLabel(state.legend, p.class_to));
  $("#change-facts").textContent = `${p.year_from} → ${p.year_to} · ${(p.area_m2 / 10000).toFixed(2)} ha · score ${p.score === null ? "—" : p.score.toFixed(1)} · confidence ${percent(p.confidence_from)} → ${percent(p.confidence_to)} · ${state.change.id} · tile ${p.tile_id}`;
  showContextMap();
  renderPanels();
  const id = state.change.id;
  await Promise.all([loadReview(), loadAcquisitions(id), loadSeries(id)]);
}

async function loadReview() {
  const id = state.change.id;
  try {
    const review = await get(`${collectionPath()}/items/${id}/reviews`);
    if (state.change.id === id) showReview(review);
  } catch (error) {
    $("#agreement").replaceChildren(el("p", { class: "error-text" }, `Cannot load the reviews: ${error.message}`));
  }
}

function showReview(review) {
  state.review = review;
  const status = $("#change-status");
  status.className = `status ${review.status}`;
  status.textContent = review.status + (review.orphaned ? " (orphaned)" : "");
  $("#change").dataset.version = review.version;
  $("#change").dataset.status = review.status;
  // Keep the queue's badge in step.
  const item = state.queue.find((f) => f.id === review.change_id);
  if (item) {
    item.properties.status = review.status;
    item.properties.version = review.version;
    item.properties.reviewers = [...new Set(review.history.filter((d) => d.kind === "review").map((d) => d.reviewer))];
    renderQueue();
  }
  const reviewers = new Set(review.history.filter((d) => d.kind === "review").map((d) => d.reviewer));
  const agreement = {
    none: "No decisions yet.",
    single: "One reviewer so far.",
    agreement: `${reviewers.size} reviewers agree.`,
    conflict: `Reviewers disagree: an admin resolves the conflict.`,
    resolved: `Resolved by ${review.resolved_by || "an admin"}.`,
  }[review.agreement] || "";
  $("#agreement").replaceChildren(el("p", { class: "agreement", dataset: { agreement: review.agreement } }, el("span", { class: `status ${review.status}` }, review.status), " ", agreement));
  const rows = review.history.map((d) =>
    el(
      "tr",
      { dataset: { reviewer: d.reviewer, decision: d.decision, kind: d.kind } },
      el("td", {}, d.created_at.replace("T", " ").slice(0, 19)),
      el("td", {}, d.reviewer, d.kind === "resolution" ? " (resolution)" : ""),
      el("td", {}, d.decision),
      el("td", {}, d.decision === "corrected" ? [classLabel(state.legend, d.class_from), " → ", classLabel(state.legend, d.class_to), d.geometry ? " (new outline)" : ""] : ""),
      el("td", {}, d.comment || ""),
    ),
  );
  $("#history").replaceChildren(
    el("thead", {}, el("tr", {}, el("th", {}, "When (UTC)"), el("th", {}, "Who"), el("th", {}, "Decision"), el("th", {}, "Classes"), el("th", {}, "Comment"))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No decisions yet."))),
  );
  if ($("#resolve")) $("#resolve").hidden = !(isAdmin() && review.status === "conflict");
}

// The context map: the change polygons of the layer over the later year's map, zoomed to the change.
function showContextMap() {
  const bounds = geometryBounds(state.change.geometry);
  const fit = () => state.map.fitBounds([[bounds[0], bounds[1]], [bounds[2], bounds[3]]], { padding: 60, duration: 0, maxZoom: 17 });
  if (state.map) {
    setSelected();
    fit();
    return;
  }
  state.map = newMap("context-map", { bounds: [[bounds[0], bounds[1]], [bounds[2], bounds[3]]], fitBoundsOptions: { padding: 60, maxZoom: 17 } });
  state.map.addControl(new maplibregl.NavigationControl({ showCompass: false }));
  state.map.on("load", () => {
    const later = state.catalogue.maps.find((m) => m.layer === "labels" && m.year === state.collection.years[1]);
    if (later) addLayer(state.map, { id: "later", kind: "raster", tilejson: later.tilejson, nearest: true }, state.legend, { visible: true, opacity: 0.6 });
    for (const c of state.catalogue.collections) {
      const tiles = `${location.origin}/changes/collections/${c.id}/tiles/{z}/{x}/{y}.mvt`;
      addLayer(state.map, { id: `changes-${c.id}`, kind: "changes", tiles, bounds: c.extent.spatial.bbox[0] }, state.legend, { visible: c.id === state.collection.id, opacity: 0.7 });
    }
    const empty = { type: "FeatureCollection", features: [] };
    for (const id of ["selected", "drawn", "box"]) state.map.addSource(id, { type: "geojson", data: empty });
    state.map.addLayer({ id: "selected", type: "line", source: "selected", paint: { "line-color": "#ff00ff", "line-width": 3 } });
    state.map.addLayer({ id: "drawn", type: "line", source: "drawn", paint: { "line-color": "#00e5ff", "line-width": 2.5 } });
    state.map.addLayer({ id: "drawn-points", type: "circle", source: "drawn", paint: { "circle-radius": 4, "circle-color": "#00e5ff" } });
    state.map.addLayer({ id: "box", type: "line", source: "box", paint: { "line-color": "#1f6feb", "line-width": 2, "line-dasharray": [2, 2] } });
    setSelected();
    drawBox();
  });
  state.map.on("click", (event) => mapClick(event.lngLat));
}

function setSelected() {
  const source = state.map && state.map.getSource("selected");
  if (source) source.setData({ type: "Feature", geometry: state.change.geometry, properties: {} });
}

function renderPanels() {
  const [a, b] = state.collection.years;
  const bbox = geometryBounds(state.change.geometry);
  const z = fitZoom(bbox);
  const labels = (year) => state.catalogue.maps.find((m) => m.layer === "labels" && m.year === year);
  const composite = (year, kind) => state.catalogue.imagery.find((i) => i.period === String(year) && i.composite === kind);
  const mapTemplate = (year) => labels(year) && `/maps/${labels(year).product}/${year}/labels/tiles/{z}/{x}/{y}.png`;
  const imageryTemplate = (year, kind) => composite(year, kind) && `/imagery/${year}/${kind}/tiles/{z}/{x}/{y}.png`;
  const geometry = state.change.geometry;
  $("#panels").replaceChildren(
    tilePanel(`Map ${a}`, mapTemplate(a), bbox, z, geometry, { empty: `No map for ${a} yet` }),
    tilePanel(`Map ${b}`, mapTemplate(b), bbox, z, geometry, { empty: `No map for ${b} yet` }),
    tilePanel(`True colour ${a}`, imageryTemplate(a, "true-colour"), bbox, z, geometry, { empty: `No composite for ${a}` }),
    tilePanel(`True colour ${b}`, imageryTemplate(b, "true-colour"), bbox, z, geometry, { empty: `No composite for ${b}` }),
    tilePanel(`False colour ${a}`, imageryTemplate(a, "false-colour"), bbox, z, geometry, { empty: `No composite for ${a}` }),
    tilePanel(`False colour ${b}`, imageryTemplate(b, "false-colour"), bbox, z, geometry, { empty: `No composite for ${b}` }),
  );
}

/** The change's box, grown to at least ~300 m a side so the chips show its surroundings. */
function chipBox() {
  const [w, s, e, n] = geometryBounds(state.change.geometry);
  const cx = (w + e) / 2;
  const cy = (s + n) / 2;
  const halfLat = Math.max((n - s) * 0.8, 0.0015);
  const halfLon = Math.max((e - w) * 0.8, 0.0015 / Math.cos((cy * Math.PI) / 180));
  return [cx - halfLon, cy - halfLat, cx + halfLon, cy + halfLat];
}

async function loadAcquisitions(id) {
  const strip = $("#strip");
  strip.replaceChildren(el("span", { class: "muted" }, "Loading the acquisitions…"));
  $("#chip-big").replaceChildren();
  state.acquisitions = [];
  state.chip = -1;
  try {
    const answer = await get("/imagery/chips", { bbox: chipBox().map((v) => v.toFixed(6)).join(","), years: state.collection.years.join(",") });
    if (state.change.id !== id) return;
    state.acquisitions = answer.acquisitions;
  } catch (error) {
    if (state.change.id === id) strip.replaceChildren(el("span", { class: "error-text" }, `No acquisitions: ${error.message}`));
    return;
  }
  if (!state.acquisitions.length) {
    strip.replaceChildren(el("span", { class: "muted" }, "No acquisitions over this place."));
    return;
  }
  let lastYear = null;
  strip.replaceChildren(
    ...state.acquisitions.map((a, i) => {
      const first = a.year !== lastYear;
      lastYear = a.year;
      return el(
        "figure",
        { class: first ? "year-start" : "", dataset: { date: a.date }, onclick: () => showChip(i) },
        el("img", { src: a.chip, alt: `acquisition ${a.date}`, loading: "lazy" }),
        el("figcaption", {}, formatDate(a.date), el("br"), `cloud ${Math.round(a.cloud_fraction * 100)} %`),
      );
    }),
  );
  // Start at the last acquisition of the first year: just before the change.
  const before = state.acquisitions.filter((a) => a.year === state.collection.years[0]).length;
  showChip(Math.max(0, before - 1));
}

function showChip(i) {
  if (!state.acquisitions.length) return;
  state.chip = (i + state.acquisitions.length) % state.acquisitions.length;
  const a = state.acquisitions[state.chip];
  [...$("#strip").children].forEach((f, j) => f.classList.toggle("current", j === state.chip));
  const strip = $("#strip");
  const current = strip.children[state.chip];
  strip.scrollLeft = current.offsetLeft - strip.offsetLeft - strip.clientWidth / 2 + current.clientWidth / 2;
  $("#chip-big").replaceChildren(
    el("img", { src: a.chip, alt: `acquisition ${a.date}` }),
    el("figcaption", { id: "chip-date", dataset: { date: a.date } }, `${a.date.replace("T", " ").slice(0, 16)} UTC · cloud ${Math.round(a.cloud_fraction * 100)} % · ${state.chip + 1} of ${state.acquisitions.length}`),
  );
  if (state.series) drawSeries($("#series"), state.series, { marks: [a.date] });
}

async function loadSeries(id) {
  state.series = null;
  $("#series-title").textContent = "NDVI of the polygon (mean of its valid pixels), both years";
  $("#series").replaceChildren(el("span", { class: "muted" }, "Loading the time series…"));
  try {
    const series = await post("/imagery/timeseries", { geometry: state.change.geometry, band: "NDVI", years: state.collection.years });
    if (state.change.id !== id) return;
    state.series = series;
    const mark = state.acquisitions[state.chip];
    drawSeries($("#series"), series, { marks: mark ? [mark.date] : [] });
  } catch (error) {
    if (state.change.id === id) $("#series").replaceChildren(el("span", { class: "error-text" }, `No time series: ${error.message}`));
  }
}

// ---------------------------------------------------------------------------------------------- decisions

function setUpDecisions() {
  if (!canDecide()) return;
  for (const button of $("#decisions").querySelectorAll("button[data-decision]")) {
    button.addEventListener("click", () => startDecision(button.dataset.decision));
  }
  $("#undo").addEventListener("click", () => undo());
  $("#correction").addEventListener("submit", (event) => {
    event.preventDefault();
    saveCorrection();
  });
  $("#c-cancel").addEventListener("click", () => closeForms());
  // Enter saves the correction, also from its class lists (where a browser would not submit the form).
  $("#correction").addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    saveCorrection();
  });
  $("#c-draw").addEventListener("click", () => startDrawing("outline"));
  $("#resolve").addEventListener("submit", (event) => {
    event.preventDefault();
    resolveConflict();
  });
  $("#prev").addEventListener("click", () => openChange(state.index - 1));
  $("#next").addEventListener("click", () => next());
}

function next() {
  if (state.index + 1 < state.queue.length) return openChange(state.index + 1);
  if (state.queue.length < state.matched) return loadPage(state.queue.length).then(() => openChange(state.index + 1));
  showMessage("That was the last change of the queue.", "info");
}

function startDecision(decision) {
  if (!state.change || state.saving) return;
  if (decision === "corrected") {
    const p = state.change.properties;
    $("#c-from").value = p.class_from;
    $("#c-to").value = p.class_to;
    $("#correction").hidden = false;
    $("#c-to").focus();
    return;
  }
  decide({ decision });
}

function closeForms() {
  if ($("#correction")) $("#correction").hidden = true;
  if (state.drawing === "outline") state.drawing = null;
  state.outline = [];
  if ($("#c-draw-state")) $("#c-draw-state").textContent = "";
  drawOutline();
}

function saveCorrection() {
  const body = { decision: "corrected", class_from: Number($("#c-from").value), class_to: Number($("#c-to").value) };
  if (state.outline.length >= 3) body.geometry = { type: "Polygon", coordinates: [[...state.outline, state.outline[0]]] };
  decide(body);
}

/** Send a decision on the open change; on success the next change opens. */
async function decide(fields, { resolution = false } = {}) {
  if (state.saving || !state.change) return; // one decision at a time
  const change = state.change;
  const previous = myLatest(state.review);
  const entry = {
    collection: state.collection.id,
    change_id: change.id,
    title: `${change.properties.class_from_name} → ${change.properties.class_to_name}`,
    body: { ...fields, version: state.review ? state.review.version : change.properties.version, comment: $("#comment")?.value || "" },
    resolution,
    at: new Date().toISOString(),
  };
  const ok = await send(entry);
  if (!ok) return;
  if (!resolution) state.undo.push({ collection: entry.collection, change_id: change.id, previous });
  closeForms();
  refreshProgress();
  if (resolution) refreshConflicts();
  if (state.change.id === change.id) next();
}

/** POST a decision; true when the service stored it. Failures without an answer are kept as unsaved. */
async function send(entry) {
  const path = `/changes/collections/${entry.collection}/items/${entry.change_id}/${entry.resolution ? "resolution" : "reviews"}`;
  state.saving = true;
  $("#save-state").textContent = "Saving…";
  try {
    const review = await post(path, entry.body);
    $("#save-state").textContent = `Saved: ${entry.body.decision} on ${entry.title}.`;
    dropUnsaved(entry);
    if (state.change && state.change.id === entry.change_id) showReview(review);
    else updateQueueItem(review);
    return true;
  } catch (error) {
    $("#save-state").textContent = "";
    if (error.status === 409 && error.body && error.body.current) {
      // Someone decided first: show what is there now; the operator decides again.
      dropUnsaved(entry);
      if (state.change && state.change.id === entry.change_id) showReview(error.body.current);
      showMessage(`Not saved: ${error.message}`, "warning");
      return false;
    }
    if (error.status === 409 || error.status === 422 || error.status === 404) {
      dropUnsaved(entry);
      showMessage(`Not saved: ${error.message}`);
      return false;
    }
    // No answer, a server error, or the session ended: keep it to retry.
    keepUnsaved(entry, error);
    showMessage(`Your decision on ${entry.title} was not saved (${error.message}). It is listed as unsaved: retry when the service is back.`);
    return false;
  } finally {
    state.saving = false;
  }
}

function updateQueueItem(review) {
  const item = state.queue.find((f) => f.id === review.change_id);
  if (item) {
    item.properties.status = review.status;
    item.properties.version = review.version;
    renderQueue();
  }
}

function myLatest(review) {
  if (!review) return null;
  const mine = review.history.filter((d) => d.kind === "review" && d.reviewer === state.me.username);
  return mine.length ? mine[mine.length - 1] : null;
}

/** Undo the last decision of this session: restore my earlier decision on it, or mark it "not sure". */
async function undo() {
  const last = state.undo.pop();
  if (!last) {
    showMessage("Nothing to undo in this session.", "info");
    return;
  }
  const index = state.queue.findIndex((f) => f.id === last.change_id);
  if (index >= 0) await openChange(index);
  const p = last.previous;
  const fields = p ? { decision: p.decision, class_from: p.class_from ?? undefined, class_to: p.class_to ?? undefined, geometry: p.geometry ?? undefined } : { decision: "unsure" };
  const entry = {
    collection: last.collection,
    change_id: last.change_id,
    title: "undo",
    body: { ...fields, version: state.review ? state.review.version : 0, comment: "undo" },
    resolution: false,
  };
  if (await send(entry)) {
    showMessage(p ? `Undone: your earlier decision (${p.decision}) is back.` : "Undone: the change is marked \"not sure\" (your decision no longer counts).", "info");
    refreshProgress();
  }
}

async function resolveConflict() {
  const decision = $("#r-decision").value;
  const fields = { decision };
  if (decision === "corrected") Object.assign(fields, { class_from: Number($("#r-from").value), class_to: Number($("#r-to").value) });
  await decide(fields, { resolution: true });
}

// Unsaved decisions live in localStorage, so a reload or a new login does not lose them.
function readUnsaved() {
  try {
    return JSON.parse(localStorage.getItem(UNSAVED_KEY) || "[]");
  } catch {
    return [];
  }
}

function keepUnsaved(entry, error) {
  const list = readUnsaved().filter((e) => !(e.change_id === entry.change_id && e.collection === entry.collection));
  list.push({ ...entry, error: error.message });
  localStorage.setItem(UNSAVED_KEY, JSON.stringify(list));
  showUnsaved();
}

function dropUnsaved(entry) {
  const list = readUnsaved().filter((e) => !(e.change_id === entry.change_id && e.collection === entry.collection));
  localStorage.setItem(UNSAVED_KEY, JSON.stringify(list));
  showUnsaved();
}

function showUnsaved() {
  const list = readUnsaved();
  const box = $("#unsaved");
  box.hidden = !list.length;
  box.replaceChildren(
    el("strong", {}, `Unsaved decisions (${list.length})`),
    el(
      "ul",
      {},
      ...list.map((entry) =>
        el(
          "li",
          { dataset: { changeId: entry.change_id } },
          `${entry.body.decision} on ${entry.title} (${entry.change_id}): ${entry.error} `,
          el("button", { class: "retry", onclick: () => send(entry).then((ok) => ok && refreshProgress()) }, "Retry"),
        ),
      ),
    ),
  );
}

// ------------------------------------------------------------------------------------ drawing on the map

function startDrawing(kind) {
  state.drawing = kind;
  state.outline = [];
  state.boxCorner = null;
  if (kind === "box") showMessage("Click two opposite corners of the box on the map (Esc cancels).", "info");
  else $("#c-draw-state").textContent = "Click the new outline's corners on the map; Save when done (Esc cancels).";
  drawOutline();
}

function mapClick(lngLat) {
  if (state.drawing === "outline") {
    state.outline.push([+lngLat.lng.toFixed(7), +lngLat.lat.toFixed(7)]);
    $("#c-draw-state").textContent = `${state.outline.length} corners`;
    drawOutline();
  } else if (state.drawing === "box") {
    if (!state.boxCorner) {
      state.boxCorner = [lngLat.lng, lngLat.lat];
      return;
    }
    const [x0, y0] = state.boxCorner;
    state.box = [Math.min(x0, lngLat.lng), Math.min(y0, lngLat.lat), Math.max(x0, lngLat.lng), Math.max(y0, lngLat.lat)];
    state.drawing = null;
    $("#f-clear-box").hidden = false;
    drawBox();
    reloadQueue();
  }
}

function drawOutline() {
  const source = state.map && state.map.getSource("drawn");
  if (!source) return;
  const ring = state.outline.length >= 3 ? [...state.outline, state.outline[0]] : state.outline;
  const features = [];
  if (ring.length >= 2) features.push({ type: "Feature", geometry: { type: "LineString", coordinates: ring }, properties: {} });
  for (const p of state.outline) features.push({ type: "Feature", geometry: { type: "Point", coordinates: p }, properties: {} });
  source.setData({ type: "FeatureCollection", features });
}

function drawBox() {
  const source = state.map && state.map.getSource("box");
  if (!source) return;
  const b = state.box;
  source.setData(
    b ? { type: "Feature", geometry: { type: "Polygon", coordinates: [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]] }, properties: {} } : { type: "FeatureCollection", features: [] },
  );
}

// --------------------------------------------------------------------------------------------- keyboard

function setUpKeys() {
  $("#shortcuts-close").addEventListener("click", () => ($("#shortcuts").hidden = true));
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName);
    if (event.key === "Escape") {
      $("#shortcuts").hidden = true;
      state.drawing = null;
      closeForms();
      return;
    }
    if (typing) return;
    const key = event.key.toLowerCase();
    const decisions = { c: "confirmed", r: "rejected", x: "corrected", u: "unsure" };
    if (event.key === "?") $("#shortcuts").hidden = !$("#shortcuts").hidden;
    else if (key in decisions && state.change) {
      if (canDecide()) startDecision(decisions[key]);
      else showMessage("Viewers cannot decide: ask an admin for the operator role.", "info");
    } else if (key === "n") next();
    else if (key === "p") openChange(state.index - 1);
    else if (key === "z" && canDecide()) undo();
    else if (event.key === "ArrowRight") showChip(state.chip + 1);
    else if (event.key === "ArrowLeft") showChip(state.chip - 1);
    else return;
    event.preventDefault();
  });
}

main().catch((error) => {
  if (!(error instanceof ApiError)) showMessage(`Something went wrong: ${error.message}`);
});

