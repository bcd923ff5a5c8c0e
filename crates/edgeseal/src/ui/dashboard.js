// edgeseal dashboard: keeps the server-rendered table current from /api/v1/live
// (server-sent events) and draws the last minutes of each stream. The page
// works without this script; it only stops updating.
"use strict";
(function () {
  const rows = document.getElementById("streams");
  const history = new Map(); // key → recent values
  const KEEP = 120;

  function key(r) { return r.device + "/" + r.stream; }

  function cell(row, name) { return row.querySelector("[data-f='" + name + "']"); }

  function rowFor(r) {
    const id = "s-" + key(r).replace(/[^A-Za-z0-9_-]/g, "_");
    let row = document.getElementById(id);
    if (!row) {
      row = document.createElement("tr");
      row.id = id;
      for (const f of ["stream", "origin", "value", "description", "time", "status", "chart"]) {
        const td = document.createElement("td");
        td.dataset.f = f;
        row.appendChild(td);
      }
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("viewBox", "0 0 120 24");
      svg.setAttribute("class", "spark");
      svg.appendChild(document.createElementNS("http://www.w3.org/2000/svg", "polyline"));
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
    const step = 120 / (KEEP - 1), start = 120 - step * (values.length - 1);
    line.setAttribute("points", values.map((v, i) =>
      (start + i * step).toFixed(1) + "," + (22 - 20 * (v - lo) / span).toFixed(1)).join(" "));
  }

  let applied = 0;

  function show(r) {
    const row = rowFor(r);
    rows.dataset.updates = String(++applied); // how many live readings this page has shown
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
  }

  const state = document.getElementById("state");
  const events = new EventSource("/api/v1/live");
  events.addEventListener("reading", (e) => show(JSON.parse(e.data)));
  events.onopen = () => { state.textContent = "live"; state.className = "ok"; };
  events.onerror = () => { state.textContent = "reconnecting…"; state.className = "warn"; };
})();
