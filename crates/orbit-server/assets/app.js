// Orbit dashboard: renders each page from the JSON API (/api/v1) and follows the live event
// stream (/api/v1/events, Server-Sent Events) instead of polling. No build step, no framework.
"use strict";

const main = document.getElementById("main");
const PAGE_SIZE = 25;
let page = null; // { onEvent(msg), onLog(line), leave() } of the page on screen
let source = null; // the EventSource of the page on screen
let shown = 0; // counts page changes, so a late update of a page that is gone does nothing

// ---------- helpers ----------

const esc = (v) =>
  String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
// The last 12 hex digits: random, unlike the leading timestamp (see orbit_core::id).
const short = (id) => String(id ?? "").slice(-12);
const badge = (state) => `<span class="badge s-${esc(state)}">${esc(state)}</span>`;
const json = (v) => esc(JSON.stringify(v, null, 2));

// Inputs and outputs over the storage threshold are kept in object storage; the API gives their
// reference, and the page shows the content through GET /api/v1/storage/… (immutable: fetched once).
const objectRef = (v) =>
  v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length === 1 && v.$orbit_object && typeof v.$orbit_object === "object"
    ? v.$orbit_object
    : null;
const objectUrl = (r) => `/api/v1/storage/${encodeURIComponent(r.backend)}/${String(r.key).split("/").map(encodeURIComponent).join("/")}`;
const PREVIEW_CHARS = 20000;
const previews = new Map();
function preview(url) {
  if (!previews.has(url)) {
    const loading = fetch(url).then(async (res) => {
      if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
      const text = await res.text();
      if (text.length > PREVIEW_CHARS) return `${text.slice(0, PREVIEW_CHARS)}\n… (${text.length} characters in all: open the object for the rest)`;
      try {
        return JSON.stringify(JSON.parse(text), null, 2);
      } catch {
        return text;
      }
    });
    loading.catch(() => previews.delete(url));
    previews.set(url, loading);
  }
  return previews.get(url);
}
/** A value as HTML: inline JSON, or a stored object's note and a <pre> that fillObjects() loads. */
function valueHtml(v, id) {
  const r = objectRef(v);
  if (!r) return `<pre id="${id}">${v === null || v === undefined ? "—" : json(v)}</pre>`;
  const url = objectUrl(r);
  return `<p class="muted">Kept in object storage as <code>${esc(r.backend)}/${esc(r.key)}</code> (${esc(r.size)} bytes) · <a href="${esc(url)}" target="_blank" rel="noopener">open</a></p>
    <pre id="${id}" data-object="${esc(url)}">loading…</pre>`;
}
function fillObjects(root) {
  for (const pre of root.querySelectorAll("pre[data-object]")) {
    preview(pre.dataset.object).then(
      (text) => (pre.textContent = text),
      (e) => (pre.textContent = `cannot load the object: ${e.message}`),
    );
  }
}
const when = (t) => (t ? new Date(t).toLocaleString() : "—");
function took(a, b) {
  if (!a) return "—";
  const ms = (b ? new Date(b) : new Date()) - new Date(a);
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} m ${Math.round((ms % 60000) / 1000)} s`;
}
const settled = (state) => ["succeeded", "failed", "cancelled"].includes(state);

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(`/api/v1${path}`, init);
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = data && data.error ? data.error : { code: String(res.status), message: text || res.statusText };
    throw new ApiError(res.status, err.code, err.message);
  }
  return data;
}

function toast(text, bad) {
  const div = document.createElement("div");
  if (bad) div.className = "bad";
  div.textContent = text;
  document.getElementById("toast").append(div);
  setTimeout(() => div.remove(), bad ? 9000 : 4000);
}

// Asks before doing anything destructive; resolves to true when confirmed.
function confirmAction(text, label) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = label;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

// Asks what a re-run from `task` should start with: the run's input and the outputs of the
// tasks before it, as they were, to edit. Resolves to the request's body, or null.
function rerunDialog(task, input, upstream) {
  const dialog = document.getElementById("rerun");
  const show = (v) => JSON.stringify(v ?? null, null, 2);
  const was = { input: show(input), upstream: show(upstream || {}) };
  document.getElementById("rerun-text").textContent = `Run this run again from ${task}: a new run keeps the outputs of the tasks before it and runs ${task} and everything after it.`;
  const inputBox = document.getElementById("rerun-input");
  const upstreamBox = document.getElementById("rerun-upstream");
  const error = document.getElementById("rerun-error");
  inputBox.value = was.input;
  upstreamBox.value = was.upstream;
  document.getElementById("rerun-upstream-box").hidden = !Object.keys(upstream || {}).length;
  error.textContent = "";
  const form = document.getElementById("rerun-form");
  let body = null;
  // Bad JSON keeps the dialog open and says where; nothing is sent.
  const check = (ev) => {
    if (ev.submitter && ev.submitter.value !== "ok") return;
    const parse = (what, box) => {
      try {
        return JSON.parse(box.value);
      } catch (e) {
        throw new Error(`${what}: ${e.message}`);
      }
    };
    try {
      body = { from: task };
      if (inputBox.value.trim() !== was.input) body.input = parse("run input", inputBox);
      if (upstreamBox.value.trim() !== was.upstream) {
        const u = parse("outputs", upstreamBox);
        if (u === null || typeof u !== "object" || Array.isArray(u)) throw new Error("outputs: a JSON object, by task name");
        body.upstream = u;
      }
    } catch (e) {
      ev.preventDefault();
      body = null;
      error.textContent = e.message;
    }
  };
  form.addEventListener("submit", check);
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => {
    form.removeEventListener("submit", check);
    resolve(dialog.returnValue === "ok" ? body : null);
  }, { once: true }));
}

// Runs an action button: asks first, shows the API's error when one comes back.
async function act(button, question, label, call, done) {
  if (!(await confirmAction(question, label))) return;
  button.disabled = true;
  try {
    const result = await call();
    done(result);
  } catch (e) {
    toast(`${label} failed: ${e.message}`, true);
  } finally {
    button.disabled = false;
  }
}

function setTitle(t) {
  document.title = `${t} · Orbit`;
}

function showError(e) {
  if (e instanceof ApiError && e.status === 401) return signIn();
  main.innerHTML = `<div class="error-box">${esc(e.message)}</div>`;
}

function signIn() {
  setTitle("Sign in");
  main.innerHTML = `<h1>Sign in</h1>
    <p class="muted">This server requires its API token (ORBIT_API_TOKEN).</p>
    <form id="signin" class="row"><input id="token" type="password" placeholder="API token" autocomplete="current-password" required>
    <button>Sign in</button></form>`;
  document.getElementById("signin").addEventListener("submit", (ev) => {
    ev.preventDefault();
    document.cookie = `orbit_token=${document.getElementById("token").value}; path=/; SameSite=Strict`;
    route();
  });
}

// Calls `fn` at most once per `ms`, with the latest arguments, so a burst of events costs one
// re-fetch.
function throttle(fn, ms) {
  const mine = shown;
  let timer = null;
  let again = false;
  const run = async () => {
    again = false;
    if (mine !== shown) return;
    try {
      await fn();
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
    }
    timer = setTimeout(() => {
      timer = null;
      if (again) fire();
    }, ms);
  };
  const fire = () => {
    if (timer) again = true;
    else {
      timer = 1;
      run();
    }
  };
  return fire;
}

// ---------- live updates ----------

function follow(query) {
  const live = document.getElementById("live");
  source = new EventSource(`/api/v1/events${query ? `?${query}` : ""}`);
  source.onopen = () => live.classList.add("on");
  source.onerror = () => live.classList.remove("on");
  source.onmessage = (m) => page && page.onEvent && page.onEvent(JSON.parse(m.data));
  source.addEventListener("log", (m) => page && page.onLog && page.onLog(JSON.parse(m.data)));
}

// ---------- graph ----------

// Lays the pipeline's tasks out with dagre and draws them as SVG; returns the node elements by
// task name so states can be recoloured without a new layout.
const timelineLegend = `<div class="legend">${[
  ["queued", "var(--wait)"], ["attempt", "var(--run)"], ["succeeded", "var(--ok)"], ["failed", "var(--bad)"],
  ["backoff", "var(--warn)"], ["parked", "var(--park)"], ["◆ critical path", "var(--bad)"],
].map(([l, c]) => `<span style="--c:${c}">${l}</span>`).join("")}</div>`;

function drawDag(container, tasks, onPick) {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 24, ranksep: 60, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(() => ({}));
  // A `for_each` task is one node whose line counts its children: room for the figures.
  for (const t of tasks) g.setNode(t.name, { width: Math.max(t.for_each ? 250 : 120, t.name.length * 8 + 30), height: 46 });
  for (const t of tasks) for (const n of t.needs || []) g.setEdge(n, t.name);
  dagre.layout(g);
  const { width, height } = g.graph();
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "pipeline graph");
  svg.innerHTML = `<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path class="arrow" d="M0,0 L10,5 L0,10 z"/></marker></defs>`;
  for (const e of g.edges()) {
    const pts = g.edge(e).points;
    const path = document.createElementNS(ns, "path");
    path.setAttribute("class", "edge");
    path.setAttribute("d", pts.map((p, i) => `${i ? "L" : "M"}${p.x},${p.y}`).join(" "));
    path.setAttribute("marker-end", "url(#arrow)");
    svg.append(path);
  }
  const nodes = {};
  for (const name of g.nodes()) {
    const n = g.node(name);
    const el = document.createElementNS(ns, "g");
    el.setAttribute("class", "node");
    el.setAttribute("data-task", name);
    el.setAttribute("transform", `translate(${n.x - n.width / 2},${n.y - n.height / 2})`);
    el.innerHTML = `<rect width="${n.width}" height="${n.height}"></rect>
      <text x="12" y="19">${esc(name)}</text><text class="state" x="12" y="35"></text>`;
    if (onPick) el.addEventListener("click", () => onPick(name));
    svg.append(el);
    nodes[name] = el;
  }
  container.replaceChildren(svg);
  return nodes;
}

function paintDag(nodes, states, selected, kids = {}) {
  for (const [name, el] of Object.entries(nodes)) {
    const k = kids[name];
    // A `for_each` task waits for its children: while they run, it is running.
    const s = k && states[name] === "waiting" && k.done + k.failed < k.total ? "running" : states[name] || "";
    el.setAttribute("class", `node ${s}${name === selected ? " selected" : ""}`);
    el.setAttribute("data-state", s);
    el.querySelector(".state").textContent = k ? `${s} · ${childLine(k)}` : s;
  }
}

/// A run detail's `children` (counts by task and state) as, per task: total, done, running,
/// failed.
function childTally(children) {
  const out = {};
  for (const c of children || []) {
    const k = (out[c.taskName] ||= { total: 0, done: 0, running: 0, failed: 0 });
    k.total += c.count;
    if (c.state === "succeeded") k.done += c.count;
    else if (c.state === "running") k.running += c.count;
    else if (["dead", "cancelled"].includes(c.state)) k.failed += c.count;
  }
  return out;
}

/// A task panel's lines about parking: why it parked (or waits now) and what woke it.
function parkLine(t) {
  const p = t.park;
  const w = t.wake;
  let out = "";
  if (p) {
    const until = p.until ? ` until ${when(p.until)}` : "";
    const what = p.kind === "signal" ? `waits for signal <code>${esc(p.event)}</code>${p.until ? `, times out ${when(p.until)}` : ""}`
      : p.kind === "approval" ? `waits for approval: ${esc(p.note || "")}${p.until ? `, times out ${when(p.until)}` : ""}`
      : p.kind === "run" ? `waits for ${esc(p.note || "its sub-run")}, holding no worker`
      : `sleeps${until}`;
    out += `<dt>${t.state === "parked" ? "Parked" : "Was parked"}</dt><dd>${what}</dd>`;
  }
  if (w && t.state !== "parked") {
    const by = w.by === "signal" ? `signal <code>${esc(w.signal)}</code>`
      : w.by === "decision" ? `${w.approved ? "approved" : "rejected"} by <b>${esc(w.decidedBy)}</b> ${when(w.at)}${w.comment ? `: “${esc(w.comment)}”` : ""}`
      : "its time";
    out += `<dt>Woken by</dt><dd class="wake">${by}</dd>`;
  }
  return out;
}

function childLine(k) {
  const n = (x) => x.toLocaleString("en");
  return `${n(k.done)}/${n(k.total)} done${k.running ? ` · ${n(k.running)} running` : ""}${k.failed ? ` · ${n(k.failed)} failed` : ""}`;
}

const legend = `<div class="legend">${[
  ["succeeded", "var(--ok)"], ["running", "var(--run)"], ["pending", "var(--warn)"], ["parked", "var(--park)"],
  ["failed / dead", "var(--bad)"], ["waiting", "var(--wait)"], ["skipped / cancelled", "var(--wait)"],
].map(([l, c]) => `<span style="--c:${c}">${l}</span>`).join("")}</div>`;

// ---------- charts ----------

function bars(series, value, label, badValue) {
  const w = 600, h = 150, pad = 18;
  const max = Math.max(1, ...series.map(value));
  const bw = (w - pad) / Math.max(1, series.length);
  let out = "";
  series.forEach((b, i) => {
    const v = value(b);
    const bh = ((h - pad * 2) * v) / max;
    const x = pad + i * bw;
    out += `<rect class="bar" x="${x}" y="${h - pad - bh}" width="${Math.max(1, bw - 1)}" height="${bh}"><title>${esc(new Date(b.at).toLocaleTimeString())}: ${v.toFixed ? +v.toFixed(1) : v} ${label}</title></rect>`;
    if (badValue) {
      const bad = ((h - pad * 2) * badValue(b)) / max;
      if (bad > 0) out += `<rect class="bar bad" x="${x}" y="${h - pad - bad}" width="${Math.max(1, bw - 1)}" height="${bad}"></rect>`;
    }
  });
  const first = series[0] ? new Date(series[0].at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  return `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" role="img" aria-label="${esc(label)}">${out}
    <text class="axis" x="${pad}" y="12">max ${+max.toFixed(1)} ${esc(label)}</text>
    <text class="axis" x="${pad}" y="${h - 4}">${first}</text><text class="axis" x="${w - 30}" y="${h - 4}">now</text></svg>`;
}

// ---------- pages ----------

async function overview() {
  setTitle("Overview");
  main.innerHTML = `<h1>Overview</h1><div id="ov"><p class="muted">Loading…</p></div>`;
  const render = async () => {
    const [stats, series, services, recent] = await Promise.all([
      api("GET", "/workers/stats"),
      api("GET", "/workers/series?minutes=60"),
      api("GET", "/services"),
      api("GET", "/runs?limit=8"),
    ]);
    const q = stats.queue, h = stats.lastHour;
    const card = (n, l, id) => `<div class="card" id="${id}"><div class="n">${esc(n)}</div><div class="l">${esc(l)}</div></div>`;
    document.getElementById("ov").innerHTML = `
      <div class="grid">
        ${card(q.pending, "pending", "q-pending")}${card(q.running, "running", "q-running")}
        ${card(q.waiting, "waiting", "q-waiting")}${card(q.completed, "completed", "q-completed")}
        ${card(q.failed, "failed", "q-failed")}${card(q.dlq, "dead letters", "q-dlq")}
        ${card(`${(h.successRate * 100).toFixed(1)}%`, "success rate, last hour", "success-rate")}
        ${card(h.attempts, "attempts, last hour", "attempts-hour")}
        ${card(`${stats.nodesHealthy}/${stats.nodesHealthy + stats.nodesUnhealthy}`, "nodes healthy", "nodes")}
      </div>
      <div class="cols" style="margin-top:1rem">
        <div class="panel chart"><h2>Throughput (attempts per minute, failures in red)</h2>${bars(series, (b) => b.attempts, "attempts/min", (b) => b.failed)}</div>
        <div class="panel chart"><h2>Duration (p95 per minute, ms)</h2>${bars(series, (b) => b.durationP95Ms, "ms p95")}</div>
      </div>
      <h2>Workers</h2>
      <div class="panel"><table id="workers"><thead><tr><th>Node</th><th>Kind</th><th>Status</th><th class="hide-narrow">Queues</th><th class="hide-narrow">Slots</th><th>Last seen</th></tr></thead><tbody>
      ${services.map((s) => `<tr><td><code>${esc(s.id)}</code></td><td>${esc(s.service ? `service ${s.service}` : s.kind)}</td><td>${badge(s.status)}</td>
        <td class="hide-narrow">${esc((s.queues || []).join(", ") || "all")}</td><td class="hide-narrow">${esc(s.concurrency)}</td><td>${when(s.lastSeenAt || s.lastSeenAt)}</td></tr>`).join("") || `<tr><td colspan="6" class="muted">No node has registered.</td></tr>`}
      </tbody></table></div>
      <h2>Recent runs</h2>${runTable(recent.runs)}`;
  };
  await render();
  const again = throttle(render, 500);
  page = { onEvent: again };
  follow("");
}

function runTable(runs) {
  if (!runs.length) return `<div class="panel muted">No runs yet.</div>`;
  return `<div class="panel"><table class="runs"><thead><tr><th>Run</th><th>Pipeline</th><th>State</th><th>Tasks</th><th class="hide-narrow">Created</th><th>Took</th></tr></thead><tbody>
    ${runs.map((r) => `<tr data-run="${esc(r.id)}"><td><a href="/runs/${esc(r.id)}"><code>${short(r.id)}</code></a></td>
      <td><a href="/pipelines/${encodeURIComponent(r.pipelineName)}">${esc(r.pipelineName)}</a> <span class="muted">v${esc(r.pipelineVersion)}</span></td>
      <td>${badge(r.state)}</td><td>${r.tasksTotal - r.tasksPending}/${r.tasksTotal}${r.tasksDead ? ` <span class="muted">(${r.tasksDead} dead)</span>` : ""}</td>
      <td class="hide-narrow">${when(r.createdAt)}</td><td>${took(r.startedAt, r.finishedAt)}</td></tr>`).join("")}
    </tbody></table></div>`;
}

async function runs() {
  const params = new URLSearchParams(location.search);
  const status = params.get("status") || "";
  const pipeline = params.get("pipeline") || "";
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  setTitle(status || pipeline ? `Runs (${[status, pipeline].filter(Boolean).join(", ")})` : "Runs");
  const pipelines = await api("GET", "/pipelines");
  main.innerHTML = `<h1>Runs</h1>
    <form class="filters" id="filters">
      <select name="status" aria-label="status"><option value="">any state</option>
        ${["pending", "running", "succeeded", "failed", "cancelled"].map((s) => `<option ${s === status ? "selected" : ""}>${s}</option>`).join("")}</select>
      <select name="pipeline" aria-label="pipeline"><option value="">any pipeline</option>
        ${pipelines.map((p) => `<option ${p.name === pipeline ? "selected" : ""}>${esc(p.name)}</option>`).join("")}</select>
      <input name="q" id="search" placeholder="run id or prefix" aria-label="search by id">
      <button>Show</button>
    </form><div id="search-error" class="field-error"></div><div id="list"></div>
    <div class="pager"><button class="secondary" id="prev" ${offset ? "" : "disabled"}>Newer</button>
    <span class="muted" id="range"></span><button class="secondary" id="next">Older</button></div>`;
  document.getElementById("filters").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const q = String(f.get("q") || "").trim();
    if (q) {
      try {
        const found = await api("GET", `/runs/${encodeURIComponent(q)}`);
        return go(`/runs/${found.run.id}`);
      } catch (e) {
        document.getElementById("search-error").textContent = e.message;
        return;
      }
    }
    const next = new URLSearchParams();
    if (f.get("status")) next.set("status", f.get("status"));
    if (f.get("pipeline")) next.set("pipeline", f.get("pipeline"));
    go(`/runs${next.toString() ? `?${next}` : ""}`);
  });
  const move = (to) => {
    params.set("offset", String(Math.max(0, to)));
    go(`/runs?${params}`);
  };
  document.getElementById("prev").addEventListener("click", () => move(offset - PAGE_SIZE));
  document.getElementById("next").addEventListener("click", () => move(offset + PAGE_SIZE));
  const render = async () => {
    const q = new URLSearchParams({ limit: PAGE_SIZE, offset });
    if (status) q.set("status", status);
    if (pipeline) q.set("pipeline", pipeline);
    const found = await api("GET", `/runs?${q}`);
    document.getElementById("list").innerHTML = runTable(found.runs);
    document.getElementById("range").textContent = found.runs.length ? `${offset + 1}–${offset + found.runs.length}` : "";
    document.getElementById("next").disabled = found.runs.length < PAGE_SIZE;
  };
  await render();
  page = { onEvent: throttle(render, 500) };
  follow("");
}

// A run's task runs come by page: all of them (up to 1000) for a run whose graph is drawn, a
// page of a table for a bigger run, whose detail leaves the pipeline's definition out.
const TASK_PAGE = 100;

async function runDetail(id) {
  let detail = await api("GET", `/runs/${encodeURIComponent(id)}?taskLimit=${TASK_PAGE}`);
  const runId = detail.run.id;
  const big = !detail.pipeline;
  let pageOffset = 0;
  let pageState = "";
  const detailPath = () => big
    ? `/runs/${runId}?taskLimit=${TASK_PAGE}&taskOffset=${pageOffset}${pageState ? `&taskState=${pageState}` : ""}`
    : `/runs/${runId}?taskLimit=1000`;
  if (!big && detail.tasksPage.total > detail.tasks.length) detail = await api("GET", detailPath());
  let selected = null;
  let selectedRun = null; // the task run id whose panel is open
  setTitle(`Run ${short(runId)} (${detail.run.pipelineName})`);
  main.innerHTML = `<h1>Run <code>${short(runId)}</code> <span id="run-state"></span>
      <span class="row"><button id="cancel" class="danger">Cancel run</button><button id="retry">Retry failed tasks</button></span></h1>
    <div class="panel"><dl class="kv" id="run-facts"></dl></div>
    <div id="waiting" class="error-box" hidden></div>
    <div id="why" class="panel" hidden><h3>Why not running</h3><ul id="why-lines"></ul></div>
    <div id="approvals"></div>
    ${big ? `<h2>Tasks</h2><div id="task-table"></div>` : `<h2>Graph</h2>${legend}<div class="dag" id="dag"></div>`}
    ${big ? "" : `<h2>Timeline</h2>${timelineLegend}<div class="panel timeline" id="timeline"></div>`}
    <div id="task"><p class="muted">Select a task in the graph to see its attempts, logs, input and output.</p></div>
    <h2>Run input</h2><div id="run-input"></div>`;
  const nodes = big ? null : drawDag(document.getElementById("dag"), detail.pipeline.definition.tasks, (name) => pick(name));
  // Built once, then only its contents change: live updates must not replace the controls
  // under the user's pointer.
  const taskTable = () => {
    const box = document.getElementById("task-table");
    if (!box.firstChild) {
      box.innerHTML = `<p id="task-counts"></p>
        <div class="row"><select id="task-state"><option value="">any state</option></select>
          <span class="muted" id="tasks-range"></span>
          <button id="tasks-prev">Previous</button><button id="tasks-next">Next</button></div>
        <div class="panel"><table class="tasks"><thead><tr><th>Task</th><th>State</th><th>Attempt</th><th>Took</th></tr></thead><tbody id="task-rows"></tbody></table></div>`;
      box.querySelector("#task-rows").addEventListener("click", (ev) => {
        const tr = ev.target.closest("tr[data-task]");
        if (!tr) return;
        ev.preventDefault();
        pick(tr.dataset.task);
      });
      box.querySelector("#task-state").addEventListener("change", (ev) => { pageState = ev.target.value; pageOffset = 0; refresh(); });
      box.querySelector("#tasks-prev").addEventListener("click", () => { pageOffset = Math.max(0, pageOffset - TASK_PAGE); refresh(); });
      box.querySelector("#tasks-next").addEventListener("click", () => { pageOffset += TASK_PAGE; refresh(); });
    }
    const counts = Object.entries(detail.taskCounts || {});
    const p = detail.tasksPage;
    box.querySelector("#task-counts").innerHTML = counts.map(([st, n]) => `${badge(st)} ${esc(n)}`).join(" ");
    const select = box.querySelector("#task-state");
    for (const [st] of counts) {
      if (![...select.options].some((o) => o.value === st)) select.add(new Option(st, st));
    }
    select.value = pageState;
    box.querySelector("#tasks-range").textContent = p.total ? `${p.offset + 1}–${p.offset + detail.tasks.length} of ${p.total}` : "none";
    box.querySelector("#tasks-prev").disabled = !p.offset;
    box.querySelector("#tasks-next").disabled = p.offset + detail.tasks.length >= p.total;
    box.querySelector("#task-rows").innerHTML = detail.tasks.map((t) => `<tr data-task="${esc(t.taskName)}" class="${t.taskName === selected ? "selected" : ""}"><td><a href="#">${esc(t.taskName)}</a></td><td>${badge(t.state)}</td><td>${esc(t.attempt)}</td><td>${took(t.startedAt, t.finishedAt)}</td></tr>`).join("");
  };
  const facts = () => {
    const r = detail.run;
    document.getElementById("run-state").innerHTML = badge(r.state);
    document.getElementById("run-facts").innerHTML = `
      <dt>Run id</dt><dd><code>${esc(r.id)}</code></dd>
      <dt>Pipeline</dt><dd><a href="/pipelines/${encodeURIComponent(r.pipelineName)}">${esc(r.pipelineName)}</a> version ${esc(r.pipelineVersion)}</dd>
      <dt>Tasks</dt><dd>${r.tasksTotal - r.tasksPending} of ${r.tasksTotal} settled${r.tasksDead ? `, ${r.tasksDead} dead` : ""}</dd>
      <dt>Created</dt><dd>${when(r.createdAt)}</dd><dt>Took</dt><dd>${took(r.startedAt, r.finishedAt)}${settled(r.state) ? "" : " so far"}</dd>
      ${r.idempotencyKey ? `<dt>Idempotency key</dt><dd><code>${esc(r.idempotencyKey)}</code></dd>` : ""}
      ${r.triggeredBy ? `<dt>Triggered by</dt><dd>${esc(r.triggeredBy)}</dd>` : ""}
      ${r.rerunOf ? `<dt>Re-run of</dt><dd><a id="rerun-of" href="/runs/${esc(r.rerunOf)}">${short(r.rerunOf)}</a> from <code>${esc(r.rerunFrom || "")}</code></dd>` : ""}
      ${r.parentRunId ? `<dt>Parent run</dt><dd><a id="parent-run" href="/runs/${esc(r.parentRunId)}">${short(r.parentRunId)}</a> (task <code>${esc(r.parentTask || "")}</code>)</dd>` : ""}
      ${(detail.subRuns || []).length ? `<dt>Sub-runs</dt><dd id="sub-runs">${detail.subRuns.map((c) => `<a href="/runs/${esc(c.id)}">${short(c.id)}</a> ${badge(c.state)} <span class="muted">${esc(c.pipelineName)} for <code>${esc(c.parentTask || "")}</code></span>`).join("<br>")}</dd>` : ""}
      <dt>Changed since last run</dt><dd id="changed">${big ? `<span class="muted">not compared for runs of over 1000 tasks</span>` : detail.changedSincePreviousRun.length ? detail.changedSincePreviousRun.map((t) => `<span class="badge s-changed">${esc(t)}</span>`).join(" ") : "nothing"}</dd>`;
    const inputBox = document.getElementById("run-input");
    inputBox.innerHTML = valueHtml(r.input, "run-input-value");
    fillObjects(inputBox);
    document.getElementById("cancel").hidden = settled(r.state);
    document.getElementById("retry").hidden = !["failed", "cancelled"].includes(r.state);
    const waiting = document.getElementById("waiting");
    waiting.hidden = !(detail.waiting || []).length || settled(r.state);
    waiting.innerHTML = (detail.waiting || []).map((w) => `<p>Waiting: ${esc(w)}</p>`).join("");
    const why = detail.why || [];
    document.getElementById("why").hidden = !why.length;
    document.getElementById("why-lines").innerHTML = why.map((w) => `<li><code>${esc(w.task || "(run)")}</code> ${badge(w.state)} ${esc(w.reason)}</li>`).join("");
    approvals();
    if (big) return taskTable();
    const states = Object.fromEntries(detail.tasks.map((t) => [t.taskName, t.state]));
    paintDag(nodes, states, selected, childTally(detail.children));
    drawTimeline();
  };
  // Approvals waiting for a decision: rebuilt only when that set changes, so a comment being
  // typed survives live updates.
  let approvalKeys = "";
  const approvals = () => {
    const box = document.getElementById("approvals");
    const waiting = detail.tasks.filter((t) => t.state === "parked" && t.park && t.park.kind === "approval");
    const keys = waiting.map((t) => t.id).join(",");
    if (keys === approvalKeys) return;
    approvalKeys = keys;
    const defs = detail.pipeline ? detail.pipeline.definition.tasks : [];
    box.innerHTML = waiting.map((t) => {
      const def = defs.find((d) => d.name === t.taskName);
      const who = def && def.params && Array.isArray(def.params.approvers) ? def.params.approvers : [];
      return `<div class="panel approval" data-task="${esc(t.taskName)}"><h3>Approval needed: <code>${esc(t.taskName)}</code></h3>
        <p>${esc(t.park.note || "")}</p>${who.length ? `<p class="muted">Approvers: ${who.map(esc).join(", ")}</p>` : ""}
        <div class="row"><input class="approver" placeholder="your name" value="${esc(localStorage.getItem("orbit_user") || "")}">
          <input class="comment" placeholder="comment (optional)">
          <button class="approve">Approve</button><button class="reject danger">Reject</button></div></div>`;
    }).join("");
    for (const el of box.querySelectorAll(".approval")) {
      const decide = (decision) => async (ev) => {
        const by = el.querySelector(".approver").value.trim();
        if (!by) return toast("Say who decides (your name)", true);
        localStorage.setItem("orbit_user", by);
        const comment = el.querySelector(".comment").value.trim() || null;
        ev.target.disabled = true;
        try {
          await api("POST", `/runs/${runId}/tasks/${encodeURIComponent(el.dataset.task)}/decision`, { decision, comment, by });
          toast(decision === "approve" ? "Approved" : "Rejected");
          refresh();
        } catch (e) {
          ev.target.disabled = false;
          if (e instanceof ApiError && e.status === 401) return signIn();
          toast(`${decision === "approve" ? "Approve" : "Reject"} failed: ${e.message}`, true);
        }
      };
      el.querySelector(".approve").addEventListener("click", decide("approve"));
      el.querySelector(".reject").addEventListener("click", decide("reject"));
    }
  };
  let timelineBusy = false;
  async function drawTimeline() {
    const box = document.getElementById("timeline");
    if (!box || timelineBusy) return;
    // A run with a map of thousands of children: the graph counts them, a timeline is not drawn.
    if (detail.run.tasksTotal > 1000) {
      box.innerHTML = `<p class="muted">A timeline is drawn for runs of up to 1000 task runs; this one has ${esc(detail.run.tasksTotal.toLocaleString("en"))}.</p>`;
      return;
    }
    timelineBusy = true;
    try {
      const tl = await api("GET", `/runs/${runId}/timeline`);
      const t0 = Date.parse(tl.start);
      const span = Math.max(1, Date.parse(tl.end) - t0);
      const at = (t) => ((Date.parse(t) - t0) / span) * 100;
      const tip = (s) => `${s.kind}${s.attempt ? ` · attempt ${s.attempt}` : ""}${s.outcome ? ` · ${s.outcome}` : ""} · ${took(s.from, s.to)}`;
      box.innerHTML = `<div class="tl-axis"><span>0 s</span><span>${took(tl.start, tl.end)}</span></div>` + tl.lanes.map((l) =>
        `<div class="tl-lane${l.critical ? " critical" : ""}" data-task="${esc(l.task)}"><span class="tl-name" title="${esc(l.task)}">${esc(l.task)}${l.reused ? ` <span class="muted">(kept)</span>` : ""}</span><span class="tl-track">${
          l.segments.map((s) => `<span class="tl-seg k-${esc(s.kind)}${s.outcome ? ` o-${esc(s.outcome)}` : ""}" style="left:${at(s.from).toFixed(3)}%;width:${Math.max(0, at(s.to) - at(s.from)).toFixed(3)}%" title="${esc(tip(s))}"></span>`).join("")
        }</span></div>`).join("");
    } catch (e) {
      box.innerHTML = `<p class="muted">${esc(e.message || e)}</p>`;
    } finally {
      timelineBusy = false;
    }
  }
  facts();
  document.getElementById("cancel").addEventListener("click", (ev) =>
    act(ev.target, `Cancel run ${short(runId)}? Running attempts are stopped and nothing else starts.`, "Cancel run",
      () => api("POST", `/runs/${runId}/cancel`), () => { toast("Run cancelled"); refresh(); }));
  document.getElementById("retry").addEventListener("click", (ev) =>
    act(ev.target, `Retry the failed and cancelled tasks of run ${short(runId)}? They get fresh attempts; succeeded tasks are kept.`, "Retry run",
      () => api("POST", `/runs/${runId}/retry`), (r) => { toast(`Re-queued: ${r.requeued.join(", ") || "nothing"}`); refresh(); }));

  async function pick(name) {
    selected = name;
    childOffset = 0;
    childState = "";
    if (big) taskTable();
    else paintDag(nodes, Object.fromEntries(detail.tasks.map((t) => [t.taskName, t.state])), selected, childTally(detail.children));
    await showTask();
  }
  // A `for_each` task's children: counts, then one page of them, in list order.
  let childOffset = 0;
  let childState = "";
  async function showChildren(name) {
    const box = document.getElementById("children");
    if (!box) return;
    const k = childTally(detail.children)[name];
    if (!k) {
      box.innerHTML = `<p class="muted">No children yet: the list is made when the task starts.</p>`;
      return;
    }
    // Built once, then only its contents change: live updates must not replace the controls
    // under the user's pointer.
    if (!box.querySelector("#child-rows")) {
      box.innerHTML = `<p id="child-counts"></p>
        <div class="row"><select id="child-state"><option value="">any state</option></select>
          <span class="muted" id="children-range"></span>
          <button id="children-prev">Previous</button><button id="children-next">Next</button></div>
        <div class="panel"><table class="tasks"><thead><tr><th>#</th><th>State</th><th>Attempt</th><th>Took</th><th>Output or error</th></tr></thead><tbody id="child-rows"></tbody></table></div>`;
      box.querySelector("#child-state").addEventListener("change", (ev) => { childState = ev.target.value; childOffset = 0; showChildren(name); });
      box.querySelector("#children-prev").addEventListener("click", () => { childOffset = Math.max(0, childOffset - TASK_PAGE); showChildren(name); });
      box.querySelector("#children-next").addEventListener("click", () => { childOffset += TASK_PAGE; showChildren(name); });
    }
    const q = `limit=${TASK_PAGE}&offset=${childOffset}${childState ? `&state=${childState}` : ""}`;
    const rows = await api("GET", `/runs/${runId}/tasks/${encodeURIComponent(name)}/children?${q}`);
    const states = (detail.children || []).filter((c) => c.taskName === name);
    const total = childState ? states.filter((c) => c.state === childState).reduce((a, c) => a + c.count, 0) : k.total;
    box.querySelector("#child-counts").innerHTML = `${esc(childLine(k))}: ${states.map((c) => `${badge(c.state)} ${esc(c.count.toLocaleString("en"))}`).join(" ")}`;
    const select = box.querySelector("#child-state");
    for (const c of states) {
      if (![...select.options].some((o) => o.value === c.state)) select.add(new Option(c.state, c.state));
    }
    select.value = childState;
    box.querySelector("#children-range").textContent = total ? `${childOffset + 1}–${childOffset + rows.length} of ${total.toLocaleString("en")}` : "none";
    box.querySelector("#children-prev").disabled = !childOffset;
    box.querySelector("#children-next").disabled = childOffset + rows.length >= total;
    box.querySelector("#child-rows").innerHTML = rows.map((t) => `<tr><td>${esc(t.mapIndex)}</td><td>${badge(t.state)}</td><td>${esc(t.attempt)}</td><td>${took(t.startedAt, t.finishedAt)}</td><td class="${t.error ? "err" : ""}">${esc(t.error || (t.output === undefined ? "" : JSON.stringify(t.output).slice(0, 120)))}</td></tr>`).join("");
  }
  async function showTask() {
    const tr = detail.tasks.find((t) => t.taskName === selected);
    const box = document.getElementById("task");
    // A map task's children list survives the panel's redraws (see showChildren).
    const kept = box.querySelector("#children");
    if (!tr) {
      box.innerHTML = `<h2>${esc(selected)}</h2><p class="muted">Not started.</p>`;
      return;
    }
    const d = await api("GET", `/task-runs/${tr.id}`);
    selectedRun = tr.id;
    const t = d.taskRun;
    const version = detail.codeVersions[t.taskName] ?? (d.attempts.length ? d.attempts[d.attempts.length - 1].codeVersion : null);
    const changed = detail.changedSincePreviousRun.includes(t.taskName);
    const last = d.attempts[d.attempts.length - 1];
    const log = t.state === "running" ? d.liveLog ?? "(this attempt runs on another node: its log appears when it ends)" : last ? last.log : "";
    box.innerHTML = `<h2>Task ${esc(t.taskName)} ${badge(t.state)} ${changed ? `<span class="badge s-changed">changed since last run</span>` : ""}</h2>
      <div class="cols"><div class="panel"><dl class="kv">
        <dt>Type</dt><dd>${esc(t.taskType)}${t.queue ? ` on queue <code>${esc(t.queue)}</code>` : ""}</dd>
        <dt>Attempt</dt><dd>${esc(t.attempt)} of ${esc(t.maxAttempts)}</dd>
        <dt>Code version</dt><dd>${version ? `v${esc(version)}` : "—"} <a href="/tasks/${encodeURIComponent(t.taskName)}">history</a></dd>
        ${t.progress != null ? `<dt>Progress</dt><dd><div class="progress"><div style="width:${Math.round(t.progress * 100)}%"></div></div>${esc(t.progressMessage || "")}</dd>` : ""}
        ${t.error ? `<dt>Error</dt><dd class="err">${esc(t.error)}</dd>` : ""}
        <dt>Took</dt><dd>${took(t.startedAt, t.finishedAt)}</dd>
        ${parkLine(t)}
        ${t.origin ? `<dt>Kept from</dt><dd>run <a href="/runs/${esc(detail.run.rerunOf)}">${short(detail.run.rerunOf)}</a> (its output, not run again)</dd>` : ""}
      </dl>${t.mapParent ? "" : `<p><button id="rerun-here">Re-run from here</button></p>`}</div>
      <div class="panel"><h3>Input</h3><pre>${json({ params: d.definition ? d.definition.params : null })}</pre>
      ${Object.entries(d.upstream || {}).map(([name, v], i) => `<h4>Output of ${esc(name)}</h4>${valueHtml(v, `upstream-${i}`)}`).join("")}
      <h3>Output</h3>${valueHtml(t.output, "task-output")}</div></div>
      <h3>Log ${t.state === "running" ? `<span class="muted">(live)</span>` : ""}</h3><pre id="task-log">${esc(log || "(no output)")}</pre>
      <h3>Attempts</h3><div class="panel"><table><thead><tr><th>#</th><th>Outcome</th><th class="hide-narrow">Worker</th><th>Started</th><th>Took</th><th>Code</th><th>Error</th></tr></thead><tbody>
      ${d.attempts.map((a) => `<tr><td>${a.attempt}</td><td>${badge(a.outcome)}</td><td class="hide-narrow"><code>${esc(a.worker)}</code></td><td>${when(a.startedAt)}</td><td>${took(a.startedAt, a.finishedAt)}</td><td>${a.codeVersion ? `v${a.codeVersion}` : "—"}</td><td class="err">${esc(a.error || "")}</td></tr>`).join("") || `<tr><td colspan="7" class="muted">No attempt has finished yet.</td></tr>`}
      </tbody></table></div>
      ${(detail.subRuns || []).filter((c) => c.parentTask === t.taskName).map((c) => `<p class="sub-run">Runs pipeline <a href="/pipelines/${encodeURIComponent(c.pipelineName)}">${esc(c.pipelineName)}</a> as run <a href="/runs/${esc(c.id)}">${short(c.id)}</a> ${badge(c.state)}</p>`).join("")}
      ${d.definition && d.definition.for_each ? `<h3>Children <span class="muted">(one per element of <code>${esc(d.definition.for_each.items)}</code>)</span></h3><div id="children"></div>` : ""}`;
    fillObjects(box);
    const rerunButton = document.getElementById("rerun-here");
    if (rerunButton) rerunButton.addEventListener("click", async (ev) => {
      const button = ev.target;
      button.disabled = true;
      try {
        // What a re-run starts from, read back from object storage where it is kept there.
        const start = await api("GET", `/runs/${runId}/rerun?from=${encodeURIComponent(t.taskName)}`);
        const body = await rerunDialog(t.taskName, start.input, start.upstream);
        if (!body) return;
        const r = await api("POST", `/runs/${runId}/rerun`, body);
        toast(`Re-run ${short(r.run.id)} created`);
        go(`/runs/${r.run.id}`);
      } catch (e) {
        toast(`Re-run failed: ${e.message}`, true);
      } finally {
        button.disabled = false;
      }
    });
    if (d.definition && d.definition.for_each) {
      const slot = document.getElementById("children");
      if (kept && kept.dataset.task === t.taskName) slot.replaceWith(kept);
      else slot.dataset.task = t.taskName;
      await showChildren(t.taskName);
    }
  }
  async function refresh() {
    detail = await api("GET", detailPath());
    facts();
    if (selected) await showTask();
  }
  const again = throttle(refresh, 100);
  page = {
    onEvent: (m) => m.type === "event" && again(),
    onLog: (line) => {
      if (line.taskRunId !== selectedRun) return;
      const pre = document.getElementById("task-log");
      if (pre.textContent === "(no output)") pre.textContent = "";
      pre.textContent += `${line.line}\n`;
      pre.scrollTop = pre.scrollHeight;
    },
  };
  follow(`run=${runId}`);
}

