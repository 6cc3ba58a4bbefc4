/* Parley's safe Markdown subset: bold, italics, links (http/https only), bare URLs, lists; headings
 * shown as bold lines. Untrusted text only ever becomes DOM text nodes, never HTML.
 * One renderer for the widget and the dashboard: the server inlines this file into widget.js at its
 * include marker (customers still load one script), and the dashboard loads it as /widget/markdown.js.
 * It defines one name, parleyMarkdown (local to the widget's closure once inlined). */
var parleyMarkdown = (function () {
  "use strict";

  function element(tag, className, text) {
    var el = document.createElement(tag);
    if (className) el.className = className;
    if (text != null) el.textContent = text;
    return el;
  }

  function safeUrl(raw, relativeTo) {
    try {
      var url = new URL(String(raw), relativeTo || undefined);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (e) { return null; }
  }

  function link(href, text) {
    var a = element("a");
    a.setAttribute("href", href);
    a.setAttribute("target", "_blank");
    a.setAttribute("rel", "noopener noreferrer nofollow");
    a.textContent = text;
    return a;
  }

  var INLINE = /\*\*(?!\s)([^*\n]+?)(?<!\s)\*\*|(?<![\w*])\*(?!\s)([^*\n]+?)\*(?![\w*])|(?<!\w)_(?!\s)([^_\n]+?)_(?!\w)|\[([^\]\n]+)\]\(([^)\s]+)\)|(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"])/;

  function inline(parent, text) {
    // A /g regex keeps its position in lastIndex; nested calls (bold inside a link text, italics inside
    // bold) each need their own, or the outer loop restarts from the inner one's position forever.
    var pattern = new RegExp(INLINE.source, "g"), last = 0, m;
    while ((m = pattern.exec(text))) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      if (m[1] != null) inline(parent.appendChild(element("strong")), m[1]);
      else if (m[2] != null || m[3] != null) inline(parent.appendChild(element("em")), m[2] != null ? m[2] : m[3]);
      else if (m[4] != null) {
        var href = /^https?:/i.test(m[5]) ? safeUrl(m[5]) : null;
        parent.appendChild(href ? link(href, m[4]) : document.createTextNode(m[0]));
      } else {
        var bare = safeUrl(m[6]);
        parent.appendChild(bare ? link(bare, m[6]) : document.createTextNode(m[6]));
      }
      last = pattern.lastIndex;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  var LIST_ITEM = /^\s*(?:([-*+•])|(\d{1,3})[.)])\s+(.*)$/;
  // A DocumentFragment of <p>, <ul>/<ol> and <p class="md-h"> for the text.
  function markdown(text) {
    var root = document.createDocumentFragment(), list = null, para = null;
    String(text).split("\n").forEach(function (line) {
      var item = LIST_ITEM.exec(line), heading = /^#{1,6}\s+(.*)$/.exec(line);
      if (!line.trim()) { list = para = null; return; }
      if (item) {
        var kind = item[1] ? "ul" : "ol";
        if (!list || list.tagName.toLowerCase() !== kind) list = root.appendChild(element(kind));
        inline(list.appendChild(element("li")), item[3]);
        para = null;
      } else if (heading) {
        inline(root.appendChild(element("p", "md-h")), heading[1]);
        list = para = null;
      } else if (list && /^\s{2,}/.test(line)) { // an indented continuation of a list item
        inline(list.lastChild, " " + line.trim());
      } else {
        if (para) para.appendChild(element("br")); else para = root.appendChild(element("p"));
        inline(para, line);
        list = null;
      }
    });
    return root;
  }

  return { markdown: markdown, safeUrl: safeUrl, link: link };
})();
