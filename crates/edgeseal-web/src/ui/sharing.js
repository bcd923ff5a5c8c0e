// edgeseal sharing page: while a pairing code is shown, watch for the other
// agent to enter it and show the outcome. Without this script the page says
// to reload.
"use strict";
(function () {
  const section = document.getElementById("pairing");
  if (!section || section.dataset.state !== "waiting") return;
  const timer = setInterval(async () => {
    try {
      const r = await fetch("/api/v1/pairing", { headers: { Accept: "application/json" } });
      const p = await r.json();
      if (p.state !== "waiting") {
        clearInterval(timer);
        location.replace("/sharing");
      }
    } catch (e) { /* the agent may be restarting: keep watching */ }
  }, 1000);
})();