async function pipelines() {
  setTitle("Pipelines");
  const list = await api("GET", "/pipelines");
  main.innerHTML = `<h1>Pipelines</h1>${list.length ? `<div class="panel"><table><thead><tr><th>Name</th><th>Version</th><th>Tasks</th><th class="hide-narrow">Schedule</th><th class="hide-narrow">Description</th></tr></thead><tbody>
    ${list.map((p) => `<tr><td><a href="/pipelines/${encodeURIComponent(p.name)}">${esc(p.name)}</a></td><td>v${esc(p.version)}</td><td>${p.definition.tasks.length}</td>
      <td class="hide-narrow">${esc(p.schedule || "—")}</td><td class="hide-narrow">${esc(p.description || "")}</td></tr>`).join("")}</tbody></table></div>`
    : `<div class="panel muted">No pipelines yet. Create one with <code>orbit pipelines create FILE --url …</code> or <code>POST /api/v1/pipelines</code>.</div>`}`;
}

async function pipelineDetail(name) {
  const p = await api("GET", `/pipelines/${encodeURIComponent(name)}`);
  setTitle(`Pipeline ${p.name}`);
  main.innerHTML = `<h1>Pipeline ${esc(p.name)} <span class="muted">v${esc(p.version)}</span></h1>
    ${p.description ? `<p>${esc(p.description)}</p>` : ""}
    <div class="cols">
      <div class="panel"><h2 style="margin-top:0">Trigger a run</h2>
        <form id="trigger"><label for="input">Input (JSON object)</label>
          <textarea id="input" name="input" spellcheck="false">{}</textarea>
          <div class="field-error" id="input-error"></div>
          <div class="row"><input name="key" placeholder="idempotency key (optional)" aria-label="idempotency key">
          <input name="priority" type="number" placeholder="priority" aria-label="priority" style="width:7rem">
          <button id="trigger-button">Trigger</button></div>
          <div class="field-error" id="trigger-error"></div></form></div>
      <div class="panel"><h2 style="margin-top:0">Definition</h2><pre>${esc(p.source || JSON.stringify(p.definition, null, 2))}</pre></div>
    </div>
    <h2>Graph</h2><div class="dag" id="dag"></div>
    <h2>Recent runs</h2><div id="recent"></div>`;
  const nodes = drawDag(document.getElementById("dag"), p.definition.tasks, (task) => go(`/tasks/${encodeURIComponent(task)}?pipeline=${encodeURIComponent(p.name)}`));
  paintDag(nodes, {}, null);
  const input = document.getElementById("input");
  const button = document.getElementById("trigger-button");
  const check = () => {
    let error = "";
    try {
      const v = JSON.parse(input.value);
      if (v === null || typeof v !== "object" || Array.isArray(v)) error = "The input must be a JSON object, like {\"users\": 12}.";
    } catch (e) {
      error = `Not valid JSON: ${e.message}`;
    }
    input.classList.toggle("invalid", !!error);
    document.getElementById("input-error").textContent = error;
    button.disabled = !!error;
    return !error;
  };
  input.addEventListener("input", check);
  document.getElementById("trigger").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!check()) return;
    const f = new FormData(ev.target);
    const body = { input: JSON.parse(input.value) };
    if (f.get("key")) body.idempotencyKey = f.get("key");
    if (f.get("priority")) body.priority = Number(f.get("priority"));
    button.disabled = true;
    try {
      const r = await api("POST", `/pipelines/${encodeURIComponent(p.name)}/trigger`, body);
      go(`/runs/${r.run.id}`);
    } catch (e) {
      document.getElementById("trigger-error").textContent = e.message;
      button.disabled = false;
    }
  });
  const recent = async () => {
    const found = await api("GET", `/runs?pipeline=${encodeURIComponent(p.name)}&limit=10`);
    document.getElementById("recent").innerHTML = runTable(found.runs);
  };
  await recent();
  page = { onEvent: throttle(recent, 500) };
  follow("");
}

