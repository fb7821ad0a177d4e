// The imgsearch search page: plain JS, no build step. Everything the API returns is shown with
// textContent (never innerHTML), so a product id like <img onerror=...> stays text.
"use strict";

const KEY_STORAGE = "imgsearch.key";
const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  query: null, // {text} | {image: File} | {similar_to: id}
  offset: 0,
  thumbnails: [], // blob: URLs of the page shown, revoked when it changes
  searches: 0, // searches started: only the latest one's answer is shown
  keys: 0, // keys entered: only the latest one's check is shown
  brand: null, // a brand picked in the facets
  read: null, // after a chip is removed: the query's other filters, sent as filters (parse off)
};
const BEST_RELEVANCE = 2 / 61; // Reciprocal Rank Fusion: first on both sides (k = 60)

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Authorization", `Bearer ${state.key}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) { // the browser's own words ("Failed to fetch") don't say what to do
    throw new Error(`The imgsearch server at ${location.origin} can't be reached (${error.message}): is \`imgsearch serve\` running?`);
  }
  if (!response.ok) {
    let problem = {};
    try { problem = await response.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, problem);
  }
  return response;
}

function showError(error) {
  const box = $("error");
  if (!error) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false;
  box.textContent = error instanceof ApiError && error.status === 401
    ? `${error.message} — enter a key from \`imgsearch tenant create-key\`.`
    : String(error.message || error);
}

// -- key ---------------------------------------------------------------------------------------

async function useKey(key) {
  const turn = ++state.keys;
  state.key = key;
  showError(null); // an earlier key's error goes with it
  $("key").value = "";
  $("forget").hidden = !key;
  if (!key) {
    sessionStorage.removeItem(KEY_STORAGE);
    $("key").placeholder = "isk_…";
    $("key-state").textContent = "Kept in this tab only.";
    return;
  }
  $("key-state").textContent = "Checking the key…";
  const outcome = await loadStatus();
  if (turn !== state.keys) return; // another key was entered meanwhile
  if (outcome === "refused") {
    state.key = "";
    sessionStorage.removeItem(KEY_STORAGE);
    $("key").placeholder = "isk_…";
    $("forget").hidden = true;
    $("key-state").textContent = "Key not accepted.";
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $("key").placeholder = "key in use (hidden)";
  $("key-state").textContent = outcome === "ok" ? "Key in use for this tab." : "Key kept; the server didn't answer.";
  if (outcome === "ok") loadCategories();
}

// -- filters -----------------------------------------------------------------------------------

function parseAttributes(text) {
  text = text.trim();
  if (!text) return null;
  if (text.startsWith("{")) return JSON.parse(text);
  const attributes = {};
  for (const part of text.split(",")) {
    if (!part.trim()) continue;
    const at = part.indexOf("=");
    if (at < 1) throw new Error(`attributes: write name=value pairs separated by commas, got "${part.trim()}"`);
    attributes[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  return attributes;
}

function options() {
  const params = { k: Number($("k").value), offset: state.offset, group_by_product: true, facets: true };
  if (state.brand) params.brand = state.brand;
  const category = $("category").value;
  if (category) params.category = category;
  if ($("price-min").value !== "") params.price_min = Number($("price-min").value);
  if ($("price-max").value !== "") params.price_max = Number($("price-max").value);
  const attributes = parseAttributes($("attributes").value);
  if (attributes) params.attributes = attributes;
  return params;
}

async function loadCategories() {
  try {
    const { categories } = await (await api("/v1/categories")).json();
    const select = $("category");
    const chosen = select.value;
    select.replaceChildren(new Option("any", ""));
    for (const { name, products } of categories) {
      const option = new Option(`${name} (${products})`, name);
      select.append(option);
    }
    select.value = chosen;
  } catch (error) { showError(error); }
}

// -- search ------------------------------------------------------------------------------------

function describe(query) {
  if (query.text !== undefined) return `“${query.text}”`;
  if (query.image !== undefined) {
    const region = query.box ? ` (region ${query.box.join(", ")})` : "";
    return `the image ${query.image.name || "dropped"}${region}`;
  }
  return `more like image ${query.similar_to}`;
}

async function run() {
  if (!state.query) return;
  if (!state.key) { showError(new Error("Enter an API key first.")); return; }
  showError(null);
  let params;
  try { params = options(); } catch (error) { showError(error); return; }
  const turn = ++state.searches;
  const query = state.query;
  $("query-state").textContent = `Searching ${describe(query)}…`;
  try {
    let response;
    if (state.query.image !== undefined) {
      const body = new FormData();
      body.append("file", state.query.image);
      body.append("params", JSON.stringify(query_box(params)));
      response = await api("/v1/search/image", { method: "POST", body });
    } else {
      const read = state.query.text !== undefined && state.read ? { ...state.read, parse: false } : {};
      response = await api("/v1/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ...state.query, ...read, ...params }),
      });
    }
    const result = await response.json();
    if (turn !== state.searches) return; // a later search (a click on Next, say) answers instead
    render(result, params);
  } catch (error) {
    if (turn !== state.searches) return;
    clearResults(); // no results of an earlier query under this one's title
    $("query-state").textContent = `The search for ${describe(query)} failed.`;
    showError(error);
  }
}

function clearResults() {
  for (const url of state.thumbnails) URL.revokeObjectURL(url);
  state.thumbnails = [];
  $("results").replaceChildren();
  $("looks").replaceChildren();
  $("looks").hidden = true;
  clearLookBoxes();
  $("pager").hidden = true;
  $("understood").hidden = true;
  $("facets-panel").hidden = true;
}

function search(query) {
  if (query.image === undefined) $("region").hidden = true;
  state.query = query;
  state.offset = 0;
  state.read = null;
  run();
}

function formatPrice(price, currency) {
  if (price === null || price === undefined) return "–";
  if (!currency) return Number(price).toFixed(2);
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(Number(price));
  } catch (_) { // a code the browser doesn't know
    return `${Number(price).toFixed(2)} ${currency}`;
  }
}

// how well a hit matches, 0 to 100: a fused rank's share of the best possible one, else the
// model's probability, else the cosine similarity (never below 0)
function percent(hit) {
  let value;
  if (hit.relevance !== undefined && hit.relevance !== null) value = hit.relevance / BEST_RELEVANCE;
  else if (hit.probability !== undefined && hit.probability !== null) value = hit.probability;
  else value = Math.max(0, hit.score ?? 0);
  return Math.round(100 * Math.min(1, value));
}

function foundBy(matched) {
  const sides = Object.entries(matched || {}).map(([side, rank]) => `${side === "semantic" ? "image" : "words"} #${rank}`);
  return sides.length ? sides.join(", ") : "–";
}

function chip(label, onRemove) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "chip";
  button.textContent = `${label} ×`;
  button.title = `Remove ${label}`;
  button.addEventListener("click", onRemove);
  return button;
}

