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
  function load() {
    P.api("GET", "/dashboard/api/visitors").then(function (data) {
      var body = document.getElementById("visitor-rows");
      body.textContent = "";
      data.visitors.forEach(function (v) {
        var onSite = (Date.now() - new Date(v.created_at).getTime()) / 1000;
        var input = el("input", {"aria-label": "Message to " + v.visitor, maxlength: "1000", placeholder: "Need a hand?"});
        var form = el("form", null, [input, el("button", {type: "submit", text: "Send"})]);
        form.addEventListener("submit", function (event) {
          event.preventDefault();
          if (!input.value.trim()) return;
          P.api("POST", "/dashboard/api/proactive", {site_id: v.site_id, session_id: v.session_id, text: input.value})
            .then(function () { input.value = ""; input.placeholder = "Sent."; })
            .catch(function (error) { alert(error.message); });
        });
        body.appendChild(el("tr", null, [
          el("td", null, [el("span", {className: "dot online", "aria-hidden": "true"}), v.visitor]),
          el("td", {text: v.site_name}),
          el("td", {className: "page-cell"}, [v.page_title ? el("div", {text: v.page_title}) : null, el("div", {className: "muted", text: v.page_url || ""})]),
          el("td", {text: since(onSite)}),
          el("td", null, [el("a", {href: "/dashboard/c/" + v.id, text: "Open"})]),
          el("td", null, [form]),
        ]));
      });
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
