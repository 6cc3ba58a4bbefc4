// Parley dashboard: what every page shares. No build step, no framework: the DOM is built with
// textContent only, so visitor text is never parsed as HTML.
(function () {
  "use strict";
  var xsrf = (document.querySelector('meta[name="xsrf-token"]') || {}).content || "";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        var value = attrs[key];
        if (value === null || value === undefined || value === false) return;
        if (key === "text") node.textContent = value;
        else if (key === "className") node.className = value;
        else node.setAttribute(key, value === true ? "" : value);
      });
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function api(method, url, body) {
    var options = {method: method, credentials: "same-origin", headers: {"X-XSRFToken": xsrf}};
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then(function (response) {
      if (response.status === 401) {
        window.location.href = "/dashboard/login?next=" + encodeURIComponent(window.location.pathname);
        throw new Error("signed out");
      }
      return response.json().catch(function () { return {success: false, error: "Bad response"}; })
        .then(function (data) {
          if (!response.ok || !data.success) throw new Error(data.error || ("HTTP " + response.status));
          return data;
        });
    });
  }

  function when(iso) {
    if (!iso) return "";
    var date = new Date(iso);
    var seconds = (Date.now() - date.getTime()) / 1000;
    if (seconds < 60) return "now";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 86400) return date.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
    return date.toLocaleDateString();
  }

  // One live feed per tab. EventSource reconnects by itself and sends Last-Event-ID; when the
  // server answers an error instead (it was restarting), we reopen it ourselves from the last id.
  function Feed(startAfter, onEvent, onState) {
    this.lastId = startAfter;
    this.onEvent = onEvent;
    this.onState = onState;
    this.retry = 1000;
    this.open();
  }
  Feed.prototype.open = function () {
    var self = this;
    var source = new EventSource("/dashboard/events?after=" + encodeURIComponent(this.lastId || ""));
    this.source = source;
    source.onopen = function () { self.retry = 1000; self.onState(true); };
    source.onmessage = function (message) {
      if (message.lastEventId) self.lastId = message.lastEventId;
      var data;
      try { data = JSON.parse(message.data); } catch (e) { return; }
      self.onEvent(data);
    };
    source.onerror = function () {
      self.onState(false);
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(function () { self.open(); }, self.retry);
        self.retry = Math.min(self.retry * 2, 15000);
      }
    };
  };

  function prefs() {
    try { return JSON.parse(localStorage.getItem("parley.prefs") || "{}"); } catch (e) { return {}; }
  }
  function savePrefs(value) { localStorage.setItem("parley.prefs", JSON.stringify(value)); }

  function beep() {
    try {
      var context = new (window.AudioContext || window.webkitAudioContext)();
      var tone = context.createOscillator();
      var gain = context.createGain();
      tone.frequency.value = 880;
      gain.gain.setValueAtTime(0.15, context.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.001, context.currentTime + 0.35);
      tone.connect(gain).connect(context.destination);
      tone.start();
      tone.stop(context.currentTime + 0.35);
    } catch (e) { /* no audio: nothing to do */ }
  }

  function notify(title, body) {
    var p = prefs();
    if (p.sound) beep();
    if (p.notify && window.Notification && Notification.permission === "granted" && document.hidden) {
      new Notification(title, {body: body});
    }
  }

  window.Parley = {el: el, api: api, when: when, Feed: Feed, prefs: prefs, savePrefs: savePrefs,
                   notify: notify};
})();