// the filters read from the query, each a chip whose removal searches again without it
function renderUnderstood(understood) {
  const box = $("understood");
  box.replaceChildren();
  const read = understood ? { ...understood } : (state.read || null);
  if (!read) { box.hidden = true; return; }
  const parts = [];
  if (read.category) parts.push(["category", `category: ${read.category}`]);
  if (read.brand) parts.push(["brand", `brand: ${read.brand}`]);
  for (const [key, value] of Object.entries(read.attributes || {})) parts.push([`attributes.${key}`, `${key}: ${value}`]);
  if (read.price_min !== undefined && read.price_min !== null) parts.push(["price_min", `from ${read.price_min}`]);
  if (read.price_max !== undefined && read.price_max !== null) parts.push(["price_max", `under ${read.price_max}`]);
  if (!parts.length) { box.hidden = true; return; }
  if (read.fallback) {
    const note = document.createElement("span");
    note.className = "muted";
    note.textContent = "Nothing matched these, so the results are for the words as typed:";
    box.append(note);
  } else {
    const note = document.createElement("span");
    note.className = "muted";
    note.textContent = "Understood:";
    box.append(note);
  }
  for (const [name, label] of parts) {
    box.append(chip(label, () => {
      const rest = { ...read }; // the query as typed, with the other filters it said, given as filters
      delete rest.fallback;
      delete rest.text;
      if (name.startsWith("attributes.")) {
        rest.attributes = { ...rest.attributes };
        delete rest.attributes[name.slice("attributes.".length)];
        if (!Object.keys(rest.attributes).length) delete rest.attributes;
      } else {
        delete rest[name];
      }
      state.read = rest;
      state.offset = 0;
      run();
    }));
  }
  box.hidden = false;
}

function facetList(title, entries, pick) {
  if (!entries.length) return null;
  const section = document.createElement("section");
  const heading = document.createElement("h3");
  heading.textContent = title;
  const list = document.createElement("ul");
  for (const [label, count, value] of entries) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    const name = document.createElement("span");
    name.textContent = label;
    const number = document.createElement("span");
    number.className = "count";
    number.textContent = String(count);
    button.append(name, number);
    button.addEventListener("click", () => pick(value));
    li.append(button);
    list.append(li);
  }
  section.append(heading, list);
  return section;
}

