// The operator's notification and keyboard choices (kept in this browser).
(function () {
  "use strict";
  var P = window.Parley;
  var prefs = P.prefs();
  var sound = document.getElementById("pref-sound");
  var notify = document.getElementById("pref-notify");
  var shortcuts = document.getElementById("pref-shortcuts");
  if (!sound || !notify || !shortcuts) return;
  sound.checked = !!prefs.sound;
  notify.checked = !!prefs.notify;
  shortcuts.checked = !prefs.noShortcuts;
  function save() { P.savePrefs(prefs); }
  sound.addEventListener("change", function () { prefs.sound = sound.checked; save(); });
  shortcuts.addEventListener("change", function () { prefs.noShortcuts = !shortcuts.checked; save(); });
  notify.addEventListener("change", function () {
    prefs.notify = notify.checked;
    save();
    if (notify.checked && window.Notification && Notification.permission === "default") {
      Notification.requestPermission();
    }
  });
})();
