// edgeseal dashboard: keeps the server-rendered table current from /api/v1/live
// (server-sent events), has the server redraw a stream's chart when it has new
// readings, says how long ago each stream was last seen (stale when it is
// late), and refreshes the sensors' health. The page works without this
// script; it only stops updating.
"use strict";
(function () {
  const rows = document.getElementById("streams");
  const gaps = new Map(); // row id → typical time between readings (ms)
  const charts = document.getElementById("charts");
  // How often a chart is redrawn at most, by the span it shows.
  const REDRAW = { hour: 2000, day: 30000, week: 120000 }[charts ? charts.dataset.range : "hour"] || 2000;
  const drawn = new Map(); // key → when its chart was last asked for
  const pending = new Set(); // keys with a redraw waiting

  function key(r) { return r.device + "/" + r.stream; }

  function cell(row, name) { return row.querySelector("[data-f='" + name + "']"); }

  function rowFor(r) {
    const id = "s-" + key(r).replace(/[^A-Za-z0-9_-]/g, "_");
    let row = document.getElementById(id);
    if (!row) {
      row = document.createElement("tr");
      row.id = id;
      for (const f of ["stream", "origin", "value", "description", "time", "seen", "status"]) {
        const td = document.createElement("td");
        td.dataset.f = f;
        row.appendChild(td);
      }
      rows.appendChild(row);
      const empty = document.getElementById("empty");
      if (empty) empty.remove();
    }
    return row;
  }

  // Asks the server for the stream's chart again, at most every REDRAW ms (and not while one is loading).
  function redraw(k) {
    const fig = charts && [...charts.querySelectorAll("figure[data-key]")].find((f) => f.dataset.key === k);
    const pic = fig && fig.querySelector("img");
    const now = Date.now();
    if (!pic) return;
    if (pic.dataset.loading === "1" || now - (drawn.get(k) || 0) < REDRAW) {
      // Too soon: once more when it is time, so the newest readings are drawn even if none follow.
      if (!pending.has(k)) { pending.add(k); setTimeout(() => { pending.delete(k); redraw(k); }, REDRAW); }
      return;
    }
    drawn.set(k, now);
    pic.dataset.loading = "1";
    const url = new URL(pic.src, location.href);
    url.searchParams.set("n", String(now));
    pic.src = url.pathname + url.search;
  }

  if (charts) {
    for (const pic of charts.querySelectorAll("img")) {
      const fig = pic.parentElement;
      drawn.set(fig.dataset.key, Date.now());
      const done = () => { pic.dataset.loading = "0"; fig.dataset.draws = String(Number(fig.dataset.draws || 0) + 1); };
      pic.addEventListener("load", done);
      pic.addEventListener("error", () => { pic.dataset.loading = "0"; });
      if (pic.complete && pic.naturalWidth > 0) done();
    }
  }

  let applied = 0;

  function show(r) {
    const row = rowFor(r);
    rows.dataset.updates = String(++applied); // how many live readings this page has shown
    const before = Number(row.dataset.ts || 0);
    if (before && r.ts_ms > before) {
      const g = gaps.get(row.id) || (r.ts_ms - before);
      gaps.set(row.id, 0.8 * g + 0.2 * (r.ts_ms - before));
    }
    row.dataset.ts = String(r.ts_ms);
    cell(row, "stream").textContent = r.stream;
    cell(row, "origin").textContent = r.origin === "peer" ? "from " + r.peer : "this agent";
    cell(row, "value").textContent = r.value !== undefined ? r.value + " " + r.unit : r.media_type + ", " + r.bytes + " B";
    cell(row, "description").textContent = r.description || r.label || "";
    cell(row, "time").textContent = r.time;
    cell(row, "status").textContent = r.status;
    row.className = "fresh";
    setTimeout(() => { row.className = ""; }, 600);
    if (typeof r.value === "number") redraw(key(r));
    age(row);
  }

  function ago(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  // How long since the stream's newest reading; stale when it is three of its usual gaps late.
  function age(row) {
    const ts = Number(row.dataset.ts || 0);
    const seen = cell(row, "seen");
    if (!ts || !seen) return;
    const late = Date.now() - ts;
    const usual = gaps.get(row.id) || 0;
    const stale = late > Math.max(10000, 3 * usual);
    seen.textContent = ago(late) + (stale ? " · stale" : "");
    seen.className = stale ? "warn" : "";
  }

  setInterval(() => { for (const row of rows.querySelectorAll("tr[data-ts]")) age(row); }, 1000);
  for (const row of rows.querySelectorAll("tr[data-ts]")) age(row);

  const sensors = document.getElementById("sensors");
  async function health() {
    try {
      const list = await (await fetch("/api/v1/sensors")).json();
      sensors.replaceChildren(...list.map((h) => {
        const tr = document.createElement("tr");
        for (const [text, f] of [[h.sensor], [h.health, "health"], [h.reads], [h.failures], [h.last_ok || "", "time"], [h.last_error || ""]]) {
          const td = document.createElement("td");
          td.textContent = String(text);
          if (f === "health") { td.dataset.f = f; td.className = h.health === "failing" ? "bad" : "ok"; }
          if (f === "time") td.className = "time";
          tr.appendChild(td);
        }
        return tr;
      }));
    } catch (e) { /* the agent may be restarting */ }
  }
  if (sensors) setInterval(health, 5000);

  const state = document.getElementById("state");
  const events = new EventSource("/api/v1/live");
  events.addEventListener("reading", (e) => show(JSON.parse(e.data)));
  events.onopen = () => { state.textContent = "live"; state.className = "ok"; };
  events.onerror = () => { state.textContent = "reconnecting…"; state.className = "warn"; };
})();