function renderFacets(result) {
  const panel = $("facets-panel");
  const facets = result.facets;
  $("total").textContent = result.total === null || result.total === undefined ? "" : `${result.total} products`;
  const box = $("facets");
  box.replaceChildren();
  if (!facets) { panel.hidden = true; return; }
  const again = () => { state.offset = 0; run(); };
  const sections = [
    facetList("Category", Object.entries(facets.category).map(([v, n]) => [v, n, v]), (v) => {
      const select = $("category");
      if (![...select.options].some((o) => o.value === v)) select.append(new Option(v, v));
      select.value = v;
      again();
    }),
    facetList("Brand", Object.entries(facets.brand).map(([v, n]) => [v, n, v]), (v) => { state.brand = v; again(); }),
    ...Object.entries(facets.attributes).map(([key, values]) =>
      facetList(key, Object.entries(values).map(([v, n]) => [v, n, v]), (v) => {
        const given = parseAttributes($("attributes").value) || {};
        given[key] = v;
        $("attributes").value = Object.entries(given).map(([k, x]) => `${k}=${x}`).join(", ");
        again();
      })),
    facetList("Price", facets.price.map((b) => [`${b.from} – ${b.to}`, b.count, b]), (b) => {
      $("price-min").value = String(b.from);
      $("price-max").value = String(b.to);
      again();
    }),
  ].filter(Boolean);
  if (state.brand) {
    box.append(chip(`brand: ${state.brand}`, () => { state.brand = null; again(); }));
  }
  box.append(...sections);
  panel.hidden = false;
}

function render(result, params) {
  const hits = result.hits;
  clearResults();
  const grid = $("results");
  for (const hit of hits) grid.append(hitCard(hit));
  const first = params.offset + 1;
  const of = result.total === null || result.total === undefined ? "" : ` of ${result.total}`;
  $("query-state").textContent = hits.length
    ? `Results ${first}–${params.offset + hits.length}${of} for ${describe(state.query)}`
    : `No results for ${describe(state.query)}`;
  renderUnderstood(result.understood);
  renderFacets(result);
  $("pager").hidden = params.offset === 0 && hits.length < params.k;
  $("prev").disabled = params.offset === 0;
  $("next").disabled = hits.length < params.k;
  $("page").textContent = `page ${Math.floor(params.offset / params.k) + 1}`;
}

// one hit's card; the region of its image that matched, when one did, drawn on its picture
function hitCard(hit) {
  const template = $("hit-template");
  const card = template.content.firstElementChild.cloneNode(true);
  card.dataset.imageId = String(hit.image_id);
  card.querySelector(".title").textContent = hit.title || hit.product_id;
  card.querySelector(".brand").textContent = hit.brand || "";
  card.querySelector(".product").textContent = hit.product_id;
  card.querySelector(".tenant").textContent = hit.tenant;
  if (!state.admin) {
    card.querySelector(".tenant").remove();
    card.querySelector(".tenant-label").remove();
  }
  card.querySelector(".category").textContent = hit.category ?? "–";
  card.querySelector(".price").textContent = formatPrice(hit.price, hit.currency);
  const match = percent(hit);
  card.querySelector(".score").textContent = `${match}%`;
  card.querySelector(".bar").style.width = `${match}%`;
  card.querySelector(".relevance").setAttribute("aria-valuenow", String(match));
  card.querySelector(".found-by").textContent = foundBy(hit.matched_by);
  const probability = card.querySelector(".probability");
  if (hit.probability === undefined || hit.probability === null) {
    probability.remove();
    card.querySelector(".probability-label").remove();
  } else {
    probability.textContent = hit.probability.toFixed(3);
  }
  const img = card.querySelector("img");
  img.alt = `image ${hit.image_id} of product ${hit.product_id}`;
  loadThumbnail(hit.image_id, img);
  if (Array.isArray(hit.region)) {
    card.dataset.region = hit.region.join(",");
    markRegion(hit, img, card.querySelector(".matched"));
  }
  card.querySelector(".more").addEventListener("click", () => search({ similar_to: hit.image_id }));
  return card;
}

