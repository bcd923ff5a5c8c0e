// edgeseal dashboard: keeps the server-rendered table current from /api/v1/live
// (server-sent events), draws a chart of each stream's recent values, says how
// long ago each stream was last seen (stale when it is late), and refreshes the
// sensors' health. The page works without this script; it only stops updating.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const rows = document.getElementById("streams");
  const history = new Map(); // key → recent values
  const gaps = new Map(); // row id → typical time between readings (ms)
  const KEEP = 120;

  function key(r) { return r.device + "/" + r.stream; }

  function cell(row, name) { return row.querySelector("[data-f='" + name + "']"); }

  function rowFor(r) {
    const id = "s-" + key(r).replace(/[^A-Za-z0-9_-]/g, "_");
    let row = document.getElementById(id);
    if (!row) {
      row = document.createElement("tr");
      row.id = id;
      for (const f of ["stream", "origin", "value", "description", "time", "seen", "status", "chart"]) {
        const td = document.createElement("td");
        td.dataset.f = f;
        row.appendChild(td);
      }
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("viewBox", "0 0 240 56");
      svg.setAttribute("class", "chart");
      svg.appendChild(document.createElementNS(SVG, "polyline"));
      for (const [cls, y] of [["hi", 10], ["lo", 54]]) {
        const t = document.createElementNS(SVG, "text");
        t.setAttribute("class", cls);
        t.setAttribute("x", "2");
        t.setAttribute("y", String(y));
        svg.appendChild(t);
      }
      cell(row, "chart").appendChild(svg);
      rows.appendChild(row);
      const empty = document.getElementById("empty");
      if (empty) empty.remove();
    }
    return row;
  }

  function draw(row, values) {
    const line = row.querySelector("polyline");
    if (!line || values.length < 2) return;
    const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
    const step = 190 / (KEEP - 1), start = 238 - step * (values.length - 1);
    line.setAttribute("points", values.map((v, i) =>
      (start + i * step).toFixed(1) + "," + (50 - 44 * (v - lo) / span).toFixed(1)).join(" "));
    row.querySelector("text.hi").textContent = String(+hi.toFixed(2));
    row.querySelector("text.lo").textContent = String(+lo.toFixed(2));
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
    if (typeof r.value === "number") {
      const h = history.get(key(r)) || [];
      h.push(r.value);
      if (h.length > KEEP) h.shift();
      history.set(key(r), h);
      draw(row, h);
    }
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