async function dlq() {
  setTitle("Dead letters");
  main.innerHTML = `<h1>Dead letters</h1><p class="muted">Task runs that used up their attempts. Retrying gives the task fresh attempts and reopens its run.</p><div id="dead"></div>`;
  const render = async () => {
    const entries = await api("GET", "/dlq?limit=200");
    document.getElementById("dead").innerHTML = entries.length
      ? `<div class="panel"><table><thead><tr><th>Task</th><th>Run</th><th>Error</th><th>Attempts</th><th class="hide-narrow">When</th><th></th></tr></thead><tbody>
        ${entries.map((e) => `<tr data-dead="${esc(e.id)}"><td>${esc(e.taskName)}</td><td><a href="/runs/${esc(e.runId)}"><code>${short(e.runId)}</code></a></td>
          <td class="err">${esc(e.error || "")}</td><td>${esc(e.attempts)}</td><td class="hide-narrow">${when(e.createdAt)}</td>
          <td><button class="retry-dead" data-id="${esc(e.id)}" data-task="${esc(e.taskName)}">Retry</button></td></tr>`).join("")}</tbody></table></div>`
      : `<div class="panel muted">The dead-letter queue is empty.</div>`;
    for (const b of document.querySelectorAll("button.retry-dead"))
      b.addEventListener("click", () =>
        act(b, `Retry task ${b.dataset.task}? It gets fresh attempts and its run is reopened.`, "Retry task",
          () => api("POST", `/dlq/${b.dataset.id}/retry`), () => { toast(`Task ${b.dataset.task} re-queued`); again(); }));
  };
  const again = throttle(render, 300);
  await render();
  page = { onEvent: again };
  follow("");
}