// the matched region as a share of the image: its stored size, upright as its thumbnail shows it
async function markRegion(hit, img, mark) {
  try {
    const record = await (await api(`/v1/images/${hit.image_id}`)).json();
    if (!img.complete || !img.naturalWidth) await new Promise((done) => img.addEventListener("load", done, { once: true }));
    let [width, height] = [record.width, record.height];
    if (!width || !height) return;
    if ((width > height) !== (img.naturalWidth > img.naturalHeight) && width !== height) [width, height] = [height, width];
    // the picture fills the square card's longer side, centred (object-fit: contain)
    const side = Math.max(img.naturalWidth, img.naturalHeight);
    const [fw, fh] = [img.naturalWidth / side, img.naturalHeight / side];
    const [x0, y0, x1, y1] = hit.region;
    mark.style.left = `${100 * ((1 - fw) / 2 + (fw * x0) / width)}%`;
    mark.style.top = `${100 * ((1 - fh) / 2 + (fh * y0) / height)}%`;
    mark.style.width = `${(100 * fw * (x1 - x0)) / width}%`;
    mark.style.height = `${(100 * fh * (y1 - y0)) / height}%`;
    mark.title = `matched by the region ${hit.region.join(", ")}`;
    mark.hidden = false;
  } catch (error) {
    // no record to scale by: the card shows the whole image, as for a whole-image match
  }
}

// -- shop the look -----------------------------------------------------------------------------

async function shopTheLook() {
  if (!state.query || state.query.image === undefined) return;
  if (!state.key) { showError(new Error("Enter an API key first.")); return; }
  showError(null);
  let params;
  try { params = options(); } catch (error) { showError(error); return; }
  const turn = ++state.searches;
  const photo = state.query.image;
  const body = new FormData();
  body.append("file", photo);
  const fields = { k: Math.min(params.k, 12) };
  for (const name of ["category", "price_min", "price_max"]) if (params[name] !== undefined) fields[name] = params[name];
  body.append("params", JSON.stringify(fields));
  $("query-state").textContent = `Finding the objects of ${describe({ image: photo })}…`;
  try {
    const answer = await (await api("/v1/search/look", { method: "POST", body })).json();
    if (turn !== state.searches) return;
    renderLooks(answer.objects, photo);
  } catch (error) {
    if (turn !== state.searches) return;
    clearResults();
    $("query-state").textContent = `Shop the look of ${describe({ image: photo })} failed.`;
    showError(error);
  }
}

function clearLookBoxes() {
  for (const old of document.querySelectorAll(".look-box")) old.remove();
}

function renderLooks(objects, photo) {
  clearResults();
  const image = $("query-image");
  const looks = $("looks");
  objects.forEach((object, i) => {
    const name = object.label ? `${object.label}${object.score === null ? "" : ` ${Math.round(object.score * 100)}%`}` : `part ${i + 1}`;
    const mark = document.createElement("button");
    mark.type = "button";
    mark.className = "look-box";
    const [x0, y0, x1, y1] = object.box;
    mark.style.left = `${(100 * x0) / image.naturalWidth}%`;
    mark.style.top = `${(100 * y0) / image.naturalHeight}%`;
    mark.style.width = `${(100 * (x1 - x0)) / image.naturalWidth}%`;
    mark.style.height = `${(100 * (y1 - y0)) / image.naturalHeight}%`;
    mark.setAttribute("aria-label", `search ${name} again (${object.box.join(", ")})`);
    const tag = document.createElement("span");
    tag.textContent = String(i + 1);
    mark.append(tag);
    mark.addEventListener("pointerdown", (event) => event.stopPropagation()); // not a drawn region
    mark.addEventListener("click", (event) => {
      event.stopPropagation();
      clearLookBoxes();
      showRegion(object.box);
      search({ image: photo, box: object.box });
    });
    $("frame").append(mark);
    const title = document.createElement("h3");
    title.textContent = `${i + 1}. ${name}: ${object.hits.length} results`;
    const grid = document.createElement("div");
    grid.className = "grid look";
    grid.dataset.box = object.box.join(",");
    for (const hit of object.hits) grid.append(hitCard(hit));
    looks.append(title, grid);
  });
  looks.hidden = false;
  $("query-state").textContent = objects.length
    ? `${objects.length} objects in ${describe({ image: photo })}: click one to search it again`
    : `No objects found in ${describe({ image: photo })}`;
}

async function loadThumbnail(imageId, img) {
  try {
    const blob = await (await api(`/v1/images/${imageId}/thumbnail?size=256`)).blob();
    const url = URL.createObjectURL(blob);
    state.thumbnails.push(url);
    img.src = url;
  } catch (error) {
    // an image uploaded by URL has no stored bytes: show it from its own address
    const uri = error instanceof ApiError ? error.problem.uri : null;
    if (typeof uri === "string" && /^https?:\/\//i.test(uri)) {
      img.src = uri;
    } else {
      const note = document.createElement("span");
      note.className = "muted";
      note.textContent = error instanceof ApiError && error.status === 404 ? "no picture stored" : "no preview";
      img.replaceWith(note);
    }
  }
}

