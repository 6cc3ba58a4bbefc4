// The inbox and the conversation view, kept live by the feed (/dashboard/events).
(function () {
  "use strict";
  var P = window.Parley, el = P.el;
  var root = document.getElementById("app");
  var $ = function (id) { return document.getElementById(id); };
  var me = {id: Number(root.dataset.operatorId), name: root.dataset.operatorName};
  var state = {
    status: "all", q: "", site: "", list: [], next: null, listAsked: 0, opened: null, conversation: null,
    lastMessageId: 0, answered: {}, viewers: {}, canned: {}, noteMode: false, listTimer: null,
    listRefreshedAt: 0,
  };
  var LIST_REFRESH_DELAY_MS = 150, LIST_REFRESH_EVERY_MS = 1000;

  // -- the list --------------------------------------------------------------------------------
  function listUrl() {
    return "/dashboard/api/inbox?status=" + encodeURIComponent(state.status) + "&q=" + encodeURIComponent(state.q) +
      (state.site ? "&site=" + encodeURIComponent(state.site) : "");
  }
  // The newest conversations, as many as the tab shows: older pages loaded by hand stay through
  // the live refreshes.
  // Only the answer to the latest request counts: an older one (a refresh that began before an
  // older page arrived) would undo it.
  function loadList() {
    var limit = Math.min(500, Math.max(50, state.list.length));
    var asked = ++state.listAsked;
    return P.api("GET", listUrl() + "&limit=" + limit).then(function (data) {
      if (asked !== state.listAsked) return;
      var before = state.list;
      state.list = data.conversations;
      keepOpenRow(before);
      state.next = data.next;
      renderList();
    }).catch(function () {});
  }
  // The conversation open here keeps its row, where it was, when it leaves the filter (closed,
  // taken over, ...) until another is opened or the filter changes: the operator keeps their place.
  function keepOpenRow(before) {
    var index = before.findIndex(function (c) { return c.id === state.opened; });
    if (index < 0 || state.list.some(function (c) { return c.id === state.opened; })) return;
    state.list.splice(Math.min(index, state.list.length), 0, asOpenNow(before[index]));
  }
  // The open conversation's row with the state the view read (closed, taken over, ...): the view is
  // read again after each of its changes, so it is never behind the list.
  var OPEN_ROW_FIELDS = ["closed", "mode", "handoff", "handoff_why", "assignee_id"];
  function asOpenNow(row) {
    var now = state.conversation;
    if (!now || now.id !== row.id) return row;
    var changed = OPEN_ROW_FIELDS.filter(function (name) { return row[name] !== now[name]; });
    if (!changed.length) return row;
    var fresh = Object.assign({}, row);
    changed.forEach(function (name) { fresh[name] = now[name]; });
    return fresh;
  }
  function newList() { state.list = []; state.next = null; return loadList(); }
  function loadOlder() {
    if (!state.next) return;
    var asked = ++state.listAsked;
    P.api("GET", listUrl() + "&before=" + encodeURIComponent(state.next)).then(function (data) {
      if (asked !== state.listAsked) return;
      var shown = {};
      state.list.forEach(function (c) { shown[c.id] = true; });
      var older = data.conversations.filter(function (c) { return !shown[c.id]; });
      state.list = state.list.concat(older);
      state.next = data.next;
      renderList();
      // The keyboard goes on where the reading does: at the first of the older ones.
      var first = older.length && $("conversation-list").querySelector('a[data-id="' + older[0].id + '"]');
      if (first) first.focus();
    }).catch(function (error) { alert(error.message); });
  }
  // A burst of live events is one refresh, 150 ms after its first; while they keep coming (a busy
  // site) one a second at most. Never "150 ms after the last": on a busy site that never comes.
  function scheduleList() {
    if (state.listTimer) return;
    var wait = Math.max(LIST_REFRESH_DELAY_MS, state.listRefreshedAt + LIST_REFRESH_EVERY_MS - Date.now());
    state.listTimer = setTimeout(function () {
      state.listTimer = null;
      state.listRefreshedAt = Date.now();
      loadList();
    }, wait);
  }
  // A preview is one line of plain text: Markdown's marks (links, emphasis, headings, lists) would
  // only be noise in it.
  function plainText(markdown) {
    return markdown
      .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1")
      .replace(/^\s{0,3}(#{1,6}\s+|>\s?|[-*+]\s+|\d+[.)]\s+)/gm, "")
      .replace(/\*\*|__|`+/g, "")
      .replace(/\s+/g, " ").trim();
  }
  // Why it needs a person, in the server's words (HANDOFF_REASONS); a conversation handed over
  // before reasons were kept has none.
  function needsPerson(c) {
    return "needs a person" + (c.handoff_why ? ": " + c.handoff_why : "");
  }
  function renderList() {
    var list = $("conversation-list");
    // Redrawn on every live event: the link that had the keyboard gets it back.
    var focused = list.contains(document.activeElement) ? document.activeElement.getAttribute("data-id") : null;
    list.textContent = "";
    var unread = 0;
    state.list.forEach(function (c) {
      unread += c.unread;
      var tags = el("span", {className: "tags"}, [
        c.handoff ? el("span", {className: "tag handoff", text: needsPerson(c)}) : null,
        el("span", {className: "tag " + c.mode, text: c.mode === "operator" ? "operator" : "AI"}),
        c.closed ? el("span", {className: "tag", text: "closed"}) : null,
        c.assignee_id ? el("span", {className: "tag", text: c.assignee_id === me.id ? "mine" : "assigned"}) : null,
        state.list.length && c.site_name && root.querySelector("#site-filter") ? el("span", {className: "tag", text: c.site_name}) : null,
      ]);
      var last = c.last_message ? (c.last_message.role === "visitor" ? "" : c.last_message.role + ": ") + plainText(c.last_message.content) : "";
      var link = el("a", {href: "/dashboard/c/" + c.id, "data-id": c.id,
                          "aria-current": state.opened === c.id ? "true" : "false"}, [
        el("span", {className: "name"}, [el("span", {className: "dot" + (c.online ? " online" : ""),
          title: c.online ? "online" : "offline", "aria-label": c.online ? "online" : "offline"}), c.visitor]),
        el("span", {className: "time"}, [P.when(c.updated_at), " ",
          c.unread ? el("span", {className: "unread", "aria-label": c.unread + " unread", text: String(c.unread)}) : null]),
        el("span", {className: "last", text: last}),
        c.page_url ? el("span", {className: "where", text: c.page_title || c.page_url, title: c.page_url}) : null,
        tags,
      ]);
      list.appendChild(el("li", null, [link]));
    });
    if (focused) {
      var again = list.querySelector('a[data-id="' + focused + '"]');
      if (again) again.focus({preventScroll: true});
    }
    $("list-empty").hidden = state.list.length > 0;
    $("list-empty").textContent = root.dataset.noSites ?
      "You answer no site yet: an admin gives you sites on the Operators page, then reload this one." :
      state.q && state.status !== "closed" ?
      "Nothing here matches. Closed conversations are under Closed." : "No conversations here.";
    $("list-more").hidden = !state.next;
    document.title = (unread ? "(" + unread + ") " : "") + "Inbox · Parley";
  }

  // -- one conversation ------------------------------------------------------------------------
  // `fromList`: the operator picked it (click, Enter, j/k); the keyboard moves to its heading,
  // from where Tab reaches its actions.
  function open(id, push, fromList) {
    state.opened = id;
    state.lastMessageId = 0;
    if (push) history.pushState({id: id}, "", "/dashboard/c/" + id);
    root.classList.add("open");
    $("conversation").hidden = false;
    $("details").hidden = false;
    $("messages").textContent = "";
    renderList();
    if (fromList) $("c-title").focus();
    return loadConversation(true).then(function () { sendViewing(); });
  }
  function close() {
    state.opened = null;
    state.conversation = null;
    root.classList.remove("open");
    showDetails(false);
    $("conversation").hidden = true;
    $("details").hidden = true;
    renderList();
  }
  function loadConversation(full) {
    var id = state.opened;
    if (!id) return Promise.resolve();
    var url = "/dashboard/api/conversations/" + id + (full ? "" : "?after=" + state.lastMessageId);
    return P.api("GET", url).then(function (data) {
      if (state.opened !== id) return;
      var streaming = [];
      if (full) {
        // An answer still streaming survives the reload (its text came only through the feed).
        streaming = Array.prototype.slice.call($("messages").querySelectorAll(".streaming"));
        $("messages").textContent = "";
        state.lastMessageId = 0;
        state.conversation = data.conversation;
      } else {
        data.conversation.blocked = state.conversation ? state.conversation.blocked : false;
        state.conversation = data.conversation;
      }
      offerAssignees(data.conversation.site_id);
      if (!full) {
        data.messages.forEach(function (m) {
          if (m.role === "visitor" && m.id > state.lastMessageId) announce(data.conversation.visitor + ": " + (m.content || "an image"));
        });
      }
      if (full && data.earlier) {
        $("messages").appendChild(el("li", {className: "muted earlier", text: "Only the last " + data.messages.length +
          " messages are shown here. Export the visitor's data (the site's page, A visitor's data) for all of them."}));
      }
      data.messages.forEach(addMessage);
      var last = data.messages[data.messages.length - 1];
      if (!last || last.role !== "ai") streaming.forEach(function (bubble) { $("messages").appendChild(bubble); });
      renderHeader();
      // Its row in the list as the view shows it, redrawn only when that changed it.
      var index = state.list.findIndex(function (c) { return c.id === id; });
      var row = index >= 0 ? asOpenNow(state.list[index]) : null;
      if (row && row !== state.list[index]) { state.list[index] = row; renderList(); }
      renderNotes(data.notes);
      var c = state.conversation;
      if (state.lastMessageId > c.read_through) {
        P.api("POST", "/dashboard/api/conversations/" + id + "/read", {through: state.lastMessageId}).catch(function () {});
      }
    }).catch(function (error) {
      if (state.opened === id && full) {
        $("messages").textContent = "";
        $("messages").appendChild(el("li", {className: "muted", text: "This conversation cannot be shown: " + error.message}));
      }
    });
  }
  // What a screen reader says of live changes: the message list itself is redrawn too often
  // (actions, streamed answers) to be a live region.
  function announce(text) { $("announcer").textContent = text.length > 300 ? text.slice(0, 297) + "…" : text; }
  function addMessage(m) {
    if (m.id <= state.lastMessageId) return;
    state.lastMessageId = m.id;
    if (m.role === "ai") {
      var streaming = $("messages").querySelector(".streaming");
      if (streaming) streaming.remove();
    }
    var who = m.role === "visitor" ? (state.conversation ? state.conversation.visitor : "Visitor")
      : m.role === "ai" ? "AI" : m.role === "operator" ? (m.operator_name || "Operator") : "System";
    var sources = (m.sources || []).length ? el("div", {className: "sources"}, ["Sources: "].concat(
      m.sources.map(function (s, i) {
        var item = s.url && /^https?:\/\//.test(s.url) ? el("a", {href: s.url, target: "_blank", rel: "noopener noreferrer", text: s.title})
          : el("span", {text: s.title});
        return i ? el("span", null, [", ", item]) : item;
      }))) : null;
    var image = m.image_url && /^(https?:\/\/|\/)/.test(m.image_url) ? el("img", {src: m.image_url, alt: "Image sent by the visitor"}) : null;
    var item = el("li", {className: "msg " + m.role + (m.status === "interrupted" ? " interrupted" : ""), "data-id": m.id}, [
      el("span", {className: "meta", text: who + " · " + P.when(m.created_at)}),
      image, m.content ? messageText(m.role, m.content) : null, sources,
    ]);
    $("messages").appendChild(item);
    scrollDown();
  }
  // The AI's and operators' words are Markdown, drawn by the widget's own renderer (/widget/markdown.js:
  // DOM text nodes, http(s) links only); a visitor's words stay exactly as typed.
  function messageText(role, content) {
    if (role !== "ai" && role !== "operator") return el("span", {className: "text", text: content});
    var box = el("div", {className: "text md"});
    box.appendChild(parleyMarkdown.markdown(content));
    return box;
  }
  function scrollDown() { var box = $("messages"); box.scrollTop = box.scrollHeight; }
  // The AI's answer while it is made: `chunk` (this server, each piece with its offset) and
  // `answer_progress` (any server, the whole text so far). The longest text seen wins.
  function onAnswer(event) {
    var c = state.conversation;
    var key = event.reply_to || "answer";
    if (!c || event.session_id !== c.session_id || event.site_id !== c.site_id || state.answered[key]) return;
    var bubble = $("messages").querySelector('.streaming[data-reply-to="' + CSS.escape(key) + '"]');
    if (!bubble) {
      bubble = el("li", {className: "msg ai streaming", "data-reply-to": key}, [
        el("span", {className: "meta", text: "AI · answering…"}), el("div", {className: "text md"})]);
      bubble.answerText = "";
      $("messages").appendChild(bubble);
    }
    // The text so far is kept raw (the drawn one has lost its Markdown) and drawn again whole on each
    // piece: the renderer is linear, and an answer is a few KB.
    var current = bubble.answerText, next = current;
    if (event.kind === "answer_progress") {
      if (event.text.length > current.length) next = event.text;
    } else if (event.offset <= current.length) {
      next = current + event.content.slice(current.length - event.offset);
    }
    if (next === current) return;
    bubble.answerText = next;
    bubble.querySelector(".text").replaceChildren(parleyMarkdown.markdown(next));
    scrollDown();
  }
  // An action's button gives way to its opposite (Take over, Hand back...): the keyboard goes with it.
  var OPPOSITES = {"act-takeover": "act-handback", "act-handback": "act-takeover", "act-close": "act-reopen",
                   "act-reopen": "act-close", "act-block": "act-unblock", "act-unblock": "act-block"};
  function renderHeader() {
    var c = state.conversation;
    var focused = document.activeElement;
    $("c-title").textContent = c.visitor;
    $("c-sub").textContent = [c.site_name, c.mode === "operator" ? "an operator is answering" : "the AI is answering",
      c.handoff ? needsPerson(c) : null, c.closed ? "closed" : null, c.online ? "online" : "offline"]
      .filter(Boolean).join(" · ");
    $("act-takeover").hidden = c.mode === "operator";
    $("act-handback").hidden = c.mode !== "operator";
    $("act-close").hidden = c.closed;
    $("act-reopen").hidden = !c.closed;
    $("act-block").hidden = !!c.blocked;
    $("act-unblock").hidden = !c.blocked;
    if (focused && focused.hidden && OPPOSITES[focused.id]) $(OPPOSITES[focused.id]).focus();
    var rows = [["Email", c.email], ["Phone", c.phone], ["Name", c.contact_name], ["Page", c.page_url],
      ["Page title", c.page_title], ["Language", c.lang], ["Browser", c.user_agent], ["IP", c.ip],
      ["First seen", c.created_at], ["Rating", c.rating ? c.rating + " / 5" : null],
      ["Comment", c.rating_comment], ["Blocked", c.blocked ? "yes" : "no"], ["Session", c.session_id]];
    var dl = $("visitor-details");
    dl.textContent = "";
    rows.forEach(function (row) {
      if (row[1] === null || row[1] === undefined || row[1] === "") return;
      dl.appendChild(el("dt", {text: row[0]}));
      dl.appendChild(el("dd", {text: String(row[1])}));
    });
    renderViewers();
  }
  function renderNotes(notes) {
    var list = $("notes");
    list.textContent = "";
    notes.forEach(function (n) {
      list.appendChild(el("li", null, [el("strong", {text: n.author + ": "}), n.content]));
    });
    if (!notes.length) list.appendChild(el("li", {className: "muted", text: "No notes. Notes are never shown to the visitor or the AI."}));
  }

  // -- who else is viewing ---------------------------------------------------------------------
  // Each tab says it is viewing every 20 s; one not heard from for 45 s has gone.
  var VIEWING_EVERY_MS = 20000, VIEWER_GONE_MS = 45000;
  function stillViewing(viewer, now) { return viewer && now - viewer.at < VIEWER_GONE_MS; }
  function sendViewing() {
    if (!state.opened || document.hidden) return;
    P.api("POST", "/dashboard/api/conversations/" + state.opened + "/viewing", {}).catch(function () {});
  }
  function renderViewers() {
    var now = Date.now(), names = [];
    var seen = state.viewers[state.opened] || {};
    Object.keys(seen).forEach(function (id) {
      if (Number(id) !== me.id && stillViewing(seen[id], now)) names.push(seen[id].name);
    });
    $("c-viewers").textContent = names.length ? "Also viewing: " + names.join(", ") : "";
  }
  setInterval(sendViewing, VIEWING_EVERY_MS);
  setInterval(renderViewers, 10000);

  // -- actions ---------------------------------------------------------------------------------
  function act(action, body) {
    var id = state.opened;
    return P.api("POST", "/dashboard/api/conversations/" + id + "/" + action, body || {})
      .then(function (data) { if (state.opened === id) loadConversation(true); scheduleList(); return data; })
      .catch(function (error) { alert(error.message); });
  }
  $("act-takeover").addEventListener("click", function () { act("takeover"); });
  $("act-handback").addEventListener("click", function () { act("handback"); });
  $("act-close").addEventListener("click", function () { act("close"); });
  $("act-reopen").addEventListener("click", function () { act("reopen"); });
  $("act-unblock").addEventListener("click", function () { act("unblock"); });
  // Only operators who may take this site's conversations (admins, and agents of the site).
  function offerAssignees(siteId) {
    Array.prototype.forEach.call($("act-assign").options, function (option) {
      var sites = option.dataset.sites;
      if (sites === undefined) return;
      option.hidden = option.disabled = sites !== "*" && sites.split(" ").indexOf(String(siteId)) < 0;
    });
  }
  $("act-assign").addEventListener("change", function (event) {
    var value = event.target.value;
    event.target.value = "";
    if (!value) return;
    act("assign", {operator_id: value === "me" ? me.id : value === "none" ? null : Number(value)});
  });
  $("act-block").addEventListener("click", function () {
    // Only what is known of this visitor can be blocked.
    var byEmail = $("block-dialog").querySelector('input[name="kinds"][value="email"]');
    byEmail.checked = byEmail.checked && !!state.conversation.email;
    byEmail.closest("label").hidden = !state.conversation.email;
    $("block-dialog").showModal();
  });
  $("block-dialog").addEventListener("close", function () {
    if ($("block-dialog").returnValue !== "block") return;
    var form = $("block-form");
    var kinds = Array.prototype.filter.call(form.querySelectorAll('input[name="kinds"]'), function (i) { return i.checked; })
      .map(function (i) { return i.value; });
    var minutes = form.minutes.value ? Number(form.minutes.value) : null;
    act("block", {kinds: kinds, minutes: minutes, reason: form.reason.value || null});
  });
  $("back").addEventListener("click", function () { close(); history.pushState({}, "", "/dashboard/"); });
  // Narrow screens have no room beside the conversation: the details open over it.
  function showDetails(open) {
    root.classList.toggle("details-open", open);
    $("show-details").setAttribute("aria-expanded", String(open));
  }
  $("show-details").addEventListener("click", function () { showDetails(!root.classList.contains("details-open")); });
  $("hide-details").addEventListener("click", function () { showDetails(false); $("show-details").focus(); });

  // -- the reply box ---------------------------------------------------------------------------
  var reply = $("reply");
  function setNoteMode(on) {
    state.noteMode = on;
    $("mode-note").setAttribute("aria-selected", String(on));
    $("mode-reply").setAttribute("aria-selected", String(!on));
    $("reply-form").classList.toggle("note-mode", on);
    reply.placeholder = on ? "Internal note (never shown to the visitor or the AI)" :
      "Reply… (Enter sends, Shift+Enter new line, / for canned replies)";
    $("send").textContent = on ? "Add note" : "Send";
    reply.focus();
  }
  $("mode-note").addEventListener("click", function () { setNoteMode(true); });
  $("mode-reply").addEventListener("click", function () { setNoteMode(false); });
  function send() {
    var text = reply.value.trim();
    if (!text || !state.opened) return;
    reply.value = "";
    hideCanned();
    var id = state.opened;
    P.api("POST", "/dashboard/api/conversations/" + id + "/" + (state.noteMode ? "note" : "reply"), {text: text})
      .then(function () { if (state.opened === id) loadConversation(false); })
      .catch(function (error) { reply.value = text; alert(error.message); });
  }
  $("reply-form").addEventListener("submit", function (event) { event.preventDefault(); send(); });
  reply.addEventListener("keydown", function (event) {
    var canned = $("canned");
    if (!canned.hidden) {
      var items = canned.querySelectorAll("li"), index = Array.prototype.findIndex.call(items, function (li) { return li.getAttribute("aria-selected") === "true"; });
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        if (items.length) {
          if (index >= 0) items[index].setAttribute("aria-selected", "false");
          index = (index + (event.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
          items[index].setAttribute("aria-selected", "true");
          reply.setAttribute("aria-activedescendant", items[index].id);
        }
        return;
      }
      if (event.key === "Enter" && index >= 0) { event.preventDefault(); insertCanned(items[index].dataset.content); return; }
      if (event.key === "Escape") { event.preventDefault(); hideCanned(); return; }
    }
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(); }
    else if (event.key === "Escape") reply.blur();
  });
  reply.addEventListener("input", function () {
    var match = /^\/(\S*)$/.exec(reply.value);
    if (match && state.conversation) showCanned(match[1].toLowerCase()); else hideCanned();
  });
  function showCanned(prefix) {
    var replies = (state.canned[state.conversation.site_id] || []).filter(function (c) {
      return c.shortcut.toLowerCase().indexOf(prefix) === 0;
    });
    var list = $("canned");
    list.textContent = "";
    replies.forEach(function (c, i) {
      var item = el("li", {role: "option", id: "canned-" + i, "aria-selected": i === 0 ? "true" : "false", "data-content": c.content}, [
        el("strong", {text: "/" + c.shortcut + " "}), c.content]);
      item.addEventListener("mousedown", function (event) { event.preventDefault(); insertCanned(c.content); });
      list.appendChild(item);
    });
    if (!replies.length) list.appendChild(el("li", {className: "muted", role: "option", "aria-disabled": "true", text: "No canned replies for this site yet. An admin adds them with: scripts/server canned add --help"}));
    list.hidden = false;
    if (replies.length) reply.setAttribute("aria-activedescendant", "canned-0");
    else reply.removeAttribute("aria-activedescendant");
  }
  function hideCanned() {
    $("canned").hidden = true;
    reply.removeAttribute("aria-activedescendant");
  }
  function insertCanned(text) { reply.value = text; hideCanned(); reply.focus(); }

  // -- filters, search, navigation -------------------------------------------------------------
  Array.prototype.forEach.call(document.querySelectorAll(".filters button"), function (button) {
    button.addEventListener("click", function () {
      state.status = button.dataset.status;
      Array.prototype.forEach.call(document.querySelectorAll(".filters button"), function (b) {
        b.setAttribute("aria-selected", String(b === button));
      });
      newList();
    });
  });
  var searchTimer = null;
  $("search").addEventListener("input", function () {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(function () { state.q = $("search").value; newList(); }, 250);
  });
  $("search-form").addEventListener("submit", function (event) { event.preventDefault(); state.q = $("search").value; newList(); });
  if ($("site-filter")) $("site-filter").addEventListener("change", function (event) { state.site = event.target.value; newList(); });
  $("conversation-list").addEventListener("click", function (event) {
    var link = event.target.closest("a[data-id]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    open(Number(link.dataset.id), true, true);
  });
  $("list-more").addEventListener("click", loadOlder);
  window.addEventListener("popstate", function () {
    var match = /\/dashboard\/c\/(\d+)/.exec(location.pathname);
    if (match) open(Number(match[1]), false); else close();
  });
  function step(delta) {
    if (!state.list.length) return;
    var index = state.list.findIndex(function (c) { return c.id === state.opened; });
    index = Math.max(0, Math.min(state.list.length - 1, index + delta));
    open(state.list[index].id, true, true);
  }
  document.addEventListener("keydown", function (event) {
    var typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
    if (typing || event.ctrlKey || event.metaKey || event.altKey || document.querySelector("dialog[open]")) return;
    if (P.prefs().noShortcuts) return;  // turned off on the Account page (speech input types letters)
    if (event.key === "j") step(1);
    else if (event.key === "k") step(-1);
    else if (event.key === "r" && state.opened) { event.preventDefault(); setNoteMode(false); }
    else if (event.key === "t" && state.opened && state.conversation && state.conversation.mode !== "operator") act("takeover");
    else if (event.key === "/") { event.preventDefault(); $("search").focus(); }
    else if (event.key === "?") $("help-dialog").showModal();
  });

  // -- live ------------------------------------------------------------------------------------
  function liveState(up) {
    var label = $("live-state");
    label.textContent = up ? "Live" : "Reconnecting…";
    label.classList.toggle("down", !up);
  }
  function onEvent(event) {
    var c = state.conversation;
    var here = c && event.session_id === c.session_id && event.site_id === c.site_id;
    switch (event.kind) {
      case "ready": return;
      case "chunk": case "answer_progress": onAnswer(event); return;
      case "chunks_missed": if (state.opened) loadConversation(false); return;
      case "refetch": loadList(); if (state.opened) loadConversation(true); return;
      case "viewing":
        if (event.conversation_id) {
          var viewers = state.viewers[event.conversation_id] = state.viewers[event.conversation_id] || {};
          var known = stillViewing(viewers[event.operator_id], Date.now());
          viewers[event.operator_id] = {name: event.operator_name, at: Date.now()};
          if (event.conversation_id === state.opened) {
            renderViewers();
            // Someone new opened it: tell them at once that this tab is here too (they answer
            // nobody they already know, so this ends after one round).
            if (!known && event.operator_id !== me.id) sendViewing();
          }
        }
        return;
      case "message":
        if (event.role === "ai" && event.reply_to) {
          state.answered[event.reply_to] = true;
          var done = $("messages").querySelector('.streaming[data-reply-to="' + CSS.escape(event.reply_to) + '"]');
          if (done && !here) done.remove();
        }
        scheduleList();
        if (here) loadConversation(false);
        if (event.role === "visitor" && !(here && !document.hidden)) P.notify("New message", "A visitor wrote.");
        if (event.role === "visitor" && !here) announce("A visitor wrote in another conversation.");
        return;
      case "handoff":
        // Shown at once from the event (the reloads below confirm it from the store).
        state.list.forEach(function (row) {
          if (row.session_id === event.session_id && row.site_id === event.site_id) {
            row.handoff = true; row.handoff_reason = event.reason; row.handoff_why = event.why;
          }
        });
        renderList();
        scheduleList();
        P.notify("A conversation needs a person", event.why ? "Why: " + event.why + "." : "Open the inbox to take over.");
        announce("A conversation needs a person" + (event.why ? ": " + event.why : "") + ".");
        if (here) loadConversation(true);
        return;
      case "seen": case "read":
        scheduleList();
        return;
      default:  // mode, closed, assigned, block, contact, rating, note: the header or details changed
        scheduleList();
        if (here) loadConversation(true);
    }
  }

  P.api("GET", "/dashboard/api/me").then(function (data) { state.canned = data.canned_replies; }).catch(function () {});
  loadList().then(function () {
    if (root.dataset.opened) open(Number(root.dataset.opened), false);
  });
  new P.Feed(root.dataset.cursor, onEvent, liveState);
})();