async function tasks() {
  setTitle("Task code");
  const [pipes, services] = await Promise.all([api("GET", "/pipelines"), api("GET", "/services")]);
  const registered = [];
  for (const s of services.filter((s) => s.service)) {
    if (registered.some((r) => r.service === s.service)) continue;
    for (const t of await api("GET", `/services/${encodeURIComponent(s.service)}/tasks`)) registered.push({ service: s.service, ...t });
  }
  const rows = [];
  for (const p of pipes) for (const t of p.definition.tasks) rows.push(`<tr><td><a href="/tasks/${encodeURIComponent(t.name)}?pipeline=${encodeURIComponent(p.name)}">${esc(t.name)}</a></td><td>pipeline <a href="/pipelines/${encodeURIComponent(p.name)}">${esc(p.name)}</a></td><td>${esc(t.type)}</td></tr>`);
  for (const t of registered) rows.push(`<tr><td><a href="/tasks/${encodeURIComponent(t.name || t.task)}">${esc(t.name || t.task)}</a></td><td>service ${esc(t.service)}</td><td>worker, v${esc(t.codeVersion ?? t.codeVersion ?? "?")}</td></tr>`);
  main.innerHTML = `<h1>Task code</h1><p class="muted">Every task and the history of its code: a pipeline task changes when its definition does, a worker task when its handler's code hash does.</p>
    <div class="panel"><table><thead><tr><th>Task</th><th>Defined by</th><th>Type</th></tr></thead><tbody>${rows.join("") || `<tr><td colspan="3" class="muted">No tasks yet.</td></tr>`}</tbody></table></div>`;
}

