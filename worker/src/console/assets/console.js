// The dead-letter console's page: the overview (polled every 5 s) and the
// dead letters (filtered, grouped, paged, acted on). Everything shown is
// set as text, never as HTML. Action buttons exist only for the admin;
// the server refuses actions from anyone else anyway.
"use strict";

const state = { session: null, page: 1, perPage: 50, total: 0, filter: {} };
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = options.headers || {};
  if (options.method === "POST") {
    headers["content-type"] = "application/json";
    headers["x-csrf-token"] = state.session.csrf;
  }
  const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
  if (response.status === 401) { window.location.assign("/login"); throw new Error("log in first"); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function say(text) { const m = $("message"); m.textContent = text; m.hidden = !text; }

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function show(tab) {
  for (const name of ["overview", "letters"]) {
    $(name).hidden = name !== tab;
    $("tab-" + name).classList.toggle("current", name === tab);
  }
  if (tab === "letters") loadLetters(false);
}

// --- overview ---------------------------------------------------------
function chart(id, values) {
  const svg = $(id);
  svg.replaceChildren();
  const numbers = values.map((v) => (v == null ? 0 : v));
  if (numbers.length < 2) return;
  const top = Math.max(...numbers, 1e-9);
  const points = numbers.map((v, i) => `${(i / (numbers.length - 1)) * 300},${80 - (v / top) * 76}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
}

function latest(values, digits) {
  const last = values.length ? values[values.length - 1] : null;
  return last == null ? "–" : last.toFixed(digits);
}

async function loadOverview() {
  let report;
  try { report = await api("/api/overview"); } catch (error) { return banner("The console cannot be reached: " + error.message); }
  if (report.broker === "unreachable") banner("RabbitMQ is unreachable: " + (report.broker_error || ""));
  else if (report.broker === "blocked") banner("RabbitMQ is blocking publishes (a memory or disk alarm): replays wait.");
  else banner("");
  const body = $("queues").tBodies[0];
  body.replaceChildren();
  for (const queue of report.queues) {
    const row = body.insertRow();
    cell(row, queue.role); cell(row, queue.name); cell(row, queue.messages); cell(row, queue.consumers);
  }
  $("workers").textContent = report.workers_configured
    ? `(${report.workers_read} of ${report.workers_configured} workers read)`
    : "(no worker metrics configured: CONSOLE_WORKER_METRICS)";
  const series = report.series;
  const pick = (name) => series.map((point) => point[name]);
  chart("chart-stored", pick("stored_per_s")); $("now-stored").textContent = latest(pick("stored_per_s"), 1);
  chart("chart-retried", pick("retried_per_s")); $("now-retried").textContent = latest(pick("retried_per_s"), 1);
  chart("chart-dead", pick("dead_lettered_per_s")); $("now-dead").textContent = latest(pick("dead_lettered_per_s"), 1);
  chart("chart-p99", pick("p99_s")); $("now-p99").textContent = latest(pick("p99_s"), 3);
}

function banner(text) { const b = $("banner"); b.textContent = text; b.hidden = !text; }

// --- dead letters -----------------------------------------------------
function readFilter() {
  const filter = {};
  for (const name of ["reason", "kind", "application", "error"]) {
    const value = $("filter-" + name).value.trim();
    if (value) filter[name] = value;
  }
  const from = $("filter-from").value, to = $("filter-to").value;
  if (from) filter.from_ms = new Date(from).getTime();
  if (to) filter.to_ms = new Date(to).getTime();
  return filter;
}

// Each load is numbered; an answer that arrives after a later load began
// (a slow unfiltered read overtaken by a filtered one) is dropped, so the
// list always shows the latest filter and page.
let lettersLoad = 0;

async function loadLetters(fresh) {
  const load = ++lettersLoad;
  const query = new URLSearchParams({ ...state.filter, page: state.page, per_page: state.perPage });
  if (fresh) query.set("fresh", "1");
  let page;
  try { page = await api("/api/letters?" + query); } catch (error) { if (load === lettersLoad) banner(error.message); return; }
  if (load !== lettersLoad) return;
  state.total = page.total;
  $("summary").textContent = `${page.total} matching of ${page.letters} letters` +
    (page.unreadable ? `, ${page.unreadable} unreadable` : "") +
    ` (read ${new Date(page.taken_at_ms).toLocaleTimeString()}, in ${page.read_ms} ms)`;
  $("summary").dataset.total = page.total;
  groups("by-reason", page.by_reason, "reason");
  groups("by-error", page.by_error, "error");
  const body = $("letter-list").tBodies[0];
  body.replaceChildren();
  const admin = state.session.role === "admin";
  for (const letter of page.rows) {
    const row = body.insertRow();
    row.className = "letter";
    row.dataset.id = letter.id;
    const select = cell(row, "", "select");
    if (admin) {
      const box = document.createElement("input");
      box.type = "checkbox"; box.className = "pick"; box.value = letter.id;
      box.addEventListener("click", (event) => event.stopPropagation());
      select.appendChild(box);
    }
    cell(row, letter.dead_at_ms ? new Date(letter.dead_at_ms).toLocaleString() : "");
    cell(row, letter.reason, "reason");
    cell(row, letter.attempts);
    cell(row, letter.last_error, "error-text");
    cell(row, letter.kind);
    cell(row, letter.application);
    cell(row, letter.chat);
    cell(row, letter.revision != null ? `${letter.message} (rev. ${letter.revision})` : letter.message);
    const last = cell(row, "");
    if (admin) {
      const replay = document.createElement("button");
      replay.type = "button"; replay.className = "action replay-one"; replay.textContent = "Replay";
      replay.addEventListener("click", (event) => { event.stopPropagation(); act("replay", { ids: [letter.id] }, 1); });
      last.appendChild(replay);
    }
    row.addEventListener("click", () => detail(letter.id));
  }
  const pages = Math.max(1, Math.ceil(page.total / page.per_page));
  $("page").textContent = `page ${page.page} of ${pages}`;
  $("previous").disabled = page.page <= 1;
  $("next").disabled = page.page >= pages;
  $("select-all").checked = false;
}

function groups(id, list, field) {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  for (const group of list) {
    const row = body.insertRow();
    cell(row, group.key || "(none)"); cell(row, group.count);
    row.addEventListener("click", () => {
      $("filter-" + field).value = group.key;
      applyFilter();
    });
  }
}

function applyFilter() { state.filter = readFilter(); state.page = 1; loadLetters(false); }

async function detail(id) {
  let letter;
  try { letter = await api("/api/letters/" + encodeURIComponent(id)); } catch (error) { return say(error.message); }
  $("detail-id").textContent = id;
  $("detail-trace").textContent = letter.trace_id || "none";
  $("detail-payload").textContent = JSON.stringify(letter.payload, null, 2);
  $("detail-headers").textContent = JSON.stringify(letter.headers, null, 2);
  $("detail").hidden = false;
}

function picked() { return [...document.querySelectorAll("input.pick:checked")].map((box) => box.value); }

async function act(action, selection, count) {
  const what = action === "replay" ? "Replay" : "Discard";
  const ask = action === "discard" || selection.filter;
  if (ask && !window.confirm(`${what} ${count} dead letter${count === 1 ? "" : "s"}?` +
      (action === "discard" ? " Discarded letters are kept in the discarded queue for the retention, then gone." : ""))) return;
  say(`${what}ing ${count}…`);
  try {
    const done = await api("/api/" + action, { method: "POST", body: JSON.stringify(selection) });
    say(`${what}ed ${done.moved} of ${done.matched} matching (${done.found} letters were in the queue).`);
  } catch (error) { say(`${what} failed: ${error.message}`); }
  loadLetters(true);
}

async function start() {
  try { state.session = await api("/api/session"); } catch (error) { return; }
  $("who").textContent = `${state.session.user} (${state.session.role === "admin" ? "admin" : "read-only"})`;
  if (state.session.role === "admin") {
    $("actions").hidden = false;
    $("replay-selected").addEventListener("click", () => { const ids = picked(); if (ids.length) act("replay", { ids }, ids.length); });
    $("discard-selected").addEventListener("click", () => { const ids = picked(); if (ids.length) act("discard", { ids }, ids.length); });
    $("replay-matching").addEventListener("click", () => act("replay", { filter: state.filter }, state.total));
    $("discard-matching").addEventListener("click", () => act("discard", { filter: state.filter }, state.total));
  } else {
    $("actions").remove();
    $("select-all").remove();
  }
  $("tab-overview").addEventListener("click", () => show("overview"));
  $("tab-letters").addEventListener("click", () => show("letters"));
  $("logout").addEventListener("click", async () => { await api("/logout", { method: "POST", body: "{}" }).catch(() => {}); window.location.assign("/login"); });
  $("filter").addEventListener("submit", (event) => { event.preventDefault(); applyFilter(); });
  $("filter-clear").addEventListener("click", () => { $("filter").reset(); applyFilter(); });
  $("refresh").addEventListener("click", () => loadLetters(true));
  $("previous").addEventListener("click", () => { state.page -= 1; loadLetters(false); });
  $("next").addEventListener("click", () => { state.page += 1; loadLetters(false); });
  $("select-all").addEventListener("change", (event) => {
    for (const box of document.querySelectorAll("input.pick")) box.checked = event.target.checked;
  });
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  show(window.location.hash === "#letters" ? "letters" : "overview");
  loadOverview();
  setInterval(loadOverview, 5000);
}

document.addEventListener("DOMContentLoaded", start);