// -- status ------------------------------------------------------------------------------------

// the catalog's counts and failures: "ok", "refused" (the key) or "error"
async function loadStatus() {
  try {
    const status = await (await api("/v1/status")).json();
    state.admin = "queue_depth" in status; // admin keys only: their searches name each hit's shop
    const counts = $("counts");
    counts.replaceChildren();
    for (const [name, count] of Object.entries(status.counts)) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = String(count);
      dd.dataset.state = name;
      counts.append(dt, dd);
    }
    const failed = $("failed");
    failed.replaceChildren();
    if (!status.failed.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "none";
      failed.append(li);
    }
    for (const item of status.failed) {
      const li = document.createElement("li");
      li.dataset.imageId = String(item.image_id);
      const img = document.createElement("img");
      img.className = "failed-thumb";
      img.alt = `image ${item.image_id}`;
      const text = document.createElement("span");
      const shop = state.admin ? ` of ${item.tenant}` : "";
      text.textContent = `image ${item.image_id} of product ${item.product_id ?? "–"}${shop}: ${item.error}`;
      li.append(img, text);
      loadThumbnail(item.image_id, img);
      failed.append(li);
    }
    return "ok";
  } catch (error) {
    showError(error);
    return error instanceof ApiError && (error.status === 401 || error.status === 403) ? "refused" : "error";
  }
}

// -- wiring ------------------------------------------------------------------------------------

function query_box(params) {
  return state.query.box ? { ...params, box: state.query.box } : params;
}

function takeImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { showError(new Error(`${file.name} is not an image`)); return; }
  const preview = $("query-image");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  $("region").hidden = false;
  showRegion(null);
  search({ image: file });
}

// a region of the query image, drawn with the mouse or a finger: its box in the image's own pixels
function showRegion(box) {
  $("box").hidden = !box;
  $("whole").hidden = !box;
  $("region-state").textContent = box
    ? `Searching with the region ${box.join(", ")} of the image.`
    : "Drag on the image to search with a part of it.";
}

function wireRegion() {
  const image = $("query-image");
  const frame = $("frame");
  const mark = $("box");
  let start = null;
  const point = (event) => {
    const rect = image.getBoundingClientRect();
    return [
      Math.min(Math.max(event.clientX - rect.left, 0), rect.width),
      Math.min(Math.max(event.clientY - rect.top, 0), rect.height),
    ];
  };
  const draw = (a, b) => {
    mark.style.left = `${Math.min(a[0], b[0])}px`;
    mark.style.top = `${Math.min(a[1], b[1])}px`;
    mark.style.width = `${Math.abs(a[0] - b[0])}px`;
    mark.style.height = `${Math.abs(a[1] - b[1])}px`;
    mark.hidden = false;
  };
  frame.addEventListener("pointerdown", (event) => {
    if (!state.query || state.query.image === undefined) return;
    event.preventDefault();
    frame.setPointerCapture(event.pointerId);
    start = point(event);
  });
  frame.addEventListener("pointermove", (event) => { if (start) draw(start, point(event)); });
  frame.addEventListener("pointerup", (event) => {
    if (!start) return;
    const end = point(event);
    const from = start;
    start = null;
    if (Math.abs(end[0] - from[0]) < 4 || Math.abs(end[1] - from[1]) < 4) { showRegion(state.query.box || null); return; }
    const sx = image.naturalWidth / image.clientWidth;
    const sy = image.naturalHeight / image.clientHeight;
    const box = [
      Math.round(Math.min(from[0], end[0]) * sx), Math.round(Math.min(from[1], end[1]) * sy),
      Math.round(Math.max(from[0], end[0]) * sx), Math.round(Math.max(from[1], end[1]) * sy),
    ];
    showRegion(box);
    search({ image: state.query.image, box });
  });
  $("look").addEventListener("click", shopTheLook);
  $("whole").addEventListener("click", () => {
    showRegion(null);
    search({ image: state.query.image });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (key) useKey(key);
  });
  $("forget").addEventListener("click", () => useKey(""));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("q").value.trim();
    if (text) search({ text });
  });
  $("file").addEventListener("change", (event) => takeImage(event.target.files[0]));
  wireRegion();
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    takeImage(event.dataTransfer.files[0]);
  });
  for (const id of ["category", "price-min", "price-max", "attributes", "k"]) {
    $(id).addEventListener("change", () => { state.offset = 0; run(); });
  }
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - Number($("k").value)); run(); });
  $("next").addEventListener("click", () => { state.offset += Number($("k").value); run(); });
  $("refresh").addEventListener("click", loadStatus);
  useKey(state.key);
});
