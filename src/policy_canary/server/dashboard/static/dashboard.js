// policy-canary dashboard: draw the charts, and keep live pages current without reloading.
(function () {
  "use strict";

  function figures(root) {
    var node = root.querySelector("#figures");
    if (!node) return {};
    try { return JSON.parse(node.textContent || "{}"); } catch (e) { return {}; }
  }

  function draw(root) {
    if (typeof window.Plotly === "undefined") return;  // the tables still show every number
    var all = figures(root);
    root.querySelectorAll("[data-figure]").forEach(function (el) {
      var fig = all[el.getAttribute("data-figure")];
      if (!fig) return;
      window.Plotly.react(el, fig.data, fig.layout,
        { responsive: true, displayModeBar: false, staticPlot: false });
      el.setAttribute("data-drawn", String(fig.data.length));
    });
  }

  function openDetails(root) {
    var ids = [];
    root.querySelectorAll("details[id][open]").forEach(function (d) { ids.push(d.id); });
    return ids;
  }

  var refreshing = false, again = false;
  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Live": "1" } })
      .then(function (response) {
        if (response.redirected || !response.ok) { window.location.assign(response.url); return null; }
        return response.text();
      })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var live = document.getElementById("live");
        if (!fresh || !live) return;
        var open = openDetails(live);
        live.innerHTML = fresh.innerHTML;
        open.forEach(function (id) { var d = document.getElementById(id); if (d) d.open = true; });
        draw(live);
        var status = document.getElementById("live-status");
        if (status) status.textContent = "updated " + new Date().toLocaleTimeString();
        document.body.setAttribute("data-refreshed", String(Number(document.body.getAttribute("data-refreshed") || "0") + 1));
      })
      .catch(function () { /* the next change tries again */ })
      .then(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }

  function listen() {
    if (!document.body.hasAttribute("data-live") || typeof EventSource === "undefined") return;
    var seen = null;
    var source = new EventSource("/live");
    source.addEventListener("marker", function (event) {
      if (seen !== null && event.data !== seen) refresh();
      seen = event.data;
      document.body.setAttribute("data-live-connected", "1");
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (the session ended): the page itself goes to the login form.
        window.location.reload();
      }
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    draw(document);
    listen();
  });
})();
