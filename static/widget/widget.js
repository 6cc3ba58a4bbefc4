/* Parley chat widget. One script tag, no build step:
 *   <script src="https://chat.example.com/widget/widget.js" data-site-key="sk_..." async></script>
 * Everything renders in a Shadow DOM; the only global is window.Parley. Untrusted text (answers,
 * operator messages, sources) only ever becomes DOM text nodes, never HTML. */
(function () {
  "use strict";
  if (window.Parley && window.Parley.version) return; // the tag was pasted twice

  // An async script still has currentScript while it runs; the query is for odd loaders.
  var script = document.currentScript || document.querySelector("script[data-site-key][src*='widget.js']");
  if (!script || !script.getAttribute("data-site-key")) return;
  var SITE_KEY = script.getAttribute("data-site-key");
  var BASE = String(script.src).replace(/\/widget\/widget\.js(?:[?#].*)?$/, "");
  var API = BASE + "/api/v1/chat/";
  var STORE_KEY = "parley:" + SITE_KEY;
  var HOLD = 25; // seconds a held request waits; below the server's 30 s maximum
  var MAX_TRIES = 5;
  var PHONE = /^\+[0-9]{7,15}$/; // as the API takes it, once spaces and dashes are dropped
  var END_WAIT_MS = 2000; // for the end of an answer's response after its `done` event

  // ---------------------------------------------------------------- words (en, fr, de, es)
  var WORDS = {
    en: {
      open: "Open chat", close: "Close chat", send: "Send", placeholder: "Type your message…",
      attach: "Attach an image", ai: "AI assistant", withOp: "You are chatting with {name}",
      withTeam: "You are chatting with our team", typing: "Typing…", sources: "Sources",
      retry: "Retry", failed: "Sorry, the answer failed.", notSent: "Not sent.",
      offline: "Connection lost. Trying again…", unreachable: "The chat cannot be reached; it will go as soon as it can.", wait: "You are sending messages quickly. Please wait {s} s.",
      blocked: "You can no longer send messages in this chat.",
      emailAsk: "Leave your email so the team can reply even if you leave this page:",
      email: "Email", save: "Save", emailSaved: "Thanks! We will reply to {email}.",
      contact: "Contact details", name: "Name", phone: "Phone", cancel: "Cancel",
      contactSaved: "Thanks, we will be in touch.", needOne: "Please give an email or a phone number.",
      badEmail: "Please check the email address.",
      badPhone: "Please give the phone number with its country code, like +1 555 123 4567.",
      end: "End chat", rateAsk: "How was this chat?", star: "{n} out of 5",
      comment: "Comment (optional)", submit: "Send feedback", skip: "Skip",
      thanks: "Thank you for your feedback!", newChat: "Start a new chat",
      tooBig: "That image is larger than {mb} MB.", notImage: "Only PNG, JPEG, GIF or WebP images can be sent.",
      uploading: "Uploading…", uploadFailed: "The image could not be sent.", sendImage: "Send image",
      remove: "Remove", imageAlt: "Image you sent", interrupted: "(answer interrupted)",
      team: "Team", dismiss: "Dismiss", you: "You", preview: "Image to send", chooseScore: "Choose a score first.",
      away: "We're away right now — back {when}. Our assistant can still help.",
      awayNoTime: "We're away right now. Our assistant can still help.",
      today: "today at {time}", tomorrow: "tomorrow at {time}",
      coming: "A person from the team is coming and will reply here.",
      awayEmailAsk: "Nobody from the team can reply live right now. Leave your email and we'll write back:",
      awaySaved: "Thanks! We'll write back to {email}."
    },
    fr: {
      open: "Ouvrir la discussion", close: "Fermer la discussion", send: "Envoyer",
      placeholder: "Écrivez votre message…", attach: "Joindre une image", ai: "Assistant IA",
      withOp: "Vous discutez avec {name}", withTeam: "Vous discutez avec notre équipe",
      typing: "Écrit…", sources: "Sources", retry: "Réessayer", failed: "Désolé, la réponse a échoué.",
      notSent: "Non envoyé.", offline: "Connexion perdue. Nouvel essai…",
      unreachable: "La discussion est injoignable ; le message partira dès que possible.",
      wait: "Vous envoyez des messages très vite. Merci d'attendre {s} s.",
      blocked: "Vous ne pouvez plus envoyer de messages dans cette discussion.",
      emailAsk: "Laissez votre e-mail pour que l'équipe puisse vous répondre même si vous quittez la page :",
      email: "E-mail", save: "Enregistrer", emailSaved: "Merci ! Nous répondrons à {email}.",
      contact: "Coordonnées", name: "Nom", phone: "Téléphone", cancel: "Annuler",
      contactSaved: "Merci, nous vous recontacterons.", needOne: "Indiquez un e-mail ou un téléphone.",
      badEmail: "Vérifiez l’adresse e-mail.",
      badPhone: "Indiquez le numéro avec l’indicatif du pays, par exemple +33 6 12 34 56 78.",
      end: "Terminer", rateAsk: "Comment s'est passée cette discussion ?", star: "{n} sur 5",
      comment: "Commentaire (facultatif)", submit: "Envoyer l'avis", skip: "Passer",
      thanks: "Merci pour votre avis !", newChat: "Nouvelle discussion",
      tooBig: "Cette image dépasse {mb} Mo.", notImage: "Seules les images PNG, JPEG, GIF ou WebP sont acceptées.",
      uploading: "Envoi…", uploadFailed: "L'image n'a pas pu être envoyée.", sendImage: "Envoyer l'image",
      remove: "Retirer", imageAlt: "Image envoyée", interrupted: "(réponse interrompue)",
      team: "Équipe", dismiss: "Fermer", you: "Vous", preview: "Image à envoyer", chooseScore: "Choisissez d'abord une note.",
      away: "Nous sommes absents pour le moment — de retour {when}. Notre assistant peut quand même vous aider.",
      awayNoTime: "Nous sommes absents pour le moment. Notre assistant peut quand même vous aider.",
      today: "aujourd'hui à {time}", tomorrow: "demain à {time}",
      coming: "Une personne de l'équipe arrive et vous répondra ici.",
      awayEmailAsk: "Personne de l'équipe ne peut répondre en direct pour le moment. Laissez votre e-mail et nous vous écrirons :",
      awaySaved: "Merci ! Nous vous écrirons à {email}."
    },
    de: {
      open: "Chat öffnen", close: "Chat schließen", send: "Senden", placeholder: "Nachricht schreiben…",
      attach: "Bild anhängen", ai: "KI-Assistent", withOp: "Sie chatten mit {name}",
      withTeam: "Sie chatten mit unserem Team", typing: "Schreibt…", sources: "Quellen",
      retry: "Erneut versuchen", failed: "Die Antwort ist leider fehlgeschlagen.", notSent: "Nicht gesendet.",
      offline: "Verbindung verloren. Neuer Versuch…",
      unreachable: "Der Chat ist nicht erreichbar; die Nachricht wird gesendet, sobald es geht.",
      wait: "Sie senden sehr schnell. Bitte warten Sie {s} s.",
      blocked: "Sie können in diesem Chat keine Nachrichten mehr senden.",
      emailAsk: "Hinterlassen Sie Ihre E-Mail-Adresse, damit das Team Ihnen auch später antworten kann:",
      email: "E-Mail", save: "Speichern", emailSaved: "Danke! Wir antworten an {email}.",
      contact: "Kontaktdaten", name: "Name", phone: "Telefon", cancel: "Abbrechen",
      contactSaved: "Danke, wir melden uns.", needOne: "Bitte geben Sie eine E-Mail oder Telefonnummer an.",
      badEmail: "Bitte prüfen Sie die E-Mail-Adresse.",
      badPhone: "Bitte die Nummer mit Ländervorwahl angeben, zum Beispiel +49 30 1234567.",
      end: "Chat beenden", rateAsk: "Wie war dieser Chat?", star: "{n} von 5",
      comment: "Kommentar (optional)", submit: "Feedback senden", skip: "Überspringen",
      thanks: "Danke für Ihr Feedback!", newChat: "Neuen Chat beginnen",
      tooBig: "Das Bild ist größer als {mb} MB.", notImage: "Nur PNG-, JPEG-, GIF- oder WebP-Bilder.",
      uploading: "Wird hochgeladen…", uploadFailed: "Das Bild konnte nicht gesendet werden.",
      sendImage: "Bild senden", remove: "Entfernen", imageAlt: "Gesendetes Bild",
      interrupted: "(Antwort unterbrochen)", team: "Team", dismiss: "Schließen", you: "Sie",
      preview: "Zu sendendes Bild", chooseScore: "Bitte zuerst eine Bewertung wählen.",
      away: "Wir sind gerade nicht da — zurück {when}. Unser Assistent hilft Ihnen trotzdem.",
      awayNoTime: "Wir sind gerade nicht da. Unser Assistent hilft Ihnen trotzdem.",
      today: "heute um {time}", tomorrow: "morgen um {time}",
      coming: "Ein Mensch aus dem Team kommt gleich und antwortet hier.",
      awayEmailAsk: "Gerade kann niemand aus dem Team live antworten. Hinterlassen Sie Ihre E-Mail-Adresse, dann schreiben wir Ihnen:",
      awaySaved: "Danke! Wir schreiben Ihnen an {email}."
    },
    es: {
      open: "Abrir chat", close: "Cerrar chat", send: "Enviar", placeholder: "Escriba su mensaje…",
      attach: "Adjuntar una imagen", ai: "Asistente de IA", withOp: "Está hablando con {name}",
      withTeam: "Está hablando con nuestro equipo", typing: "Escribiendo…", sources: "Fuentes",
      retry: "Reintentar", failed: "Lo siento, la respuesta falló.", notSent: "No enviado.",
      offline: "Conexión perdida. Reintentando…",
      unreachable: "No se puede conectar con el chat; el mensaje saldrá en cuanto se pueda.",
      wait: "Está enviando mensajes muy rápido. Espere {s} s.",
      blocked: "Ya no puede enviar mensajes en este chat.",
      emailAsk: "Déjenos su correo para que el equipo pueda responderle aunque salga de la página:",
      email: "Correo", save: "Guardar", emailSaved: "¡Gracias! Responderemos a {email}.",
      contact: "Datos de contacto", name: "Nombre", phone: "Teléfono", cancel: "Cancelar",
      contactSaved: "Gracias, nos pondremos en contacto.", needOne: "Indique un correo o un teléfono.",
      badEmail: "Revise la dirección de correo.",
      badPhone: "Indique el número con el prefijo del país, por ejemplo +34 612 345 678.",
      end: "Terminar chat", rateAsk: "¿Qué tal fue este chat?", star: "{n} de 5",
      comment: "Comentario (opcional)", submit: "Enviar opinión", skip: "Omitir",
      thanks: "¡Gracias por su opinión!", newChat: "Empezar un chat nuevo",
      tooBig: "La imagen supera {mb} MB.", notImage: "Solo imágenes PNG, JPEG, GIF o WebP.",
      uploading: "Subiendo…", uploadFailed: "No se pudo enviar la imagen.", sendImage: "Enviar imagen",
      remove: "Quitar", imageAlt: "Imagen enviada", interrupted: "(respuesta interrumpida)",
      team: "Equipo", dismiss: "Cerrar", you: "Usted", preview: "Imagen para enviar", chooseScore: "Elija primero una puntuación.",
      away: "Ahora no estamos — volvemos {when}. Nuestro asistente puede ayudarle igualmente.",
      awayNoTime: "Ahora no estamos. Nuestro asistente puede ayudarle igualmente.",
      today: "hoy a las {time}", tomorrow: "mañana a las {time}",
      coming: "Una persona del equipo viene y le responderá aquí.",
      awayEmailAsk: "Ahora nadie del equipo puede responder en directo. Déjenos su correo y le escribiremos:",
      awaySaved: "¡Gracias! Le escribiremos a {email}."
    }
  };

  function pickLang(siteLang) {
    var wanted = [script.getAttribute("data-lang")].concat(navigator.languages || [navigator.language], [siteLang]);
    for (var i = 0; i < wanted.length; i++) {
      var code = String(wanted[i] || "").toLowerCase().split("-")[0];
      if (WORDS[code]) return code;
    }
    return "en";
  }

  var lang = "en";
  function t(key, vars) {
    var text = (WORDS[lang] && WORDS[lang][key]) || WORDS.en[key] || key;
    return text.replace(/\{(\w+)\}/g, function (_, name) { return vars && vars[name] != null ? vars[name] : ""; });
  }

  // ---------------------------------------------------------------- ids and storage
  var ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
  function randomId(length) {
    var bytes = new Uint8Array(length), out = "";
    crypto.getRandomValues(bytes);
    for (var i = 0; i < length; i++) out += ALPHABET[bytes[i] & 63]; // 64 symbols: no modulo bias
    return out;
  }

  // localStorage can throw (blocked storage, sandboxed frames): then the session lives in memory.
  function storageGet(store, key) { try { return window[store].getItem(key); } catch (e) { return null; } }
  function storageSet(store, key, value) {
    try { if (value == null) window[store].removeItem(key); else window[store].setItem(key, value); } catch (e) { /* memory only */ }
  }

  function loadSession() {
    var saved = storageGet("localStorage", STORE_KEY);
    if (saved && /^sess_[A-Za-z0-9_-]{16,64}$/.test(saved)) return saved;
    var fresh = "sess_" + randomId(32);
    storageSet("localStorage", STORE_KEY, fresh);
    return fresh;
  }

  // ---------------------------------------------------------------- HTTP
  function ApiError(status, body, retryAfter) {
    this.name = "ApiError";
    this.status = status;
    this.code = (body && body.code) || (status ? "http_" + status : "network");
    this.message = (body && body.error) || "";
    this.retryAfter = retryAfter;
  }

  function qs(params) {
    var parts = [];
    for (var k in params) if (params[k] != null && params[k] !== "") parts.push(k + "=" + encodeURIComponent(params[k]));
    return parts.join("&");
  }

  function failure(res) {
    var retry = parseInt(res.headers.get("Retry-After") || "", 10);
    return res.json().catch(function () { return null; }).then(function (body) {
      throw new ApiError(res.status, body, isNaN(retry) ? null : retry);
    });
  }

  function request(method, path, params, signal) {
    var init = { method: method, credentials: "omit", signal: signal, headers: {} };
    var url = API + path;
    var ids = { site_key: SITE_KEY, session_id: state.session };
    if (method === "GET") url += "?" + qs(Object.assign(ids, params));
    else {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(Object.assign(ids, params));
    }
    return fetch(url, init).then(function (res) { return res.ok ? res.json() : failure(res); });
  }

  function backoff(attempt) {
    var ceiling = Math.min(30000, 1000 * Math.pow(2, attempt)); // 1 s, 2 s, 4 s … 30 s
    return ceiling / 2 + Math.random() * ceiling / 2; // jitter: thousands of widgets do not retry in step
  }

  // ---------------------------------------------------------------- state
  var state = {
    session: loadSession(),
    config: null,
    lastId: 0, // the history cursor: the highest server message id shown
    seen: {}, // server message ids already shown
    sentMids: {}, // message_ids of visitor messages this page already shows
    unsent: [], // turns that could not reach the server: sent again once it answers
    sentImages: {}, // image URLs this page already shows
    proactiveAfter: 0,
    proactiveSeen: {},
    mode: "ai",
    operatorName: null,
    lastSpeaker: null,
    blocked: false,
    busy: false, // a message is being answered
    open: false,
    hasConversation: false,
    pendingImage: null
  };

  // ---------------------------------------------------------------- DOM helpers (text only)
  function h(tag, attrs, children) {
    var el = document.createElement(tag);
    for (var k in attrs || {}) {
      var v = attrs[k];
      if (v == null || v === false || k === "tag") continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    (children || []).forEach(function (c) { if (c != null) el.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return el;
  }

  var SVG = "http://www.w3.org/2000/svg";
  var ICONS = {
    chat: "M21 12a8 8 0 0 1-11.6 7.1L4 20l1-4.6A8 8 0 1 1 21 12z",
    close: "M6 6l12 12M18 6L6 18",
    send: "M4 12l16-8-6 16-2.5-6.5z",
    attach: "M20 11.5l-8 8a5 5 0 0 1-7-7l8.5-8.5a3.3 3.3 0 0 1 4.7 4.7l-8.4 8.4a1.7 1.7 0 0 1-2.4-2.4L15 7",
    person: "M19 20v-1a4 4 0 0 0-4-4H9a4 4 0 0 0-4 4v1M12 11.5a3.7 3.7 0 1 0 0-7.4 3.7 3.7 0 0 0 0 7.4z",
    star: "M12 3l2.7 5.6 6.1.9-4.4 4.3 1 6.1L12 17l-5.4 2.9 1-6.1-4.4-4.3 6.1-.9z"
  };
  function icon(name) {
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = document.createElementNS(SVG, "path");
    path.setAttribute("d", ICONS[name]);
    svg.appendChild(path);
    return svg;
  }

  // ---------------------------------------------------------------- safe Markdown subset
  // static/widget/markdown.js, inlined here by the server (handlers/pages.py) so the page loads one file.
  /* @include markdown.js */
  var markdown = parleyMarkdown.markdown, safeUrl = parleyMarkdown.safeUrl, link = parleyMarkdown.link;

  // ---------------------------------------------------------------- colours (WCAG AA)
  function rgb(hex) {
    var s = hex.slice(1);
    if (s.length === 3) s = s.replace(/./g, "$&$&");
    return [0, 2, 4].map(function (i) { return parseInt(s.slice(i, i + 2), 16); });
  }
  function luminance(c) {
    var v = c.map(function (x) { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
  }
  function contrast(a, b) {
    var la = luminance(a), lb = luminance(b);
    return (Math.max(la, lb) + 0.05) / (Math.min(la, lb) + 0.05);
  }
  function toHex(c) { return "#" + c.map(function (x) { return ("0" + Math.round(x).toString(16)).slice(-2); }).join(""); }
  // The site's colour as given when text on it can reach 4.5:1, else darkened until white text does.
  function palette(hex) {
    var c = /^#(?:[0-9a-f]{3}|[0-9a-f]{6})$/i.test(hex || "") ? rgb(hex) : rgb("#1f6feb");
    var white = [255, 255, 255], ink = [17, 24, 39];
    if (contrast(c, white) < 4.5 && contrast(c, ink) >= 4.5) return { bg: toHex(c), fg: "#111827", link: "#1d4ed8" };
    while (contrast(c, white) < 4.5) c = c.map(function (x) { return x * 0.9; });
    return { bg: toHex(c), fg: "#ffffff", link: toHex(c) }; // white-text colours also read on white
  }

  // ---------------------------------------------------------------- styles
  var CSS = [
    ":host{all:initial!important;display:block!important;position:static!important;contain:none!important;visibility:visible!important}",
    ".root{all:initial;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1d2430;-webkit-font-smoothing:antialiased}",
    ":where(.root *){box-sizing:border-box;font:inherit;color:inherit;margin:0;padding:0;border:0;background:none;text-align:start;letter-spacing:normal;text-transform:none}",
    ".root [hidden]{display:none!important}",
    "svg{width:22px;height:22px;fill:none;stroke:currentColor;stroke-width:2;stroke-linecap:round;stroke-linejoin:round;display:block}",
    "button{cursor:pointer;border-radius:10px}",
    "button:disabled{cursor:not-allowed;opacity:.55}",
    ":focus-visible{outline:3px solid #111827;outline-offset:2px}",
    ".launcher{position:fixed;bottom:20px;width:60px;height:60px;border-radius:50%;background:var(--pc);color:var(--pt);display:grid;place-items:center;box-shadow:0 6px 20px rgba(0,0,0,.25);z-index:2147483647;transition:transform .15s}",
    ".launcher:hover{transform:scale(1.06)}.launcher svg{width:28px;height:28px}",
    ".launcher:focus-visible{outline-color:var(--pc);outline-offset:3px}",
    ".badge{position:absolute;top:2px;right:2px;width:14px;height:14px;border-radius:50%;background:#d92d20;border:2px solid #fff}",
    ".right .launcher,.right .panel,.right .nudge{right:20px}.left .launcher,.left .panel,.left .nudge{left:20px}",
    ".panel{position:fixed;bottom:92px;width:380px;height:min(600px,calc(100vh - 112px));background:#fff;border-radius:16px;box-shadow:0 12px 40px rgba(16,24,40,.28);display:flex;flex-direction:column;overflow:hidden;z-index:2147483647}",
    "header{background:var(--pc);color:var(--pt);padding:14px 12px 14px 18px;display:flex;align-items:center;gap:6px}",
    "header .who{flex:1;min-width:0}",
    "header h2{font-size:16.5px;font-weight:650;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}",
    ".mode{font-size:13px;display:flex;align-items:center;gap:6px}",
    ".mode::before{content:'';width:8px;height:8px;border-radius:50%;background:currentColor}",
    "header button{color:var(--pt);padding:7px;display:grid;place-items:center}",
    "header button:hover{background:rgba(127,127,127,.22)}header .end{font-size:13px;padding:7px 9px;font-weight:600}",
    "header :focus-visible{outline-color:var(--pt);outline-offset:0}",
    ".log{flex:1;overflow-y:auto;padding:16px 14px;background:#f4f5f7;display:flex;flex-direction:column;gap:10px;overscroll-behavior:contain}",
    ".msg{max-width:86%;padding:9px 13px;border-radius:16px;overflow-wrap:anywhere;white-space:normal}",
    ".msg.bot,.msg.operator{align-self:flex-start;background:#fff;border:1px solid #e1e4e8;border-bottom-left-radius:5px}",
    ".msg.visitor{align-self:flex-end;background:var(--pc);color:var(--pt);border-bottom-right-radius:5px;white-space:pre-wrap}",
    ".msg.system{align-self:center;background:none;color:#4b5563;font-size:13px;text-align:center}",
    ".msg p+p,.msg p+ul,.msg p+ol,.msg ul+p,.msg ol+p{margin-top:7px}",
    ".msg ul,.msg ol{padding-left:20px}.msg ul{list-style:disc}.msg ol{list-style:decimal}.msg li{display:list-item}",
    ".msg strong,.md-h{font-weight:650}.msg em{font-style:italic}",
    ".msg a,.card a{color:var(--pl);text-decoration:underline}.msg.visitor a{color:inherit}",
    ".by{display:block;font-size:12px;font-weight:650;color:#4b5563;margin-bottom:2px}",
    ".src{margin-top:8px;padding-top:7px;border-top:1px solid #e8eaed;font-size:13px}",
    ".src ul{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:4px 12px}",
    ".src b{font-weight:650;color:#4b5563;display:block;margin-bottom:2px}",
    ".note{display:block;font-size:13px;color:#8a1c1c;margin-top:5px}",
    ".msg.visitor .note{color:var(--pt);font-weight:600}",
    ".msg img{display:block;max-width:100%;max-height:220px;border-radius:10px}",
    ".msg.visitor.image{padding:4px;background:#fff;border:1px solid #e1e4e8}",
    ".dots{display:inline-flex;gap:4px;padding:4px 0}.dots i{width:7px;height:7px;border-radius:50%;background:#6b7280;animation:pb 1.2s infinite ease-in-out}",
    ".dots i:nth-child(2){animation-delay:.15s}.dots i:nth-child(3){animation-delay:.3s}",
    "@keyframes pb{0%,80%,100%{opacity:.3;transform:translateY(0)}40%{opacity:1;transform:translateY(-3px)}}",
    "@media (prefers-reduced-motion:reduce){.dots i{animation:none}.launcher{transition:none}}",
    ".btn{background:var(--pc);color:var(--pt);padding:7px 14px;font-weight:600;font-size:14px}",
    ".btn.ghost{background:#fff;color:#1d2430;border:1px solid #c4c9d0}",
    ".row{display:flex;gap:8px;flex-wrap:wrap;align-items:center;margin-top:8px}",
    ".card{align-self:stretch;background:#fff;border:1px solid #e1e4e8;border-radius:14px;padding:13px}",
    ".card label{display:block;font-size:13px;font-weight:600;margin-top:8px}",
    ".card input,.card textarea{display:block;width:100%;margin-top:3px;padding:8px 10px;border:1px solid #9aa1ab;border-radius:9px;background:#fff;font-weight:400}",
    ".card h3{font-weight:650;font-size:15px}",
    ".card .err{color:#b42318;font-size:13px;margin-top:6px}",
    ".stars{display:flex;gap:4px;margin-top:8px}.stars button{color:#6b7280;padding:3px}.stars svg{width:30px;height:30px}",
    ".stars button[aria-pressed=true],.stars .lit{color:#b45309}.stars .lit svg{fill:currentColor}",
    ".away{background:#eef2f9;color:#263246;font-size:13.5px;padding:8px 14px;border-bottom:1px solid #d5dcea}",
    ".notice{background:#fff4e5;color:#7a4100;font-size:13.5px;padding:8px 14px;border-bottom:1px solid #f3d9b1}",
    ".notice button{text-decoration:underline;font-weight:600;margin-left:6px;padding:0 2px}",
    ".blocked{background:#fdecea;color:#8a1c1c;font-size:14px;padding:12px 16px;border-top:1px solid #f4c7c3;font-weight:600}",
    ".preview{display:flex;gap:10px;align-items:center;padding:8px 12px;border-top:1px solid #e8eaed}",
    ".preview img{width:54px;height:54px;object-fit:cover;border-radius:8px;border:1px solid #e1e4e8}",
    ".preview .pv{flex:1;min-width:0;font-size:13px}.preview progress{display:block;width:100%;height:6px;margin-top:4px;accent-color:var(--pc)}",
    "form.composer{display:flex;gap:6px;align-items:flex-end;padding:10px 10px 10px 8px;border-top:1px solid #e8eaed;background:#fff}",
    ".composer textarea{flex:1;resize:none;min-height:42px;max-height:130px;padding:10px 12px;border:1px solid #9aa1ab;border-radius:12px;background:#fff;line-height:1.4}",
    ".composer textarea::placeholder{color:#6b7280}",
    ".composer textarea:focus-visible,.card input:focus-visible,.card textarea:focus-visible{outline:2px solid var(--pl);outline-offset:0;border-color:var(--pl)}",
    ".composer .icon{width:42px;height:42px;display:grid;place-items:center;color:#4b5563;border-radius:12px}",
    ".composer .icon:hover{background:#eef0f3}",
    ".composer .send{background:var(--pc);color:var(--pt)}.composer .send:hover{background:var(--pc)}",
    ".drop{outline:3px dashed var(--pc);outline-offset:-6px}",
    ".nudge{position:fixed;bottom:92px;max-width:280px;background:#fff;color:#1d2430;border-radius:14px;box-shadow:0 8px 28px rgba(16,24,40,.22);padding:12px 36px 12px 14px;z-index:2147483647;border:1px solid #e1e4e8}",
    ".nudge .text{display:block;width:100%;font-size:14.5px;text-align:start;border-radius:6px}",
    ".nudge .by{margin-bottom:3px}",
    ".nudge .x{position:absolute;top:6px;right:6px;padding:4px;color:#4b5563}.nudge .x svg{width:16px;height:16px}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}",
    // High-contrast modes drop backgrounds and shadows: borders keep the panel and controls visible.
    "@media (forced-colors:active){.launcher,.panel,.nudge,.msg:not(.system),.card,.btn,.composer .icon,header button{border:1px solid CanvasText}}",
    "@media (max-width:480px){.panel{inset:0!important;width:100%;height:100%;border-radius:0}.open .launcher{display:none}.nudge{left:16px;right:16px;max-width:none}}"
  ].join("\n");

  // ---------------------------------------------------------------- the UI
  var ui = {};

  // A constructed style sheet applies under a host page's Content-Security-Policy without
  // 'unsafe-inline' for styles, which blocks a <style> element even inside a shadow root.
  function adoptStyles(shadow) {
    try {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      shadow.adoptedStyleSheets = [sheet];
    } catch (e) { // browsers before constructed style sheets (Safari < 16.4)
      shadow.appendChild(h("style", { text: CSS }));
    }
  }

  function build(config) {
    var host = document.createElement("parley-chat"); // not a div: host rules like div{display:none} miss it
    var shadow = host.attachShadow({ mode: "open" });
    var colours = palette(config.color);
    adoptStyles(shadow);
    // dir: every language the widget speaks is left-to-right, whatever the host page's direction.
    var root = shadow.appendChild(h("div", { class: "root " + (config.position === "left" ? "left" : "right"), lang: lang, dir: "ltr" }));
    root.style.setProperty("--pc", colours.bg);
    root.style.setProperty("--pt", colours.fg);
    root.style.setProperty("--pl", colours.link);

    ui.nudgeText = h("button", { type: "button", class: "text", onclick: function () { openPanel(); } });
    ui.nudgeBy = h("span", { class: "by" });
    ui.nudge = root.appendChild(h("div", { class: "nudge", hidden: true, role: "status" }, [
      ui.nudgeBy, ui.nudgeText,
      h("button", { type: "button", class: "x", "aria-label": t("dismiss"), onclick: hideNudge }, [icon("close")])
    ]));
    ui.badge = h("span", { class: "badge", hidden: true });
    ui.launcher = root.appendChild(h("button", {
      type: "button", class: "launcher", "aria-label": t("open"), "aria-expanded": "false",
      onclick: function () { state.open ? closePanel() : openPanel(); }
    }, [icon("chat"), ui.badge]));

    ui.title = h("h2", { text: config.title });
    ui.mode = h("p", { class: "mode" });
    ui.end = h("button", { type: "button", class: "end", text: t("end"), onclick: showRating, hidden: true });
    ui.contactBtn = h("button", { type: "button", "aria-label": t("contact"), title: t("contact"), onclick: showContact }, [icon("person")]);
    ui.notice = h("div", { class: "notice", role: "status", hidden: true });
    ui.away = h("p", { class: "away", role: "status", hidden: true });
    ui.log = h("div", { class: "log", role: "log", "aria-live": "polite", "aria-label": config.title, tabindex: "0" });
    ui.blocked = h("p", { class: "blocked", role: "alert", hidden: true, text: t("blocked") });
    ui.file = h("input", { type: "file", accept: "image/png,image/jpeg,image/gif,image/webp", hidden: true, tabindex: "-1",
      onchange: function () { if (ui.file.files[0]) pickImage(ui.file.files[0]); ui.file.value = ""; } });
    ui.attach = h("button", { type: "button", class: "icon", "aria-label": t("attach"), title: t("attach"),
      onclick: function () { ui.file.click(); } }, [icon("attach")]);
    ui.input = h("textarea", { rows: "1", placeholder: t("placeholder"), "aria-label": t("placeholder"), maxlength: "4000",
      onkeydown: onKey, oninput: grow, onpaste: onPaste });
    ui.send = h("button", { type: "submit", class: "icon send", "aria-label": t("send"), title: t("send") }, [icon("send")]);
    ui.preview = h("div", { class: "preview", hidden: true });
    ui.form = h("form", { class: "composer", onsubmit: function (e) { e.preventDefault(); submit(); } },
      [ui.attach, ui.file, ui.input, ui.send]);
    ui.panel = root.appendChild(h("section", { class: "panel", role: "dialog", "aria-label": config.title, hidden: true,
      onkeydown: function (e) { if (e.key === "Escape") { e.stopPropagation(); closePanel(); } },
      ondragover: onDrag, ondragleave: function () { ui.panel.classList.remove("drop"); }, ondrop: onDrop }, [
      h("header", {}, [
        h("div", { class: "who" }, [ui.title, ui.mode]),
        ui.end, ui.contactBtn,
        h("button", { type: "button", "aria-label": t("close"), title: t("close"), onclick: closePanel }, [icon("close")])
      ]),
      ui.away, ui.notice, ui.log, ui.preview, ui.blocked, ui.form
    ]));
    ui.root = root;
    ui.greeting = ui.log.appendChild(bubble("bot", config.greeting));
    showAvailability();
    updateMode();
    (document.body || document.documentElement).appendChild(host);
  }

  function grow() {
    ui.input.style.height = "auto";
    ui.input.style.height = Math.min(ui.input.scrollHeight + 2, 130) + "px";
  }

  function onKey(e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
  }

  function openPanel() {
    state.open = true;
    if (Date.now() - (state.configAt || 0) > 60000) refreshConfig(); // open or away since the page loaded?
    storageSet("sessionStorage", STORE_KEY + ":open", "1");
    ui.panel.hidden = false;
    ui.root.classList.add("open");
    ui.launcher.setAttribute("aria-expanded", "true");
    ui.launcher.setAttribute("aria-label", t("close"));
    ui.badge.hidden = true;
    hideNudge();
    scrollDown();
    if (!ui.input.disabled) ui.input.focus();
  }

  function closePanel() {
    state.open = false;
    storageSet("sessionStorage", STORE_KEY + ":open", null);
    ui.panel.hidden = true;
    ui.root.classList.remove("open");
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.launcher.setAttribute("aria-label", t("open"));
    ui.launcher.focus();
  }

  function nudge(who, text) {
    if (state.open) return;
    ui.nudgeBy.textContent = who;
    ui.nudgeText.textContent = text.length > 160 ? text.slice(0, 157) + "…" : text;
    ui.nudge.hidden = false;
    ui.badge.hidden = false;
  }
  function hideNudge() { ui.nudge.hidden = true; }

  function scrollDown() { ui.log.scrollTop = ui.log.scrollHeight; }

  function showNotice(text, action, label) {
    ui.notice.textContent = text;
    if (action) ui.notice.appendChild(h("button", { type: "button", text: label, onclick: action }));
    ui.notice.hidden = false;
  }
  function clearNotice() { ui.notice.hidden = true; ui.notice.textContent = ""; }

  // ---------------------------------------------------------------- opening hours
  function loadConfig() {
    return fetch(API + "config?" + qs({ site_key: SITE_KEY }), { credentials: "omit" })
      .then(function (res) { return res.ok ? res.json() : failure(res); });
  }

  function refreshConfig() {
    return loadConfig().then(function (data) {
      Object.assign(state.config, data.config || {});
      state.configAt = Date.now();
      showAvailability();
    }, function () { /* keep what the page loaded with */ });
  }

  // "back Monday 9:00": in the visitor's own time zone, language and way of writing times.
  function whenBack(iso) {
    var at = new Date(iso);
    if (!iso || isNaN(at.getTime())) return null;
    var locale = String(navigator.language || "").toLowerCase().indexOf(lang) === 0 ? navigator.language : lang;
    var time = at.toLocaleTimeString(locale, { hour: "numeric", minute: "2-digit" });
    var day = function (d) { return new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime(); };
    var days = Math.round((day(at) - day(new Date())) / 86400000);
    if (days <= 0) return t("today", { time: time });
    if (days === 1) return t("tomorrow", { time: time });
    var date = at.toLocaleDateString(locale, days < 7 ? { weekday: "long" } : { weekday: "long", day: "numeric", month: "long" });
    return date + " " + time;
  }

  function showAvailability() {
    var config = state.config || {};
    if (!ui.away) return;
    var away = config.open_now === false && state.mode !== "operator"; // a person is here after all
    var when = away && whenBack(config.next_opening);
    ui.away.textContent = !away ? "" : config.away_message || (when ? t("away", { when: when }) : t("awayNoTime"));
    ui.away.hidden = !away;
  }

  // The header says who answers next. Live, a person who has just written counts until the
  // conversation is handed back to the AI; a page opened later goes by the mode alone.
  function setMode(mode, opening) {
    if (!mode) return;
    if (mode === "ai" && (opening || state.mode !== "ai")) state.lastSpeaker = null;
    state.mode = mode;
  }

  function updateMode() {
    showAvailability();
    var human = state.mode === "operator" || state.lastSpeaker === "operator";
    ui.mode.textContent = !human ? t("ai") : state.operatorName ? t("withOp", { name: state.operatorName }) : t("withTeam");
    ui.end.hidden = !state.hasConversation;
  }

  function setBlocked(blocked) {
    state.blocked = blocked;
    ui.blocked.hidden = !blocked;
    ui.form.hidden = blocked;
    [ui.input, ui.send, ui.attach].forEach(function (el) { el.disabled = blocked; });
    if (blocked) { clearPreview(); ui.input.blur(); }
  }

  // ---------------------------------------------------------------- messages
  function bubble(kind, text) {
    var el = h("div", { class: "msg " + kind });
    if (kind === "visitor" || kind === "system") el.textContent = text;
    else el.appendChild(markdown(text));
    return spokenBy(el, kind);
  }

  // Who said it, for screen readers: on screen the bubbles differ only in colour and side. An
  // operator's bubble names them on screen already.
  function spokenBy(el, kind) {
    var who = kind === "visitor" ? t("you") : kind === "bot" ? t("ai") : null;
    if (who) el.insertBefore(h("span", { class: "sr", text: who + ": " }), el.firstChild);
    return el;
  }

  function sourcesBlock(sources) {
    var items = (sources || []).map(function (s) {
      var title = String((s && s.title) || "").slice(0, 200);
      // A relative source URL is a page of this server, not of the page the widget sits on.
      var href = s && s.url ? safeUrl(s.url, BASE + "/") : null;
      return title ? h("li", {}, [href ? link(href, title) : title]) : null;
    }).filter(Boolean);
    return items.length ? h("div", { class: "src" }, [h("b", { text: t("sources") }), h("ul", {}, items)]) : null;
  }

  function imageBubble(url) {
    var href = safeUrl(url);
    if (!href) return null;
    var a = link(href, "");
    var bubble;
    // The image grows its bubble once it has loaded, after the scroll that showed the bubble: the
    // newest message is scrolled into view again then.
    a.appendChild(h("img", { src: href, alt: t("imageAlt"), onload: function () {
      if (bubble.isConnected && !bubble.nextElementSibling) scrollDown();
    } }));
    bubble = spokenBy(h("div", { class: "msg visitor image" }, [a]), "visitor");
    return bubble;
  }

  // A message from the server (history or a live update); false when it was already on screen.
  function showMessage(m) {
    if (!m || typeof m.id !== "number") return false;
    if (m.id > state.lastId) state.lastId = m.id; // even when already shown: the cursor must move on
    if (state.seen[m.id]) return false;
    state.seen[m.id] = true;
    state.hasConversation = true;
    if (m.role === "visitor" && ((m.message_id && state.sentMids[m.message_id]) || (m.image_url && state.sentImages[m.image_url]))) return false;
    var el;
    if (m.role === "visitor" && m.image_url) state.sentImages[m.image_url] = true; // shown once, whoever is first
    if (m.role === "visitor") el = m.image_url ? imageBubble(m.image_url) : bubble("visitor", m.content || "");
    else if (m.role === "system") el = bubble("system", m.content || "");
    else {
      el = bubble(m.role === "operator" ? "operator" : "bot", m.content || "");
      if (m.role === "operator") {
        el.insertBefore(h("span", { class: "by", text: m.operator_name || t("team") }), el.firstChild);
        if (m.operator_name) state.operatorName = m.operator_name;
      }
      var src = sourcesBlock(m.sources);
      if (src) el.appendChild(src);
      if (m.status === "interrupted") el.appendChild(h("span", { class: "note", text: t("interrupted") }));
      state.lastSpeaker = m.role;
    }
    if (el) ui.log.appendChild(el);
    return true;
  }

  function showMessages(list, live) {
    var fresh = (list || []).filter(showMessage);
    updateMode();
    if (fresh.length) scrollDown();
    var last = fresh[fresh.length - 1];
    if (live && last && last.role !== "visitor") {
      nudge(last.role === "operator" ? last.operator_name || t("team") : state.config.title, last.content || "");
    }
  }

  // ---------------------------------------------------------------- held requests
  // A loop that keeps one held GET open, backs off on errors and sleeps while the tab is hidden.
  function Poller(path, params, onData) {
    this.path = path; this.params = params; this.onData = onData;
    this.ctrl = null; this.timer = null; this.attempt = 0; this.quick = 0; this.wanted = false;
  }
  Poller.prototype.start = function () {
    this.wanted = true;
    if (!this.ctrl && !this.timer) this.run();
  };
  // `letFinish`: the held request is left to end by itself, its answer ignored (a request that is
  // about to be answered need not show as a failed one in devtools).
  Poller.prototype.stop = function (letFinish) {
    this.wanted = false;
    clearTimeout(this.timer); this.timer = null;
    if (this.ctrl && !letFinish) this.ctrl.abort();
    this.ctrl = null;
  };
  Poller.prototype.later = function (ms) {
    var self = this;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () { self.timer = null; self.run(); }, ms);
  };
  Poller.prototype.run = function () {
    var self = this;
    if (!this.wanted || document.hidden) return; // resumed by visibilitychange, with the same cursor
    var ctrl = this.ctrl = new AbortController();
    var started = Date.now();
    // After a failure, one quick look first: the server being back is news (a message waiting to
    // go, see historyLoop), and a held request would only say so when its wait ends.
    var wait = this.attempt ? 0 : HOLD;
    request("GET", this.path, Object.assign({ wait: wait }, this.params()), ctrl.signal).then(function (data) {
      if (self.ctrl !== ctrl) return; // stopped meanwhile: a fresher loop owns the cursor
      self.ctrl = null;
      var recovered = self.attempt > 0; // the requests before this one failed
      self.attempt = 0;
      var quiet = !(data && data.messages && data.messages.length);
      self.onData(data, wait ? Date.now() - started : null, recovered);
      // Back at once with nothing new: once is news (a takeover, a block), again and again is a
      // server answering without holding (shutting down): back off as after an error.
      self.quick = quiet && wait && Date.now() - started < 1000 ? self.quick + 1 : 0;
      if (self.quick > 2) self.later(backoff(self.quick - 3)); else self.run();
    }, function (err) {
      if (self.ctrl !== ctrl) return;
      self.ctrl = null;
      if (err.code === "blocked") setBlocked(true);
      var wait = err.retryAfter ? err.retryAfter * 1000 : backoff(self.attempt++);
      self.later(wait);
    });
  };

  // `heldMs`: how long a held read was held (null when it was not held); `recovered`: the reads
  // before this one failed.
  var historyLoop = new Poller("history", function () { return { after: state.lastId || null, limit: 200 }; }, function (data, heldMs, recovered) {
    setMode(data.mode);
    showMessages(data.messages, true);
    if (recovered) resendUnsent(data.messages || []);
    // Back early with nothing new: the server woke us for a takeover or a block.
    if (!(data.messages || []).length && heldMs !== null && heldMs < HOLD * 1000 - 1000) checkBlocked();
  });

  // The server answers again after an outage: a message it already has (its stream broke after it
  // was stored) is sent; one it never got goes now, once by itself (then the Retry button).
  function resendUnsent(messages) {
    var stored = {};
    messages.forEach(function (m) { if (m.message_id) stored[m.message_id] = true; });
    state.unsent = state.unsent.filter(function (turn) {
      if (stored[turn.mid]) { turn.note.remove(); return false; }
      return true;
    });
    var next = state.unsent[0];
    if (next && !next.resent && !state.busy && !state.blocked) { next.resent = true; resend(next); }
  }

  // Where the visitor is: origin and path only. Queries and fragments carry tokens and emails; a site
  // opts in to sending them whole (its full_page_urls setting).
  function pageUrl() {
    var full = state.config && state.config.full_page_urls;
    return String(full ? location.href : location.origin + location.pathname).slice(0, 2000);
  }

  var proactive = new Poller("pending-proactive", function () {
    return { after: state.proactiveAfter || null, page_url: pageUrl() };
  }, function (data) {
    (data.messages || []).forEach(function (p) {
      if (typeof p.id !== "number") return;
      if (p.id > state.proactiveAfter) state.proactiveAfter = p.id; // the next request acknowledges it
      if (state.proactiveSeen[p.id]) return;
      state.proactiveSeen[p.id] = true;
      var el = bubble("operator", p.content || "");
      el.insertBefore(h("span", { class: "by", text: t("team") }), el.firstChild);
      ui.log.appendChild(el);
      scrollDown();
      nudge(t("team"), p.content || "");
    });
  });

  function startLive() {
    if (!state.busy) historyLoop.start();
    proactive.start();
  }

  document.addEventListener("visibilitychange", function () {
    if (!ui.root) return;
    // Hidden: drop the held requests (the server frees them). Visible: resume from the cursors.
    [historyLoop, proactive].forEach(function (p) {
      if (document.hidden) { if (p.ctrl) { p.ctrl.abort(); p.ctrl = null; } clearTimeout(p.timer); p.timer = null; }
      else if (p.wanted) p.start();
    });
    if (!document.hidden) checkBlocked();
  });

  function checkBlocked() {
    return request("GET", "block-status", {}).then(function (data) { setBlocked(!!data.blocked); }, function () {});
  }

  // ---------------------------------------------------------------- sending and streaming
  function submit() {
    var text = ui.input.value.trim();
    if (state.pendingImage) sendImage();
    if (!text || state.busy || state.blocked) return;
    ui.input.value = "";
    grow();
    var mid = "m_" + randomId(20);
    state.sentMids[mid] = true;
    var mine = ui.log.appendChild(bubble("visitor", text));
    scrollDown();
    ask({ mid: mid, text: text, mine: mine });
  }

  // Announced by the log as it is added; the dots are only for the eye.
  function typing() {
    return [h("span", { class: "sr", text: t("typing") }),
      h("span", { class: "dots", "aria-hidden": "true" }, [h("i"), h("i"), h("i")])];
  }

  function typingBubble() { return h("div", { class: "msg bot" }, typing()); }

  function ask(turn) {
    state.busy = true;
    // The stream brings this answer; the history loop resumes after it, deduplicated. Its held
    // request ends by itself as the question is stored.
    historyLoop.stop(true);
    clearNotice();
    turn.tries = 0;
    turn.el = ui.log.appendChild(typingBubble());
    scrollDown();
    attempt(turn);
  }

  function attempt(turn) {
    var text = "", started = false;
    var body = { site_key: SITE_KEY, session_id: state.session, message: turn.text, lang: lang, message_id: turn.mid,
      page_url: pageUrl(), page_title: String(document.title || "").slice(0, 300) };
    fetch(API + "stream", { method: "POST", credentials: "omit", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
      .then(function (res) {
        if (!res.ok) return failure(res);
        var reader = res.body.getReader(), decoder = new TextDecoder(), buffer = "", finished = false, restarting = false;
        function onEvent(ev) {
          if (ev.type === "chunk" && typeof ev.content === "string") {
            if (!started) { started = true; turn.el.classList.add("streaming"); turn.el.setAttribute("aria-busy", "true"); }
            text += ev.content;
            turn.el.textContent = "";
            spokenBy(turn.el, "bot").appendChild(markdown(text));
            scrollDown();
          } else if (ev.type === "error") {
            turn.error = ev.error || t("failed");
            turn.errorCode = ev.code;
          } else if (ev.type === "done") {
            finished = true;
            // The server was restarting mid-answer: ask again with the same id (another process answers).
            if (turn.errorCode === "restarting") {
              restarting = true;
              // Its cut-off text is stored; the live history must not show it beside the full answer.
              if (ev.meta && typeof ev.meta.reply_id === "number") state.seen[ev.meta.reply_id] = true;
            } else finishTurn(turn, text, ev.meta || {});
          }
        }
        function parse(block) { // one SSE event: `data:` lines joined; `:` comments (keepalive) ignored
          var data = [];
          block.split("\n").forEach(function (line) { if (line.slice(0, 5) === "data:") data.push(line.slice(5).replace(/^ /, "")); });
          if (!data.length) return;
          try { onEvent(JSON.parse(data.join("\n"))); } catch (e) { /* a torn event: ignore it */ }
        }
        function pump() {
          return reader.read().then(function (step) {
            if (step.done) {
              if (!finished) throw new ApiError(0, null, null); // cut before `done`: retry the same id
              return;
            }
            buffer = (buffer + decoder.decode(step.value, { stream: true })).replace(/\r\n?/g, "\n");
            var cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) { parse(buffer.slice(0, cut)); buffer = buffer.slice(cut + 2); }
            if (!finished) return pump();
            return readToEnd().then(function () {
              if (restarting) throw new ApiError(503, { code: "restarting" }, null);
            });
          });
        }
        // After `done` the server ends the response: read it to its end rather than cancel it,
        // which browsers show as a failed request. Cancelled only if it does not end soon.
        function readToEnd() {
          var timer;
          var late = new Promise(function (resolve) { timer = setTimeout(resolve, END_WAIT_MS); });
          function rest() { return reader.read().then(function (step) { if (!step.done) return rest(); }); }
          var ended = function () { clearTimeout(timer); };
          return Promise.race([rest(), late.then(function () { return reader.cancel(); })]).then(ended, ended);
        }
        return pump();
      })
      .catch(function (err) { turnFailed(turn, err instanceof ApiError ? err : new ApiError(0, null, null)); });
  }

  function turnFailed(turn, err) {
    // The network, or a server restarting: the server makes a retry of this message_id safe.
    if ((err.status === 0 || err.code === "restarting") && turn.tries < MAX_TRIES) {
      turn.error = null; turn.errorCode = null;
      turn.tries++;
      showNotice(t("offline"));
      turn.el.textContent = "";
      typing().forEach(function (node) { turn.el.appendChild(node); });
      setTimeout(function () { attempt(turn); }, backoff(turn.tries - 1));
      return;
    }
    if (err.status === 429) {
      var seconds = Math.min(err.retryAfter || 10, 300);
      showNotice(t("wait", { s: seconds }));
      setTimeout(function () { clearNotice(); attempt(turn); }, seconds * 1000); // then the same message, once more
      return;
    }
    turn.el.remove();
    state.busy = false;
    if (err.code === "blocked") { setBlocked(true); markFailed(turn, null); }
    else if (err.status === 0) { markFailed(turn, t("unreachable")); state.unsent.push(turn); }
    else markFailed(turn, err.status >= 500 ? t("failed") : err.message || t("failed"));
    clearNotice();
    historyLoop.start();
  }

  function markFailed(turn, sentence) {
    var note = h("span", { class: "note", text: t("notSent") + (sentence ? " " + sentence : "") });
    turn.mine.appendChild(note);
    turn.note = note;
    if (!state.blocked) {
      note.appendChild(document.createTextNode(" "));
      note.appendChild(h("button", { type: "button", class: "btn ghost", text: t("retry"), onclick: function () {
        resend(turn);
      } }));
    }
  }

  function resend(turn) {
    state.unsent = state.unsent.filter(function (other) { return other !== turn; });
    turn.note.remove();
    ask(turn); // the same message_id: if it did reach the server, it is not stored twice
  }

  function finishTurn(turn, text, meta) {
    state.busy = false;
    clearNotice();
    if (typeof meta.reply_id === "number") { state.seen[meta.reply_id] = true; }
    setMode(meta.mode);
    state.hasConversation = true;
    var el = turn.el;
    el.classList.remove("streaming");
    el.removeAttribute("aria-busy");
    if (!text && !turn.error) el.remove(); // operator mode: no AI answer, a person replies
    else {
      if (!text) { el.textContent = ""; spokenBy(el, "bot"); }
      var src = sourcesBlock(meta.sources);
      if (src) el.appendChild(src);
      state.lastSpeaker = "ai";
    }
    if (turn.error) {
      var note = h("span", { class: "note", text: t("failed") + " " });
      note.appendChild(h("button", { type: "button", class: "btn ghost", text: t("retry"), onclick: function () {
        // The same message_id: the server answers a cut-off answer again, without a second
        // question; the new answer takes the cut-off one's place.
        el.remove();
        ask({ mid: turn.mid, text: turn.text, mine: turn.mine });
      } }));
      el.appendChild(note);
    }
    if (meta.handoff) handoff();
    updateMode();
    scrollDown();
    historyLoop.start();
  }

  // ---------------------------------------------------------------- forms: email, contact, rating
  function field(label, attrs) {
    var input = h(attrs.tag || "input", attrs);
    return { input: input, el: h("label", {}, [label, input]) };
  }

  function post(path, body) { return request("POST", path, body); }

  function errorLine(card) {
    var line = card.querySelector(".err") || card.appendChild(h("p", { class: "err", role: "alert" }));
    return function (err) {
      if (err.code === "blocked") setBlocked(true);
      line.textContent = err.status === 429 ? t("wait", { s: err.retryAfter || 10 }) : err.message || t("failed");
    };
  }

  // Away (outside the site's hours, or nobody online): nobody is coming, so the card asks for an
  // email to write back to; otherwise it says a person is coming and asks in case the visitor leaves.
  function askEmail(away) {
    if (ui.log.querySelector(".card.email")) return;
    var email = field(t("email"), { type: "email", autocomplete: "email", required: true, maxlength: "254" });
    var ask = away ? t("awayEmailAsk") : t("coming") + " " + t("emailAsk");
    var card = h("form", { class: "card email", onsubmit: function (e) {
      e.preventDefault();
      post("email", { email: email.input.value.trim() }).then(function () {
        card.textContent = t(away ? "awaySaved" : "emailSaved", { email: email.input.value.trim() });
      }, errorLine(card));
    } }, [h("p", { text: ask }), email.el, h("div", { class: "row" }, [h("button", { type: "submit", class: "btn", text: t("save") })])]);
    ui.log.appendChild(card);
    scrollDown();
  }

  function handoff() {
    // The hours may have ended (or the last operator left) since the page loaded: ask afresh.
    refreshConfig().then(function () { askEmail(state.config.open_now === false); });
  }

  function showContact() {
    var open = ui.log.querySelector(".card.contact");
    if (open) { open.querySelector("input").focus(); return; }
    var name = field(t("name"), { autocomplete: "name", maxlength: "200" });
    var email = field(t("email"), { type: "email", autocomplete: "email", maxlength: "254" });
    var phone = field(t("phone"), { type: "tel", autocomplete: "tel", maxlength: "40", placeholder: "+1 555 123 4567" });
    var card = h("form", { class: "card contact", onsubmit: function (e) {
      e.preventDefault();
      var body = { name: name.input.value.trim(), email: email.input.value.trim(), phone: phone.input.value.trim() };
      var complain = errorLine(card);
      // Checked here too, to say what is wrong in the visitor's words (the API names its fields).
      if (!body.email && !body.phone) return complain({ message: t("needOne") });
      if (body.email && !email.input.checkValidity()) return complain({ message: t("badEmail") });
      if (body.phone && !PHONE.test(body.phone.replace(/[\s-]/g, ""))) return complain({ message: t("badPhone") });
      post("contact", body).then(function () {
        card.textContent = t("contactSaved");
        state.hasConversation = true;
        updateMode();
      }, complain);
    } }, [h("h3", { text: t("contact") }), name.el, email.el, phone.el, h("div", { class: "row" }, [
      h("button", { type: "submit", class: "btn", text: t("save") }),
      h("button", { type: "button", class: "btn ghost", text: t("cancel"), onclick: function () { card.remove(); ui.input.focus(); } })
    ])]);
    ui.log.appendChild(card);
    scrollDown();
    name.input.focus();
  }

  function showRating() {
    if (ui.log.querySelector(".card.rate")) return;
    var score = 0, stars = [];
    var comment = field(t("comment"), { tag: "textarea", rows: "2", maxlength: "2000" });
    function pick(n) {
      score = n;
      stars.forEach(function (b, i) { b.setAttribute("aria-pressed", String(i < n)); b.classList.toggle("lit", i < n); });
    }
    for (var i = 1; i <= 5; i++) {
      stars.push(h("button", { type: "button", "aria-label": t("star", { n: i }), "aria-pressed": "false",
        onclick: pick.bind(null, i) }, [icon("star")]));
    }
    var heading = h("h3", { text: t("rateAsk"), tabindex: "-1" });
    var card = h("form", { class: "card rate", onsubmit: function (e) {
      e.preventDefault();
      if (!score) return errorLine(card)({ message: t("chooseScore") });
      var text = comment.input.value.trim();
      post("rate", { score: score }).then(function () {
        return text ? post("rate/comment", { comment: text }) : null;
      }).then(function () {
        card.textContent = "";
        card.appendChild(h("p", { text: t("thanks") }));
        card.appendChild(h("div", { class: "row" }, [h("button", { type: "button", class: "btn", text: t("newChat"), onclick: newChat })]));
        historyLoop.stop(); proactive.stop(); // this conversation is over
        ui.form.hidden = true;
        card.querySelector("button").focus();
      }, errorLine(card));
    } }, [heading, h("div", { class: "stars", role: "group", "aria-label": t("rateAsk") }, stars), comment.el,
      h("div", { class: "row" }, [
        h("button", { type: "submit", class: "btn", text: t("submit") }),
        h("button", { type: "button", class: "btn ghost", text: t("skip"), onclick: function () { card.remove(); ui.input.focus(); } })
      ])]);
    ui.log.appendChild(card);
    scrollDown();
    // The question first, not a score: Enter on a focused star would give that score.
    heading.focus();
  }

  function newChat() {
    historyLoop.stop(); proactive.stop();
    state.session = "sess_" + randomId(32);
    storageSet("localStorage", STORE_KEY, state.session);
    Object.assign(state, { lastId: 0, seen: {}, sentMids: {}, sentImages: {}, proactiveAfter: 0, proactiveSeen: {},
      mode: "ai", operatorName: null, lastSpeaker: null, hasConversation: false, unsent: [] });
    ui.log.textContent = "";
    ui.log.appendChild(ui.greeting);
    ui.form.hidden = false;
    updateMode();
    startLive();
    ui.input.focus();
  }

  // ---------------------------------------------------------------- images
  var IMAGE_TYPES = /^image\/(png|jpeg|gif|webp)$/;
  function onPaste(e) {
    var file = e.clipboardData && e.clipboardData.files && e.clipboardData.files[0];
    if (file) { e.preventDefault(); pickImage(file); }
  }
  function onDrag(e) {
    if (state.blocked || !e.dataTransfer || Array.prototype.indexOf.call(e.dataTransfer.types, "Files") < 0) return;
    e.preventDefault();
    ui.panel.classList.add("drop");
  }
  function onDrop(e) {
    ui.panel.classList.remove("drop");
    var file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) { e.preventDefault(); pickImage(file); }
  }

  function clearPreview() {
    if (state.pendingImage) URL.revokeObjectURL(state.pendingImage.url);
    state.pendingImage = null;
    ui.preview.hidden = true;
    ui.preview.textContent = "";
  }

  function pickImage(file) {
    if (state.blocked) return;
    var limit = state.config.upload_max_bytes || 5 * 1024 * 1024;
    if (!IMAGE_TYPES.test(file.type)) return showNotice(t("notImage"));
    if (file.size > limit) return showNotice(t("tooBig", { mb: Math.round(limit / 1048576) }));
    clearNotice();
    clearPreview();
    var url = URL.createObjectURL(file);
    state.pendingImage = { file: file, url: url };
    ui.progress = h("progress", { max: "100", value: "0", hidden: true, "aria-label": t("uploading") });
    ui.previewText = h("span", { text: file.name || t("preview") });
    ui.preview.appendChild(h("img", { src: url, alt: t("preview") }));
    ui.preview.appendChild(h("div", { class: "pv" }, [ui.previewText, ui.progress]));
    ui.preview.appendChild(h("button", { type: "button", class: "btn", text: t("sendImage"), onclick: sendImage }));
    ui.preview.appendChild(h("button", { type: "button", class: "btn ghost", text: t("remove"), onclick: clearPreview }));
    ui.preview.hidden = false;
    ui.preview.querySelector(".btn").focus();
  }

  // XMLHttpRequest, not fetch: only it reports upload progress.
  function sendImage() {
    var pending = state.pendingImage;
    if (!pending || pending.sending) return;
    pending.sending = true;
    var data = new FormData();
    data.append("site_key", SITE_KEY);
    data.append("session_id", state.session);
    data.append("image", pending.file, pending.file.name || "image");
    var xhr = new XMLHttpRequest();
    // The ids in the query string too: the server checks the site and session before it reads
    // the image, and refuses an upload it would not keep without receiving megabytes first.
    xhr.open("POST", API + "upload-image?" + qs({ site_key: SITE_KEY, session_id: state.session }));
    ui.progress.hidden = false;
    ui.previewText.textContent = t("uploading");
    Array.prototype.forEach.call(ui.preview.querySelectorAll("button"), function (b) { b.disabled = true; });
    xhr.upload.onprogress = function (e) { if (e.lengthComputable) ui.progress.value = Math.round(100 * e.loaded / e.total); };
    xhr.onload = function () {
      var body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status === 200 && body && body.url) {
        // The history loop brings the same URL, sometimes before this answer: shown once.
        if (!state.sentImages[body.url]) {
          state.sentImages[body.url] = true;
          var el = imageBubble(body.url);
          if (el) ui.log.appendChild(el);
        }
        state.hasConversation = true;
        updateMode();
        clearPreview();
        scrollDown();
      } else uploadFailed(new ApiError(xhr.status, body, parseInt(xhr.getResponseHeader("Retry-After") || "", 10) || null));
    };
    xhr.onerror = function () { uploadFailed(new ApiError(0, null, null)); };
    xhr.send(data);
  }

  function uploadFailed(err) {
    if (err.code === "blocked") { setBlocked(true); return; }
    clearPreview();
    showNotice(err.status === 429 ? t("wait", { s: err.retryAfter || 10 }) : t("uploadFailed") + (err.message ? " " + err.message : ""));
  }

  // ---------------------------------------------------------------- start
  function start() {
    loadConfig()
      .then(function (data) {
        state.config = data.config || {};
        state.configAt = Date.now();
        lang = pickLang(state.config.lang);
        build(state.config);
        if (storageGet("sessionStorage", STORE_KEY + ":open")) openPanel();
        return request("GET", "history", { limit: 200 }).then(function (data) {
          showMessages(data.messages, false);
          setMode(data.mode || "ai", true);
          updateMode();
          if (data.ask_email) askEmail(state.config.open_now === false); // a handoff's ask survives a reload
        }, function () { /* the live loop catches up */ });
      })
      .then(function () {
        if (!ui.root) return;
        checkBlocked();
        startLive();
      })
      .catch(function (err) {
        // A wrong site_key or origin is the site owner's to fix; say it once, quietly.
        console.warn("Parley: the chat widget could not start (" + (err && (err.code || err.message)) + ").");
      });
  }

  window.Parley = {
    version: "1.0.0",
    open: function () { if (ui.root) openPanel(); },
    close: function () { if (ui.root) closePanel(); },
    get sessionId() { return state.session; },
    // The widget's own Markdown renderer, so a page (or a test) can see exactly what a message becomes.
    renderMarkdown: function (text) { return markdown(text); }
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
