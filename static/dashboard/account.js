// The operator's notification choices (kept in this browser).
(function () {
  "use strict";
  function load() {
    try { return JSON.parse(localStorage.getItem("parley.prefs") || "{}"); } catch (e) { return {}; }
  }
  var prefs = load();
  var sound = document.getElementById("pref-sound");
  var notify = document.getElementById("pref-notify");
  if (!sound || !notify) return;
  sound.checked = !!prefs.sound;
  notify.checked = !!prefs.notify;
  function save() { localStorage.setItem("parley.prefs", JSON.stringify(prefs)); }
  sound.addEventListener("change", function () { prefs.sound = sound.checked; save(); });
  notify.addEventListener("change", function () {
    prefs.notify = notify.checked;
    save();
    if (notify.checked && window.Notification && Notification.permission === "default") {
      Notification.requestPermission();
    }
  });
})();
