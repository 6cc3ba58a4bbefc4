// Parley dashboard, knowledge page: fetches running in the background show their progress and
// errors live (a small JSON poll, each request with a timeout, the polling itself bounded), and a
// file over the upload limit is refused before it is sent.
(function () {
  "use strict";
  var EVERY_MS = 1500, REQUEST_MS = 10000, GIVE_UP_MS = 20 * 60 * 1000;

  var upload = document.getElementById("file");
  if (upload) {
    upload.form.addEventListener("submit", function (event) {
      var file = upload.files[0], limit = Number(upload.dataset.maxBytes);
      var problem = document.getElementById("upload-problem");
      if (file && limit && file.size > limit) {
        event.preventDefault();
        problem.textContent = file.name + " is larger than " + Math.round(limit / 1048576) + " MB.";
      } else {
        problem.textContent = "";
      }
    });
  }

  // Try the assistant: the answer drawn as the widget draws it (/widget/markdown.js).
  var answer = document.querySelector(".tried-answer");
  if (answer) {
    answer.classList.add("md");
    answer.replaceChildren(parleyMarkdown.markdown(answer.textContent));
  }

  var list = document.getElementById("jobs");
  if (!list || list.dataset.fetching !== "1") return;
  var status = document.getElementById("jobs-status");
  var started = Date.now();

  function line(job) {
    var item = document.createElement("li");
    item.appendChild(document.createTextNode(job.url + ": "));
    var state = document.createElement("strong");
    state.textContent = job.state;
    item.appendChild(state);
    var progress = job.total ? " " + job.done + " of " + job.total + " page(s)" : "";
    item.appendChild(document.createTextNode(progress + (job.message ? " · " + job.message : "")));
    if (job.errors.length) {
      var errors = document.createElement("ul");
      errors.className = "job-errors";
      job.errors.forEach(function (text) {
        var error = document.createElement("li");
        error.textContent = text;
        errors.appendChild(error);
      });
      item.appendChild(errors);
    }
    return item;
  }

  function poll() {
    var controller = new AbortController();
    var timer = setTimeout(function () { controller.abort(); }, REQUEST_MS);
    fetch(list.dataset.source, {credentials: "same-origin", signal: controller.signal,
                                headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        list.replaceChildren.apply(list, data.jobs.map(line));
        if (data.fetching && Date.now() - started < GIVE_UP_MS) {
          status.textContent = "Fetching…";
          setTimeout(poll, EVERY_MS);
        } else if (data.fetching) {
          status.textContent = "Still fetching: reload later to see how it ends.";
        } else {
          status.textContent = "Done. ";
          var more = document.createElement("a");
          more.href = window.location.pathname;
          more.textContent = "Show the documents now";
          status.appendChild(more);
        }
      })
      .catch(function (error) {
        status.textContent = "Live progress stopped (" + error.message + "): reload to see the state.";
      })
      .finally(function () { clearTimeout(timer); });
  }
  poll();
})();
