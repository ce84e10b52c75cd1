// jobmill dashboard: confirmation dialogs and live updates. Hand-written, no dependencies.
//
// Live updates: the page's <body data-live-url> names an EventSource endpoint (/ui/events, authenticated
// by the session cookie). Each `job` event updates, in place, every element marked
// data-live-job="<job id>" (jobs table rows, the job page's head): status badge, stage, message,
// progress bar. Status and priority changes also refetch what depends on them (queue positions, list
// membership, the queue counts, the job page's panel) as server-rendered fragments; a `resync` event
// (the stream fell behind) refetches everything.
(function () {
  "use strict";

  var RECENT_LIMIT = 300;
  var eventCounter = 0;
  var recent = []; // [counter, event] of the latest events, re-applied after a fragment is swapped in

  function debounce(fn, ms) {
    var timer = null;
    return function () {
      if (timer !== null) return;
      timer = window.setTimeout(function () {
        timer = null;
        fn();
      }, ms);
    };
  }

  function percent(p) {
    if (p === null || p === undefined) return "";
    return Number.isInteger(p) ? p + "%" : p.toFixed(1) + "%";
  }

  // -- dialogs -----------------------------------------------------------------------------------------

  var deferredPanel = false;

  document.addEventListener("click", function (e) {
    var target = e.target instanceof Element ? e.target : null;
    if (!target) return;
    var opener = target.closest("[data-open-dialog]");
    if (opener) {
      var dialog = document.getElementById(opener.getAttribute("data-open-dialog"));
      if (dialog && typeof dialog.showModal === "function") {
        dialog.showModal();
        var keep = dialog.querySelector("[data-close-dialog]");
        if (keep) keep.focus();
      }
      return;
    }
    var closer = target.closest("[data-close-dialog]");
    if (closer) {
      var parent = closer.closest("dialog");
      if (parent) parent.close();
    }
  });

  document.addEventListener(
    "close",
    function (e) {
      if (e.target instanceof HTMLDialogElement && deferredPanel) {
        deferredPanel = false;
        refreshPanel();
      }
    },
    true
  );

  function dialogOpen() {
    return document.querySelector("dialog[open]") !== null;
  }

  // -- applying events ---------------------------------------------------------------------------------

  function setField(root, name, text) {
    root.querySelectorAll('[data-field="' + name + '"]').forEach(function (node) {
      node.textContent = text;
    });
  }

  function apply(root, ev) {
    root.setAttribute("data-status", ev.status);
    root.querySelectorAll('[data-field="status"]').forEach(function (badge) {
      badge.textContent = ev.status;
      badge.className = "badge badge-" + ev.status;
    });
    setField(root, "stage", ev.stage || "");
    setField(root, "message", ev.message || "");
    root.querySelectorAll('progress[data-field="progress"]').forEach(function (bar) {
      bar.hidden = ev.status === "pending"; // nothing to show until it runs
      if (ev.progress !== null && ev.progress !== undefined) {
        bar.value = ev.progress;
      } else if (ev.status === "running" || ev.status === "cancelling") {
        bar.removeAttribute("value"); // indeterminate
      } else if (ev.status === "completed") {
        bar.value = 100;
      }
    });
    setField(root, "progress-text", percent(ev.progress));
    if (ev.status !== "pending") setField(root, "position", "");
  }

  function applyEverywhere(ev) {
    var selector = '[data-live-job="' + ev.job_id + '"]';
    var found = false;
    document.querySelectorAll(selector).forEach(function (root) {
      apply(root, ev);
      found = true;
    });
    return found;
  }

  // -- fragments ---------------------------------------------------------------------------------------

  function fetchFragment(url, swap) {
    var since = eventCounter;
    return window
      .fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.redirected) {
          window.location.reload(); // the session ended: the page redirects to sign-in
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html === null) return;
        swap(html);
        // Events that arrived while the fragment was on its way are newer than it: apply them again.
        recent.forEach(function (item) {
          if (item[0] > since) applyEverywhere(item[1]);
        });
      })
      .catch(function () {
        /* offline for a moment: the next event or resync tries again */
      });
  }

  function refreshRows() {
    document.querySelectorAll("table[data-live-rows]").forEach(function (table) {
      var body = table.querySelector("tbody[data-rows]");
      if (!body) return;
      fetchFragment(table.getAttribute("data-live-rows"), function (html) {
        body.innerHTML = html;
      });
    });
  }

  function refreshQueues() {
    document.querySelectorAll("[data-live-queues]").forEach(function (box) {
      fetchFragment(box.getAttribute("data-live-queues"), function (html) {
        box.innerHTML = html;
      });
    });
  }

  function refreshPanel() {
    var panel = document.querySelector("[data-job-panel]");
    if (!panel) return;
    if (dialogOpen()) {
      deferredPanel = true; // do not pull a dialog from under the user's pointer
      return;
    }
    fetchFragment(panel.getAttribute("data-job-panel"), function (html) {
      panel.innerHTML = html;
    });
  }

  var scheduleRows = debounce(refreshRows, 400);
  var scheduleQueues = debounce(refreshQueues, 1000);
  var schedulePanel = debounce(refreshPanel, 250);

  function refreshAll() {
    refreshRows();
    refreshQueues();
    refreshPanel();
  }

  function onJobEvent(ev) {
    eventCounter += 1;
    recent.push([eventCounter, ev]);
    if (recent.length > RECENT_LIMIT) recent.shift();
    var shown = applyEverywhere(ev);
    if (ev.type === "status" || ev.type === "priority") {
      // Positions, list membership and counts depend on other jobs too: ask the server.
      scheduleRows();
      scheduleQueues();
      if (shown) schedulePanel();
    }
  }

  // -- the stream --------------------------------------------------------------------------------------

  function setLive(state) {
    var dot = document.querySelector("[data-live-indicator]");
    if (!dot) return;
    dot.hidden = false;
    dot.textContent = state;
    dot.className = "live-dot live-" + state;
  }

  function connect(url) {
    if (!("EventSource" in window)) return;
    var source = new EventSource(url);
    source.addEventListener("open", function () {
      setLive("live");
    });
    source.addEventListener("error", function () {
      if (source.readyState !== EventSource.CLOSED) {
        setLive("reconnecting"); // the browser retries by itself
        return;
      }
      // The server answered with something other than a stream: most likely the session ended.
      setLive("offline");
      window
        .fetch(window.location.href, { credentials: "same-origin" })
        .then(function (response) {
          if (response.redirected) window.location.reload();
        })
        .catch(function () {});
    });
    source.addEventListener("job", function (message) {
      try {
        onJobEvent(JSON.parse(message.data));
      } catch (err) {
        /* a malformed event is skipped */
      }
    });
    source.addEventListener("resync", refreshAll);
    window.addEventListener("pagehide", function () {
      source.close();
    });
  }

  function start() {
    var url = document.body.getAttribute("data-live-url");
    if (url) connect(url);
    if (document.querySelector("[data-live-queues]")) {
      window.setInterval(refreshQueues, 10000); // ages grow without events
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
