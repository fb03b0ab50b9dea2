// Hodei dashboard: makes the server-rendered pages live through the API.
// Plain JavaScript, no dependencies. Every piece of data is inserted with
// textContent (never as HTML). Served after ansi.js, in one script.
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out", "lost"]);

  // el("a", {href: "/x", class: "c"}, "text", child...)
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, String(v));
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // The same formats as the server (dashboard/views.rs).
  function fmtDuration(ms) {
    ms = Math.max(0, Math.round(ms));
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    if (ms < 3600000) return Math.floor(ms / 60000) + " m " + String(Math.floor((ms % 60000) / 1000)).padStart(2, "0") + " s";
    return Math.floor(ms / 3600000) + " h " + String(Math.floor((ms % 3600000) / 60000)).padStart(2, "0") + " m";
  }
  function fmtAgo(ms) {
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < 2) return "just now";
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return new Date(ms).toLocaleDateString();
  }
  function timeEl(ms) {
    return el("time", { "data-ms": ms }, fmtAgo(ms));
  }
  function exitText(job) {
    if (job.exit_code !== null && job.exit_code !== undefined) return String(job.exit_code);
    if (job.signal !== null && job.signal !== undefined) return "signal " + job.signal;
    return "";
  }
  // How far a job has got. Events arrive in order and always apply; a
  // fetched snapshot can be older than an event already shown, so a
  // snapshot that is behind what is shown is ignored.
  const STATE_RANK = { queued: 0, assigned: 1, running: 2 };
  function progress(job) {
    return job.attempt * 10 + (job.state in STATE_RANK ? STATE_RANK[job.state] : 3);
  }
  function runTime(job) {
    if (!job.started_at) return "";
    return fmtDuration((job.finished_at || Date.now()) - job.started_at);
  }

  // Relative times and running durations tick every second.
  function tick() {
    for (const t of $$("time[data-ms]")) {
      const ms = Number(t.dataset.ms);
      t.textContent = fmtAgo(ms);
      t.title = new Date(ms).toLocaleString();
    }
    for (const td of $$("td.dur")) {
      const started = Number(td.dataset.started);
      if (started && !td.dataset.finished) td.textContent = fmtDuration(Date.now() - started);
    }
  }

  function setLive(on) {
    const dot = $("#live");
    if (dot) dot.classList.toggle("on", on);
  }

  // An EventSource with JSON handlers; the browser reconnects by itself.
  function subscribe(url, handlers) {
    const es = new EventSource(url);
    es.addEventListener("open", () => setLive(true));
    // The event stream is subscribed: changes from now on are shown.
    es.addEventListener("ready", () => { document.body.dataset.live = "true"; });
    es.addEventListener("error", (e) => {
      if (e.data) {
        if (handlers.failure) handlers.failure(e.data);
      } else {
        setLive(false);
      }
    });
    for (const [name, fn] of Object.entries(handlers)) {
      if (name === "failure") continue;
      es.addEventListener(name, (e) => fn(e.data ? JSON.parse(e.data) : null));
    }
    return es;
  }

  function throttle(fn, ms) {
    let timer = null;
    let again = false;
    return function run() {
      if (timer) {
        again = true;
        return;
      }
      fn();
      timer = setTimeout(() => {
        timer = null;
        if (again) {
          again = false;
          run();
        }
      }, ms);
    };
  }

  // The session's CSRF token (a SameSite=Strict cookie the server set at
  // sign-in): state-changing requests must send it back as a header.
  function csrfToken() {
    const m = document.cookie.match(/(?:^|;\s*)hodei_csrf=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  async function api(method, path) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
    const resp = await fetch(path, { method, headers, credentials: "same-origin" });
    const text = await resp.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (e) {
      body = { message: text };
    }
    if (!resp.ok) throw new Error((body && body.message) || resp.statusText);
    return body;
  }

  // ---- jobs tables (jobs page and overview) ----------------------------
  function jobRow(job) {
    const worker = job.worker ? el("a", { href: "/ui/jobs?worker=" + encodeURIComponent(job.worker) }, job.worker) : null;
    return el("tr", { "data-id": job.id, "data-seq": job.seq, "data-progress": progress(job) },
      el("td", { class: "id" }, el("a", { href: "/ui/jobs/" + encodeURIComponent(job.id) }, job.id)),
      el("td", { class: "name" }, job.spec.name),
      el("td", {}, el("span", { class: "badge st-" + job.state }, job.state)),
      el("td", { class: "opt" }, worker),
      el("td", { class: "opt num" }, job.attempt),
      el("td", { class: "opt" }, timeEl(job.created_at)),
      el("td", { class: "num dur", "data-started": job.started_at || "", "data-finished": job.finished_at || "" }, runTime(job)),
      el("td", { class: "num exit" }, exitText(job)));
  }

  function jobsTable() {
    const box = $("#jobs");
    const body = $("#job-rows");
    if (!box || !body) return;
    const f = box.dataset;
    const pageSize = Number(f.pageSize) || 50;
    const firstPage = f.firstPage === "true";
    const matches = (job) =>
      (!f.state || job.state === f.state) &&
      (!f.label || job.spec.labels.includes(f.label)) &&
      (!f.worker || job.worker === f.worker) &&
      (!f.namePrefix || job.spec.name.startsWith(f.namePrefix));
    const showEmpty = () => {
      const empty = $("#no-jobs");
      if (empty) empty.hidden = body.children.length > 0;
    };
    const newest = () => Math.max(0, ...$$("tr[data-seq]", body).map((r) => Number(r.dataset.seq)));
    function onJob(job) {
      const row = $("tr[data-id=\"" + CSS.escape(job.id) + "\"]", body);
      if (!matches(job)) {
        if (row) row.remove();
      } else if (row) {
        row.replaceWith(jobRow(job));
      } else if (firstPage && job.seq > newest()) {
        const fresh = jobRow(job);
        fresh.classList.add("flash");
        body.prepend(fresh);
        while (body.children.length > pageSize) body.lastElementChild.remove();
      }
      showEmpty();
    }
    // On (re)subscription, reload the first page: nothing is missed between
    // the page render and the subscription, or while disconnected.
    async function reload() {
      if (!firstPage) return;
      const q = new URLSearchParams({ limit: String(pageSize) });
      if (f.state) q.set("state", f.state);
      if (f.label) q.set("label", f.label);
      if (f.worker) q.set("worker", f.worker);
      if (f.namePrefix) q.set("name_prefix", f.namePrefix);
      try {
        const page = await api("GET", "/api/v1/jobs?" + q);
        const shown = new Map($$("tr[data-id]", body).map((r) => [r.dataset.id, r]));
        body.replaceChildren(...page.jobs.map((job) => {
          const row = shown.get(job.id);
          return row && Number(row.dataset.progress) > progress(job) ? row : jobRow(job);
        }));
        showEmpty();
      } catch (e) {
        /* keep what is shown */
      }
    }
    return { onJob, reload };
  }

  // ---- overview -------------------------------------------------------
  // Drawn in the SVG's own pixel size, so text keeps its size at any width.
  function drawChart(svg, minutes) {
    const W = Math.max(240, Math.round(svg.getBoundingClientRect().width) || 640);
    const H = 180, left = 34, bottom = 20, top = 8;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    const plotH = H - bottom - top;
    const max = Math.max(1, ...minutes.map((m) => m.succeeded + m.failed + m.cancelled));
    const step = (W - left) / Math.max(1, minutes.length);
    const ns = "http://www.w3.org/2000/svg";
    const node = (tag, attrs, text) => {
      const n = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
      if (text !== undefined) n.textContent = text;
      return n;
    };
    const parts = [];
    for (const frac of [0, 0.5, 1]) {
      const y = top + plotH * (1 - frac);
      parts.push(node("line", { class: "grid-line", x1: left, x2: W, y1: y, y2: y }));
      parts.push(node("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, String(Math.round(max * frac))));
    }
    minutes.forEach((m, i) => {
      const x = left + i * step + 1;
      let y = top + plotH;
      const label = new Date(m.start_ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) +
        ": " + m.succeeded + " succeeded, " + m.failed + " failed, " + m.cancelled + " cancelled";
      const g = node("g", {});
      g.append(node("title", {}, label));
      for (const [n, cls] of [[m.succeeded, "bar-ok"], [m.failed, "bar-bad"], [m.cancelled, "bar-other"]]) {
        if (!n) continue;
        const h = (n / max) * plotH;
        y -= h;
        g.append(node("rect", { class: cls, x: x, y: y, width: Math.max(1, step - 2), height: h }));
      }
      parts.push(g);
    });
    for (const [i, text, anchor] of [[0, "-60 min", "start"], [30, "-30 min", "middle"], [minutes.length - 1, "now", "end"]]) {
      const x = left + i * step + (anchor === "end" ? step : 0);
      parts.push(node("text", { x: x, y: H - 4, "text-anchor": anchor }, text));
    }
    svg.replaceChildren(...parts);
  }

  function showStats(stats) {
    const values = {
      queue_depth: stats.queue_depth,
      running: stats.running,
      succeeded: stats.last_hour.succeeded,
      failed: stats.last_hour.failed,
      cancelled: stats.last_hour.cancelled,
      connected: stats.workers.ready + stats.workers.busy + stats.workers.draining,
    };
    for (const [k, v] of Object.entries(values)) {
      const n = $("[data-stat=\"" + k + "\"]");
      if (n) n.textContent = String(v);
    }
    const svg = $("#chart");
    if (svg) drawChart(svg, stats.per_minute);
    lastStats = stats;
  }
  let lastStats = null;
  window.addEventListener("resize", throttle(() => {
    const svg = $("#chart");
    if (svg && lastStats) drawChart(svg, lastStats.per_minute);
  }, 200));

  function overviewPage() {
    const data = $("#stats-data");
    if (data) showStats(JSON.parse(data.textContent));
    const table = jobsTable();
    const refresh = throttle(async () => {
      try {
        showStats(await api("GET", "/api/v1/stats"));
      } catch (e) {
        /* keep what is shown */
      }
    }, 1000);
    subscribe("/api/v1/events", {
      ready: () => { table.reload(); refresh(); },
      lagged: () => { table.reload(); refresh(); },
      job: (job) => { table.onJob(job); refresh(); },
      worker: refresh,
    });
    setInterval(refresh, 15000);
  }

  function jobsPage() {
    const table = jobsTable();
    subscribe("/api/v1/events", { ready: table.reload, lagged: table.reload, job: table.onJob });
  }

  // ---- workers --------------------------------------------------------
  function workerRow(w) {
    // Jobs held beyond the slots (prefetched) wait on the agent for one.
    const used = Math.min(w.running.length, w.slots);
    const waiting = w.running.length - used;
    const running = el("td", { class: "running" });
    for (const id of w.running) running.append(el("a", { href: "/ui/jobs/" + encodeURIComponent(id) }, id), " ");
    const labels = el("td", { class: "opt" });
    for (const l of w.labels) labels.append(el("span", { class: "chip" }, l));
    return el("tr", { "data-id": w.id },
      el("td", { class: "id" }, el("a", { href: "/ui/jobs?worker=" + encodeURIComponent(w.id) }, w.id)),
      el("td", {}, el("span", { class: "badge ws-" + w.state }, w.state)),
      labels,
      el("td", { class: "slots" }, el("progress", { value: used, max: Math.max(1, w.slots) }), " " + used + "/" + w.slots,
        ...(waiting > 0 ? [" ", el("span", { class: "waiting" }, "+" + waiting + " waiting")] : [])),
      running,
      el("td", { class: "opt" }, timeEl(w.last_seen)));
  }

  function workersPage() {
    const body = $("#worker-rows");
    const reload = throttle(async () => {
      try {
        const list = await api("GET", "/api/v1/workers");
        body.replaceChildren(...list.map(workerRow));
        $("#no-workers").hidden = list.length > 0;
      } catch (e) {
        /* keep what is shown */
      }
    }, 300);
    subscribe("/api/v1/events", { ready: reload, lagged: reload, worker: reload, job: reload });
    // Heartbeats are not events: refresh now and then for "last heartbeat".
    setInterval(reload, 10000);
  }

  // ---- job page ------------------------------------------------------------
  const MAX_LOG_NODES = 6000;

  function jobPage() {
    const box = $("#job");
    const id = box.dataset.id;
    const log = $("#log");
    const status = $("#log-status");
    const cancel = $("#cancel");
    const problem = $("#action-error");
    let job = JSON.parse($("#job-data").textContent);

    function field(name, content) {
      const dd = $("[data-field=\"" + name + "\"]", box);
      if (!dd) return;
      dd.replaceChildren(content === "" || content === null || content === undefined ? "—" : content);
    }
    function showJob(j, snapshot) {
      if (snapshot && progress(j) < progress(job)) return;
      job = j;
      const badge = $("#state");
      badge.textContent = j.state;
      badge.className = "badge big st-" + j.state;
      field("state", j.state);
      field("attempt", String(j.attempt));
      field("worker", j.worker ? el("a", { href: "/ui/jobs?worker=" + encodeURIComponent(j.worker) }, j.worker) : "");
      field("exit", exitText(j));
      field("reason", j.reason);
      for (const k of ["created_at", "assigned_at", "started_at", "finished_at"]) field(k, j[k] ? timeEl(j[k]) : "");
      const began = j.started_at || j.assigned_at;
      field("queue_wait", began ? fmtDuration(began - j.created_at) : "");
      field("run_time", runTime(j));
      cancel.hidden = TERMINAL.has(j.state);
      tick();
    }
    showJob(job);
    setInterval(() => { if (job.started_at && !job.finished_at) field("run_time", runTime(job)); }, 1000);

    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      problem.hidden = true;
      try {
        showJob(await api("POST", "/api/v1/jobs/" + encodeURIComponent(id) + "/cancel"), true);
        cancel.textContent = "Cancelling…";
      } catch (e) {
        problem.textContent = "Cannot cancel: " + e.message;
        problem.hidden = false;
        cancel.disabled = false;
      }
    });

    for (const s of ["stdout", "stderr"]) {
      $("#show-" + s).addEventListener("change", (e) => log.classList.toggle("hide-" + s, !e.target.checked));
    }
    const autoscroll = $("#autoscroll");
    const decoders = {};
    const ansi = {};
    function resetStreams() {
      for (const s of ["stdout", "stderr"]) {
        decoders[s] = new TextDecoder("utf-8");
        ansi[s] = new HodeiAnsi();
      }
    }
    resetStreams();
    function append(node) {
      log.append(node);
      if (log.childNodes.length > MAX_LOG_NODES) {
        while (log.childNodes.length > MAX_LOG_NODES - 1000) log.firstChild.remove();
        log.prepend(el("span", { class: "trimmed" }, "… earlier output trimmed; download the log for all of it\n"));
      }
      if (autoscroll.checked) log.scrollTop = log.scrollHeight;
    }
    function onLog(ev) {
      const raw = atob(ev.data);
      const bytes = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
      const text = decoders[ev.stream].decode(bytes, { stream: true });
      const chunk = el("span", { class: ev.stream === "stderr" ? "e" : "o" });
      chunk.append(...ansi[ev.stream].feed(text));
      append(chunk);
      status.textContent = "live";
    }
    let url = "/api/v1/jobs/" + encodeURIComponent(id) + "/logs/follow";
    if (box.dataset.pinned === "true") url += "?attempt=" + encodeURIComponent(box.dataset.attempt);
    const follow = subscribe(url, {
      log: onLog,
      attempt: (n) => {
        resetStreams();
        // A retry: the log starts over for the new attempt.
        if (log.childNodes.length) append(el("span", { class: "sep" }, "attempt " + n));
      },
      end: (end) => {
        follow.close();
        status.textContent = "finished: " + end.state + (end.exit_code !== null ? ", exit code " + end.exit_code : "");
      },
      failure: (message) => {
        follow.close();
        status.textContent = "log error: " + message;
      },
    });
    follow.addEventListener("open", () => { if (status.textContent === "connecting…") status.textContent = "live"; });

    subscribe("/api/v1/events?job=" + encodeURIComponent(id), {
      job: (j) => showJob(j, false),
      ready: async () => {
        try {
          showJob(await api("GET", "/api/v1/jobs/" + encodeURIComponent(id)), true);
        } catch (e) {
          /* keep what is shown */
        }
      },
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    tick();
    setInterval(tick, 1000);
    const page = document.body.dataset.page;
    if (page === "overview") overviewPage();
    else if (page === "jobs") jobsPage();
    else if (page === "workers") workersPage();
    else if (page === "job") jobPage();
    document.body.dataset.ready = "true";
  });
})();