async function taskHistory(name) {
  const pipeline = new URLSearchParams(location.search).get("pipeline");
  setTitle(`Task ${name} code history`);
  const history = await api("GET", `/tasks/${encodeURIComponent(name)}/history${pipeline ? `?pipeline=${encodeURIComponent(pipeline)}` : ""}`);
  main.innerHTML = `<h1>Task ${esc(name)} <span class="muted">code history${pipeline ? ` in ${esc(pipeline)}` : ""}</span></h1>
    <div class="panel"><table id="history"><thead><tr><th>Version</th><th>Defined by</th><th>Code hash</th><th>Changed</th></tr></thead><tbody>
    ${history.map((h) => `<tr><td>v${esc(h.codeVersion)}</td><td>${h.service ? `service ${esc(h.service)}` : `pipeline <a href="/pipelines/${encodeURIComponent(h.pipeline)}">${esc(h.pipeline)}</a> v${esc(h.pipelineVersion)}`}</td>
      <td><code title="${esc(h.codeHash)}">${esc(h.codeHash.slice(0, 12))}</code></td><td>${when(h.changedAt)}</td></tr>`).join("")}</tbody></table></div>`;
}

// ---------- routing ----------

const routes = [
  [/^\/$/, overview, "overview"],
  [/^\/runs$/, runs, "runs"],
  [/^\/runs\/([^/]+)$/, runDetail, "runs"],
  [/^\/pipelines$/, pipelines, "pipelines"],
  [/^\/pipelines\/([^/]+)$/, pipelineDetail, "pipelines"],
  [/^\/dlq$/, dlq, "dlq"],
  [/^\/tasks$/, tasks, "tasks"],
  [/^\/tasks\/([^/]+)$/, taskHistory, "tasks"],
];

// Each page that follows the event stream opens its own (see follow).
async function route() {
  page = null;
  shown += 1;
  if (source) source.close();
  source = null;
  document.getElementById("live").classList.remove("on");
  for (const [re, render, nav] of routes) {
    const m = location.pathname.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === nav);
    try {
      await render(...m.slice(1).map(decodeURIComponent));
    } catch (e) {
      showError(e);
    }
    return;
  }
  setTitle("Not found");
  main.innerHTML = `<div class="error-box">No page at ${esc(location.pathname)}.</div>`;
}

function go(path) {
  history.pushState(null, "", path);
  route();
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[href^='/']");
  if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey || a.target) return;
  if (a.getAttribute("href").startsWith("/api/") || a.getAttribute("href").startsWith("/docs")) return;
  ev.preventDefault();
  go(a.getAttribute("href"));
});
window.addEventListener("popstate", route);
route();
