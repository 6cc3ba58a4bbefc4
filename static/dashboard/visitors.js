// Visitors online now, refreshed live; a proactive message to any of them.
(function () {
  "use strict";
  var P = window.Parley, el = P.el;
  var root = document.getElementById("visitors-app");
  var timer = null;

  function since(seconds) {
    if (seconds < 60) return Math.round(seconds) + " s";
    if (seconds < 3600) return Math.round(seconds / 60) + " min";
    return Math.round(seconds / 3600) + " h";
  }
  // Rows are kept across refreshes (by conversation): rebuilding them emptied the box an operator
  // was typing in, every 15 s and on every visitor's move.
  var rows = {};

  function newRow(v) {
    var input = el("input", {"aria-label": "Message to " + v.visitor, maxlength: "1000", required: "required",
                             placeholder: "Write to this visitor"});
    var form = el("form", null, [input, el("button", {type: "submit", text: "Send"})]);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (!input.value.trim()) { input.value = ""; input.reportValidity(); return; }
      var row = rows[v.id];
      P.api("POST", "/dashboard/api/proactive", {site_id: row.site_id, session_id: row.session_id, text: input.value})
        .then(function () { input.value = ""; input.placeholder = "Sent."; })
        .catch(function (error) { alert(error.message); });
    });
    var cells = {who: el("td"), site: el("td"), page: el("td", {className: "page-cell"}), since: el("td")};
    var tr = el("tr", null, [cells.who, cells.site, cells.page, cells.since,
                             el("td", null, [el("a", {href: "/dashboard/c/" + v.id, text: "Open"})]),
                             el("td", null, [form])]);
    return {tr: tr, cells: cells};
  }
  function fill(row, v) {
    row.site_id = v.site_id; row.session_id = v.session_id;
    var onSite = (Date.now() - new Date(v.created_at).getTime()) / 1000;
    row.cells.who.replaceChildren(el("span", {className: "dot online", "aria-hidden": "true"}), v.visitor);
    row.cells.site.textContent = v.site_name;
    row.cells.page.replaceChildren.apply(row.cells.page, [v.page_title ? el("div", {text: v.page_title}) : null,
                                         el("div", {className: "muted", text: v.page_url || ""})].filter(Boolean));
    row.cells.since.textContent = since(onSite);
  }
  function load() {
    P.api("GET", "/dashboard/api/visitors").then(function (data) {
      var body = document.getElementById("visitor-rows");
      var kept = {};
      data.visitors.forEach(function (v, index) {
        var row = rows[v.id] || newRow(v);
        fill(row, v);
        kept[v.id] = row;
        // Moved only when out of place: moving a row takes the focus out of its box.
        if (body.children[index] !== row.tr) body.insertBefore(row.tr, body.children[index] || null);
      });
      Object.keys(rows).forEach(function (id) { if (!kept[id]) rows[id].tr.remove(); });
      rows = kept;
      document.getElementById("visitors-empty").hidden = data.visitors.length > 0;
    }).catch(function () {});
  }
  function schedule() { clearTimeout(timer); timer = setTimeout(load, 300); }
  load();
  setInterval(load, 15000);  // someone who left drops off after two minutes
  new P.Feed(root.dataset.cursor, function (event) {
    if (event.kind === "seen" || event.kind === "message" || event.kind === "refetch") schedule();
  }, function (up) { document.getElementById("live-state").textContent = up ? "Live." : "Reconnecting…"; });
})();
