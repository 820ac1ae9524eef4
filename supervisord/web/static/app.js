/* jobsup status page. Vanilla JavaScript, no build step, nothing fetched from
   anywhere but this daemon (GPU boxes are often offline).

   Every piece of daemon data reaches the DOM as text: elements come from h()
   below, which appends strings as text nodes; nothing here assigns innerHTML.

   Live: one EventSource on api/events patches jobs and progress as they change;
   api/status is read every 2 s (sooner after a worker or phase event); a `reset`
   event, or the daemon coming back after an outage, refetches everything. */
"use strict";

(() => {
  const PAGE = 50;                 // jobs per page of the list
  const POLL_MS = 2000;            // status refresh
  const RATE_WINDOW_S = 10;        // rates from readings this far apart at most
  const STATUS_TIMEOUT_MS = 5000;  // a status read slower than this counts as "no answer"
  const MAX_OUTPUT = 512 * 1024;   // characters of live output kept on a job page
  const STATUSES = ["scheduled", "queued", "running", "succeeded", "failed", "cancelled"];
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const TOKEN_KEY = "jobsup.token";

  // ---- DOM and formatting helpers ------------------------------------------------

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    add(el, kids);
    return el;
  }

  function add(el, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : String(kid));  // strings become text nodes
    }
  }

  /** Replace the children of #id (if this view has it). */
  function fill(id, ...kids) {
    const el = document.getElementById(id);
    if (!el) return null;
    el.replaceChildren();
    add(el, kids);
    return el;
  }

  const dash = "\u2013";
  const num = (n) => (n === null || n === undefined ? dash : Number(n).toLocaleString("en-US"));

  function bytes(n) {
    if (n === null || n === undefined) return dash;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }

  function dur(s) {
    if (s === null || s === undefined || Number.isNaN(s)) return dash;
    s = Math.max(0, s);
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + Math.floor(s % 60) + "s";
    const hr = Math.floor(m / 60);
    if (hr < 48) return hr + "h " + (m % 60) + "m";
    return Math.floor(hr / 24) + "d " + (hr % 24) + "h";
  }

  function when(t) {
    if (!t) return dash;
    const d = new Date(t * 1000);
    const time = d.toLocaleTimeString("en-GB", { hour12: false });
    if (d.toDateString() === new Date().toDateString()) return time;
    return d.getFullYear() + "-" + String(d.getMonth() + 1).padStart(2, "0") + "-" +
      String(d.getDate()).padStart(2, "0") + " " + time;
  }

  function perSecond(r) {
    if (r === null || r === undefined) return dash;
    if (r === 0) return "0";
    return r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString("en-US");
  }

  const clamp = (p) => Math.max(0, Math.min(100, Number(p) || 0));
  const now = () => Date.now() / 1000;
  const badge = (state) => h("span", { class: "badge s-" + String(state || "none") }, state || dash);
  const jobLink = (id) => h("a", { href: "#/job/" + encodeURIComponent(id), class: "mono" }, id);

  function bar(progress, big) {
    const p = clamp(progress);
    return h("span", { class: big ? "bar big" : "bar", role: "progressbar",
      "aria-valuenow": p.toFixed(0), "aria-valuemin": "0", "aria-valuemax": "100" },
    h("span", { style: "width: " + p.toFixed(1) + "%" }));
  }

  function table(headers, rows, empty) {
    if (!rows.length) return h("p", { class: "empty" }, empty);
    const head = h("tr", null, headers.map(([label, cls]) => h("th", { class: cls }, label)));
    return h("div", { class: "scroll" },
      h("table", null, h("thead", null, head), h("tbody", null, rows)));
  }

  function panel(title, bodyId, extra) {
    return h("section", { class: "panel" },
      h("h2", null, title, h("span", { class: "extra", id: bodyId + "-extra" }, extra)),
      h("div", { id: bodyId }));
  }

  // ---- the API ----------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(path, opts = {}) {
    const { timeout, ...init } = opts;
    const abort = new AbortController();
    const timer = timeout ? setTimeout(() => abort.abort(), timeout) : 0;
    let resp;
    try {
      resp = await fetch(path, { cache: "no-store", signal: abort.signal, ...init });
    } catch (e) {
      throw abort.signal.aborted
        ? new ApiError(0, "timeout", "no answer within " + timeout / 1000 + " s")
        : new ApiError(0, "unreachable", "the jobsup web server at " + location.host +
          " does not answer");
    } finally {
      clearTimeout(timer);
    }
    const json = (resp.headers.get("content-type") || "").startsWith("application/json");
    const body = json ? await resp.json().catch(() => null) : await resp.text();
    if (!resp.ok) {
      const err = (body && body.error) || {};
      throw new ApiError(resp.status, err.code || "http_" + resp.status,
        err.message || resp.status + " " + resp.statusText);
    }
    return body;
  }

  // ---- state --------------------------------------------------------------------------

  const S = {
    info: null,
    status: null, statusError: null, wasDown: false,
    readings: [],                 // {t, pid, counts, types}: the last RATE_WINDOW_S of status
    list: { filters: { status: "", type: "", tag: "" }, jobs: [], cursor: null, total: null,
      totalAtMost: false, loaded: false, loading: false, error: null, gen: 0 },
    dlq: { jobs: [], total: null, error: null, loaded: false },
    job: null,                    // {id, rec, error, output, logsAt}
    seenTypes: new Set(),
    view: "",
  };

  // Rendering is batched: events mark parts dirty, one timer redraws them.
  const dirty = new Set();
  let flushTimer = 0;
  function schedule(...parts) {
    for (const p of parts) dirty.add(p);
    if (!flushTimer) flushTimer = setTimeout(flush, 40);
  }
  function flush() {
    flushTimer = 0;
    const parts = [...dirty];
    dirty.clear();
    for (const p of parts) RENDER[p]();
  }

  // Throttles: run fn at most once per ms, the last call not lost.
  function throttle(fn, ms) {
    let last = 0, timer = 0;
    return () => {
      if (timer) return;
      const wait = Math.max(0, last + ms - Date.now());
      timer = setTimeout(() => { timer = 0; last = Date.now(); fn(); }, wait);
    };
  }

  // ---- status -----------------------------------------------------------------------

  let pollTimer = 0;
  async function pollStatus() {
    clearTimeout(pollTimer);
    pollTimer = 0;
    try {
      const st = await api("api/status", { timeout: STATUS_TIMEOUT_MS });
      S.status = st;
      S.statusError = null;
      takeReading(st);
      for (const t of Object.keys(st.types || {})) S.seenTypes.add(t);
      if (S.wasDown) { S.wasDown = false; refetchAll(); }
      if (!S.info) loadInfo();
      if (S.view === "dlq" && st.dead_letters !== S.dlq.total) loadDlq();
    } catch (e) {
      S.statusError = e;
      S.wasDown = true;
    }
    schedule("status", "header");
    if (!pollTimer) pollTimer = setTimeout(pollStatus, POLL_MS);
  }
  const statusSoon = throttle(pollStatus, 500);

  function takeReading(st) {
    if (!st.counts) return;
    const t = performance.now() / 1000;
    const r = S.readings;
    if (r.length && r[r.length - 1].pid !== st.pid) r.length = 0;  // restarted: counts anew
    r.push({ t, pid: st.pid, counts: st.counts, types: st.types || {} });
    while (r.length > 2 && t - r[0].t > RATE_WINDOW_S) r.shift();
  }

  /** Per-second rates between the oldest and newest reading, or null. */
  function rates(pick) {
    const r = S.readings;
    if (r.length < 2) return null;
    const a = r[0], b = r[r.length - 1], dt = b.t - a.t;
    if (dt <= 0) return null;
    const from = pick(a) || {}, to = pick(b) || {}, out = {};
    for (const k of Object.keys(to)) out[k] = Math.max(0, ((to[k] || 0) - (from[k] || 0)) / dt);
    return out;
  }

  async function loadInfo() {
    try {
      S.info = await api("api/info");
      schedule("header", "jobs", "job", "dlq");
    } catch (e) { /* the next status poll tries again */ }
  }

  // ---- the job list -------------------------------------------------------------------

  function jobsQuery(extra) {
    const f = S.list.filters, q = new URLSearchParams();
    if (f.status) q.set("status", f.status);
    if (f.type) q.set("type", f.type);
    if (f.tag) q.set("tag", f.tag);
    for (const [k, v] of Object.entries(extra)) if (v !== null && v !== undefined) q.set(k, v);
    return "api/jobs?" + q;
  }

  const newestFirst = (a, b) =>
    (b.created_at || 0) - (a.created_at || 0) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);

  function takePage(page, L) {
    L.total = page.total === undefined ? null : page.total;
    L.totalAtMost = Boolean(page.total_at_most);
    for (const j of page.jobs) S.seenTypes.add(j.type);
  }

  async function loadJobs(more) {
    const L = S.list, gen = more ? L.gen : ++L.gen;
    L.loading = true;
    schedule("jobs");
    try {
      const page = await api(jobsQuery({ limit: PAGE, cursor: more ? L.cursor : null }));
      if (gen !== L.gen) return;
      if (more) merge(page.jobs); else L.jobs = page.jobs;
      L.cursor = page.cursor || null;
      takePage(page, L);
      L.error = null;
      L.loaded = true;
    } catch (e) {
      if (gen === L.gen) L.error = e;
    } finally {
      if (gen === L.gen) { L.loading = false; schedule("jobs"); }
    }
  }

  /** The newest page again: new jobs appear, the newest records are fresh. */
  async function refreshHead() {
    const L = S.list;
    if (!L.loaded || L.loading || S.view !== "overview") return;
    const gen = L.gen;
    try {
      const page = await api(jobsQuery({ limit: PAGE }));
      if (gen !== L.gen) return;
      const have = new Set(L.jobs.map((j) => j.id));
      if (page.jobs.length >= PAGE && L.jobs.length && !page.jobs.some((j) => have.has(j.id))) {
        L.jobs = page.jobs;  // more came than a page: start the list again from here
        L.cursor = page.cursor || null;
      } else {
        merge(page.jobs);
      }
      takePage(page, L);
      L.error = null;
    } catch (e) {
      if (gen === L.gen) L.error = e;
    }
    schedule("jobs");
  }
  const headSoon = throttle(refreshHead, 1000);

  function merge(records) {
    const L = S.list, at = new Map(L.jobs.map((j, i) => [j.id, i]));
    for (const r of records) {
      if (at.has(r.id)) L.jobs[at.get(r.id)] = r; else L.jobs.push(r);
    }
    L.jobs.sort(newestFirst);
  }

  function setFilters(filters) {
    S.list.filters = filters;
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    const hash = "#/" + (String(q) ? "?" + q : "");
    if (location.hash !== hash) history.replaceState(null, "", hash);
    S.list.jobs = [];
    S.list.cursor = null;
    S.list.loaded = false;
    loadJobs(false);
  }

  // ---- the dead-letter set ------------------------------------------------------------

  async function loadDlq() {
    try {
      const found = await api("api/dlq?limit=200");
      S.dlq.jobs = found.jobs;
      S.dlq.total = found.total === undefined ? found.jobs.length : found.total;
      S.dlq.error = null;
    } catch (e) {
      S.dlq.error = e;
    }
    S.dlq.loaded = true;
    schedule("dlq");
  }
  const dlqSoon = throttle(loadDlq, 1000);

  // ---- one job ------------------------------------------------------------------------

  async function loadJob() {
    const J = S.job;
    if (!J) return;
    try {
      const rec = await api("api/jobs/" + encodeURIComponent(J.id));
      if (S.job !== J) return;
      J.rec = rec;
      J.error = null;
    } catch (e) {
      if (S.job === J) J.error = e;
    }
    schedule("job");
  }
  const jobSoon = throttle(loadJob, 300);

  async function loadLogs() {
    const J = S.job;
    try {
      const text = await api("api/jobs/" + encodeURIComponent(J.id) + "/logs");
      if (S.job !== J) return;
      // Output events seen before this answer are in the stored text; later ones are not.
      J.output = String(text || "");
      J.logsAt = performance.now();
      J.logsError = null;
    } catch (e) {
      if (S.job === J) { J.logsError = e; J.logsAt = performance.now(); }
    }
    if (S.job === J) RENDER.output();
  }

  // ---- the event stream ---------------------------------------------------------------

  let source = null, lastId = "", live = "connecting";

  function connect() {
    const url = "api/events" + (lastId ? "?last_event_id=" + encodeURIComponent(lastId) : "");
    source = new EventSource(url);
    source.onopen = () => setLive("live");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // The server refused the stream (503 while it is down): the browser gives up,
        // so try again ourselves, from the last event seen.
        setLive("down");
        source.close();
        setTimeout(connect, 2000);
      } else {
        setLive("connecting");
      }
    };
    const on = (name, fn) => source.addEventListener(name, (e) => {
      if (e.lastEventId) lastId = e.lastEventId;
      let data = {};
      try { data = JSON.parse(e.data || "{}"); } catch (err) { return; }
      fn(data);
    });
    on("state", onState);
    on("progress", onProgress);
    on("output", onOutput);
    on("worker", statusSoon);
    on("phase", statusSoon);
    on("reset", refetchAll);
  }

  function setLive(state) {
    live = state;
    schedule("header");
  }

  function patchState(j, ev) {
    j.status = ev.status;
    if (ev.attempt) j.attempt = ev.attempt;
    if (ev.status === "running") {
      j.started_at = ev.at || j.started_at;
      if (ev.pid) j.worker = { node: ev.node, pid: ev.pid };
    }
    if (TERMINAL.has(ev.status)) j.finished_at = ev.at || now();
    if (ev.status === "succeeded") j.progress = 100;
  }

  function onState(ev) {
    const L = S.list, i = L.jobs.findIndex((j) => j.id === ev.job);
    if (i >= 0) {
      patchState(L.jobs[i], ev);
      if (L.filters.status && ev.status !== L.filters.status) L.jobs.splice(i, 1);
      schedule("jobs");
    }
    if (S.view === "overview") headSoon();
    if (S.job && S.job.id === ev.job) {
      if (S.job.rec) patchState(S.job.rec, ev);
      schedule("job");
      jobSoon();
    }
    if (S.view === "dlq" && (ev.status === "failed" || ev.status === "queued")) dlqSoon();
  }

  function onProgress(ev) {
    const patch = (j) => {
      j.progress = ev.progress;
      j.progress_message = ev.message;
      j.progressed = true;
    };
    const j = S.list.jobs.find((x) => x.id === ev.job);
    if (j) { patch(j); schedule("jobs"); }
    if (S.job && S.job.id === ev.job && S.job.rec) { patch(S.job.rec); schedule("progress"); }
  }

  function onOutput(ev) {
    const J = S.job;
    if (!J || J.id !== ev.job || J.logsAt === undefined) return;
    const text = String(ev.data !== undefined ? ev.data : ev.text || "");
    J.output += text;
    if (J.output.length > MAX_OUTPUT) J.output = J.output.slice(-MAX_OUTPUT);
    const pre = document.getElementById("output");
    if (!pre) return;
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    if (pre.dataset.empty) { pre.replaceChildren(); delete pre.dataset.empty; }
    pre.append(text);
    if (pre.textContent.length > MAX_OUTPUT) pre.textContent = J.output;
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  function refetchAll() {
    pollStatus();
    if (S.view === "overview") { if (S.list.loaded) refreshHead(); else loadJobs(false); }
    if (S.view === "dlq") loadDlq();
    if (S.job) { loadJob(); loadLogs(); }
  }

  // ---- actions (only with [web] actions = true) ------------------------------------

  const canAct = () => Boolean(S.info && S.info.actions);

  /** Confirm an action, asking for the token once per browser session; `run(token)`
      does it. A refused token is forgotten and asked for again. */
  function ask(title, text, run) {
    const dialog = document.getElementById("ask");
    const tokenRow = document.getElementById("ask-token-row");
    const input = document.getElementById("ask-token");
    const error = document.getElementById("ask-error");
    const yes = document.getElementById("ask-yes");
    fill("ask-title", title);
    fill("ask-text", text);
    error.textContent = "";
    input.value = "";
    const showToken = () => { tokenRow.hidden = Boolean(sessionStorage.getItem(TOKEN_KEY)); };
    showToken();
    yes.disabled = false;
    document.getElementById("ask-no").onclick = () => dialog.close();
    document.getElementById("ask-form").onsubmit = async (e) => {
      e.preventDefault();
      const token = sessionStorage.getItem(TOKEN_KEY) || input.value;
      if (!token) { error.textContent = "Give the token ([web] token in the daemon's config)."; return; }
      yes.disabled = true;
      error.textContent = "";
      try {
        const reply = await api(run.path, { method: "POST", body: JSON.stringify(run.body || {}),
          headers: { "Content-Type": "application/json", "X-Jobsup-Token": token } });
        sessionStorage.setItem(TOKEN_KEY, token);
        dialog.close();
        toast(run.done(reply), "ok");
        refetchAll();
      } catch (err) {
        if (err.status === 401) sessionStorage.removeItem(TOKEN_KEY);
        error.textContent = "Refused: " + err.message;
        showToken();
        input.value = "";
        yes.disabled = false;
        if (!tokenRow.hidden) input.focus();
      }
    };
    dialog.showModal();
    if (!tokenRow.hidden) input.focus(); else yes.focus();
  }

  function cancelButton(job) {
    if (!canAct() || TERMINAL.has(job.status)) return null;
    return h("button", { class: "danger small cancel", type: "button", "data-job": job.id,
      onclick: () => ask("Cancel job " + job.id + "?",
        "A queued job will not run; a running one is asked to stop, then stopped.",
        { path: "api/jobs/" + encodeURIComponent(job.id) + "/cancel",
          done: () => "Cancel sent for " + job.id }) }, "Cancel");
  }

  let toastTimer = 0;
  function toast(text, level) {
    let el = document.getElementById("toast");
    if (!el) { el = h("div", { id: "toast", class: "toast" }); document.body.append(el); }
    el.textContent = text;
    el.dataset.level = level;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 5000);
  }

  // ---- rendering ----------------------------------------------------------------------

  const RENDER = {
    header() {
      const st = S.status, info = S.info, bits = [];
      fill("node", info ? info.node : st ? st.node : "");
      if (st) bits.push("up " + dur(st.uptime), st.phase !== "running" ? st.phase : null);
      if (info) bits.push("v" + info.version, info.actions ? "actions on" : "read-only");
      fill("facts", bits.filter(Boolean).join(" \u00b7 "));
      const el = document.getElementById("live");
      // An open stream from a daemon that does not answer is not live: nothing comes on it.
      const shown = live === "live" && S.statusError ? "stale" : live;
      el.dataset.state = shown;
      el.textContent = { live: "live", stale: "no answer", connecting: "reconnecting",
        down: "stream down" }[shown];
      fill("dlq-count", st && st.dead_letters ? num(st.dead_letters) : "");
      RENDER.banner();
    },

    banner() {
      const el = document.getElementById("banner"), st = S.status, err = S.statusError;
      let text = "", level = "bad";
      if (err && err.status === 0 && err.code === "unreachable") {
        text = "Cannot reach the jobsup web server at " + location.host + ". Is the daemon " +
          "running? Retrying every 2 s; the figures below are from the last answer.";
      } else if (err) {
        text = "The daemon does not answer (" + err.message + "). Retrying every 2 s; " +
          "the figures below are from the last answer.";
      } else if (st && st.redis && !st.redis.up) {
        text = "Redis is unreachable from the daemon" +
          (st.redis.error ? " (" + st.redis.error + ")" : "") +
          ". Submits are refused until it answers; running jobs go on.";
      } else if (st && st.phase && st.phase !== "running") {
        text = "The daemon is " + st.phase + ": it takes no new jobs.";
        level = "warn";
      }
      el.hidden = !text;
      el.textContent = text;
      el.dataset.level = level;
      for (const e of document.querySelectorAll("[data-live-status]")) {
        e.classList.toggle("stale", Boolean(err));
      }
    },

    status() {
      RENDER.header();
      if (S.view !== "overview" || !S.status) return;
      const st = S.status;
      renderTiles(st);
      renderPools(st);
      renderTypes(st);
      renderWorkers(st);
      renderCircuits(st);
      renderRedis(st);
      const list = document.getElementById("type-choices");
      if (list) fill("type-choices", [...S.seenTypes].sort().map((t) => h("option", { value: t })));
    },

    jobs() {
      if (S.view !== "overview") return;
      const L = S.list, act = canAct();
      const rows = L.jobs.map((j) => h("tr", { "data-job": j.id },
        h("td", null, jobLink(j.id)),
        h("td", null, j.type),
        h("td", null, badge(j.status)),
        h("td", null, progressCell(j)),
        h("td", { class: "num" }, j.attempt + "/" + j.max_attempts),
        h("td", null, j.pool || dash),
        h("td", { class: "mono" }, j.worker && j.worker.pid ? j.worker.pid : dash),
        h("td", null, tagText(j.tags)),
        h("td", null, when(j.created_at)),
        h("td", { class: "num", "data-runtime": j.id }, runTime(j)),
        h("td", { class: "msg", title: jobNote(j) }, jobNote(j)),
        act ? h("td", null, cancelButton(j)) : null));
      const headers = [["ID"], ["Type"], ["Status"], ["Progress"], ["Attempt", "num"], ["Pool"],
        ["Worker"], ["Tags"], ["Created"], ["Run time", "num"], ["Message"]];
      if (act) headers.push([""]);
      const empty = L.loading ? "Loading\u2026" : L.error ? "" : "No jobs match.";
      fill("jobs", L.error ? h("p", { class: "empty error-text" }, L.error.message) : null,
        table(headers, rows, empty));
      fill("jobs-extra", countText(L));
      fill("jobs-more",
        L.cursor ? h("button", { type: "button", id: "load-more", disabled: L.loading,
          onclick: () => loadJobs(true) }, "Load more") : null,
        h("span", { class: "note" }, L.cursor ? "" : L.jobs.length ? "That is all." : ""));
    },

    job() { if (S.job) renderJob(S.job); },
    progress() { if (S.job && S.job.rec) renderProgress(S.job.rec); },
    output() { if (S.job) renderOutput(S.job); },
    dlq() { if (S.view === "dlq") renderDlq(); },
  };

  function countText(L) {
    const shown = num(L.jobs.length);
    if (L.total === null || L.total === undefined) return shown + (L.cursor ? "+" : "") + " shown";
    return shown + " of " + (L.totalAtMost ? "at most " : "") + num(Math.max(L.total, L.jobs.length));
  }

  function tagText(tags) {
    const pairs = Object.entries(tags || {});
    return pairs.length ? pairs.map(([k, v]) => k + "=" + v).join(" ") : dash;
  }

  function runTime(j) {
    if (!j.started_at) return dash;
    return dur((j.finished_at || now()) - j.started_at);
  }

  function jobNote(j) {
    if (j.error && j.error.message) return j.error.message;
    return j.progress_message || "";
  }

  function progressCell(j) {
    if (!j.progressed && j.status !== "running") return dash;
    return [bar(j.progress), h("span", { class: "pct" }, clamp(j.progress).toFixed(0) + "%")];
  }

  function tile(label, value, sub) {
    return h("div", { class: "tile" }, h("div", { class: "label" }, label),
      h("div", { class: "value" }, value), h("div", { class: "sub" }, sub || "\u00a0"));
  }

  function renderTiles(st) {
    const pools = st.pools || [], workers = st.workers || [];
    const busy = workers.filter((w) => w.state === "busy").length;
    const queued = pools.reduce((n, p) => n + (p.queued || 0), 0);
    const r = rates((x) => x.counts);
    const redis = st.redis || {};
    fill("tiles",
      tile("Workers", busy + " / " + workers.length, "busy / alive"),
      tile("Queued", num(queued), pools.length + (pools.length === 1 ? " pool" : " pools")),
      tile("Done per second", r ? perSecond(r.succeeded) : dash,
        r ? perSecond(r.failed) + " failed/s" : "needs the daemon's counts"),
      tile("Submitted", st.counts ? num(st.counts.submitted) : dash,
        st.counts ? num(st.counts.succeeded) + " ok, " + num(st.counts.failed) + " failed"
          : "since start"),
      tile("Dead letters", num(st.dead_letters), h("a", { href: "#/dlq" }, "open the set")),
      tile("Redis", redis.up ? (redis.latency_ms ?? dash) + " ms" : "DOWN",
        redis.up ? "v" + (redis.version || "?") + (redis.embedded ? ", embedded" : "")
          : redis.error || "unreachable"));
  }

  function renderPools(st) {
    fill("pools", table(
      [["Pool"], ["Workers", "num"], ["Idle", "num"], ["Busy", "num"], ["Queued", "num"],
        ["Prefetched", "num"], ["State"]],
      (st.pools || []).map((p) => h("tr", { "data-pool": p.name },
        h("td", null, p.name), h("td", { class: "num" }, p.workers + "/" + p.target),
        h("td", { class: "num" }, num(p.idle)), h("td", { class: "num" }, num(p.busy)),
        h("td", { class: "num" }, num(p.queued)), h("td", { class: "num" }, num(p.prefetched)),
        h("td", null, badge(p.degraded ? "degraded" : "ok")))),
      "No pools."));
  }

  function renderTypes(st) {
    if (!st.types) {
      fill("types", h("p", { class: "empty" },
        "This daemon does not report counts per job type, so there are no rates to show."));
      return;
    }
    const totals = rates((x) => x.counts), names = Object.keys(st.types).sort();
    const row = (name, counts, r) => h("tr", { "data-type": name },
      h("td", null, name),
      h("td", { class: "num" }, r ? perSecond(r.submitted) : dash),
      h("td", { class: "num" }, r ? perSecond(r.succeeded) : dash),
      h("td", { class: "num" }, r ? perSecond(r.failed) : dash),
      h("td", { class: "num" }, r ? perSecond(r.retried) : dash),
      h("td", { class: "num" }, num(counts.succeeded)),
      h("td", { class: "num" }, num(counts.failed)));
    const rows = names.map((n) => row(n, st.types[n], rates((x) => x.types[n])));
    if (names.length > 1) rows.push(row("all", st.counts || {}, totals));
    fill("types", table([["Type"], ["In/s", "num"], ["Done/s", "num"], ["Failed/s", "num"],
      ["Retried/s", "num"], ["Succeeded", "num"], ["Failed", "num"]],
    rows, "No jobs since the daemon started."));
    fill("types-extra", S.readings.length > 1
      ? "rates over the last " + dur(S.readings[S.readings.length - 1].t - S.readings[0].t)
      : "rates after the next reading");
  }

  function renderWorkers(st) {
    const ws = [...(st.workers || [])].sort((a, b) =>
      a.pool < b.pool ? -1 : a.pool > b.pool ? 1 : (a.wid || 0) - (b.wid || 0));
    fill("workers", table(
      [["Pool"], ["PID"], ["State"], ["Job"], ["RSS", "num"], ["CPU", "num"], ["GPU"],
        ["GPU memory", "num"], ["Uptime", "num"], ["Jobs done", "num"]],
      ws.map((w) => h("tr", { "data-pid": w.pid },
        h("td", null, w.pool), h("td", { class: "mono pid" }, w.pid),
        h("td", null, badge(w.state)), h("td", null, w.job ? jobLink(w.job) : dash),
        h("td", { class: "num" }, bytes(w.rss)),
        h("td", { class: "num" }, w.cpu === null || w.cpu === undefined ? dash
          : Number(w.cpu).toFixed(0) + "%"),
        h("td", null, w.gpu && w.gpu.length ? w.gpu.join(",") : dash),
        h("td", { class: "num" }, bytes(w.gpu_memory)),
        h("td", { class: "num" }, dur(w.uptime)), h("td", { class: "num" }, num(w.jobs_done)))),
      "No workers are alive."));
    fill("workers-extra", (st.workers || []).length + " alive");
  }

  function renderCircuits(st) {
    fill("circuits", table([["Type"], ["State"], ["Failures", "num"], ["Open until"]],
      (st.circuits || []).map((c) => h("tr", { "data-circuit": c.type },
        h("td", null, c.type), h("td", null, badge(c.state)),
        h("td", { class: "num" }, num(c.failures)), h("td", null, when(c.open_until)))),
      "No job type has a circuit breaker."));
  }

  function renderRedis(st) {
    const r = st.redis || {};
    const facts = [["State", badge(r.up ? "ok" : "down")], ["Latency", r.up ? r.latency_ms + " ms" : dash],
      ["Version", r.version || dash], ["Memory", bytes(r.used_memory)],
      ["AOF", r.aof_enabled === undefined ? dash : r.aof_enabled ? "on" : "off"],
      ["Embedded", r.embedded === undefined ? dash : r.embedded ? "yes" : "no"]];
    if (r.error) facts.push(["Error", r.error]);
    fill("redis", h("div", { class: "body" }, h("dl", { class: "facts-list" },
      facts.map(([k, v]) => [h("dt", null, k), h("dd", null, v)]))));
  }

  // ---- the job page -------------------------------------------------------------------

  function renderJob(J) {
    if (J.error && !J.rec) {
      fill("job-head", h("h1", null, J.id));
      fill("job-main", h("p", { class: "empty error-text" },
        J.error.status === 404 ? "No such job: " + J.error.message : J.error.message));
      return;
    }
    const j = J.rec;
    if (!j) return;
    fill("job-head", h("h1", null, j.id), badge(j.status),
      h("span", { class: "note" }, j.type + (j.pool ? " on " + j.pool : "")),
      h("span", { class: "actions" }, cancelButton(j)));
    const facts = [
      ["Type", j.type], ["Pool", j.pool || dash], ["Attempt", j.attempt + " of " + j.max_attempts],
      ["Priority", j.priority], ["Worker", j.worker ? (j.worker.node || "") + " pid " +
        (j.worker.pid ?? dash) : dash],
      ["Created", when(j.created_at)], ["Started", when(j.started_at)],
      ["Finished", when(j.finished_at)],
      ["Run time", h("span", { "data-runtime": j.id }, runTime(j))],
      ["Timeout", j.timeout ? dur(j.timeout) : dash], ["Tags", tagText(j.tags)],
      ["Key", j.key || dash]];
    if (j.cancel_requested) facts.push(["Cancel", "requested"]);
    fill("job-facts", h("dl", { class: "facts-list" },
      facts.map(([k, v]) => [h("dt", null, k), h("dd", null, v)])));
    renderProgress(j);
    fill("job-timeline", h("ol", { class: "timeline" }, (j.history || []).map((e) => h("li", null,
      h("span", { class: "when" }, when(e.t)), badge(e.status),
      h("span", { class: "note" }, " attempt " + (e.attempt ?? dash) +
        (e.pid ? ", pid " + e.pid : "") + (e.kind ? ", " + e.kind : "")),
      h("span", { class: "why" }, [e.reason, e.message].filter(Boolean).join(": "))))));
    fill("job-payload", h("pre", { class: "json" }, JSON.stringify(j.payload, null, 2)));
    const outcome = [];
    if (j.error) {
      outcome.push(h("p", { class: "error-text" }, (j.error.kind ? j.error.kind + ": " : "") +
        (j.error.message || "")));
      if (j.error.traceback) outcome.push(h("pre", { class: "json" }, j.error.traceback));
    }
    if (j.result !== null && j.result !== undefined) {
      outcome.push(h("pre", { class: "json" }, JSON.stringify(j.result, null, 2)));
    }
    fill("job-result", outcome.length ? outcome : h("p", { class: "note" },
      TERMINAL.has(j.status) ? "No result." : "Not finished yet."));
  }

  function renderProgress(j) {
    const p = clamp(j.progress);
    fill("job-progress", h("div", { class: "progress-row" }, bar(p, true),
      h("span", { class: "pct", id: "progress-pct" }, p.toFixed(0) + "%")),
    h("p", { class: "note", id: "progress-message" }, j.progress_message ||
      (j.progressed ? "" : "The handler has not reported progress.")));
  }

  function renderOutput(J) {
    const pre = document.getElementById("output");
    if (!pre) return;
    if (J.logsError) {
      pre.textContent = "Could not read the output: " + J.logsError.message;
    } else if (J.output) {
      pre.textContent = J.output;
      delete pre.dataset.empty;
      pre.scrollTop = pre.scrollHeight;
    } else {
      pre.textContent = J.logsAt === undefined ? "Loading\u2026" : "No output yet.";
      pre.dataset.empty = "1";
    }
  }

  // ---- the dead-letter page -----------------------------------------------------------

  function renderDlq() {
    const D = S.dlq, act = canAct();
    const retry = (body, label) => ask(label, "The jobs go back to their queues with a fresh " +
      "attempt count.", { path: "api/dlq/retry", body,
      done: (r) => "Retried " + num((r.retried || []).length) + " job(s)" });
    fill("dlq-extra", act && D.jobs.length ? [
      h("button", { type: "button", id: "retry-all", onclick: () => retry({ all: true },
        "Retry all " + num(D.total) + " dead-letter jobs?") }, "Retry all"), " ",
      h("button", { type: "button", class: "danger", id: "purge", onclick: () => ask(
        "Purge " + num(D.total) + " dead-letter jobs?", "Their records are deleted for good.",
        { path: "api/dlq/purge", done: (r) => "Purged " + num((r.purged || []).length) +
          " job(s)" }) }, "Purge")] : D.total !== null ? num(D.total) + " in the set" : "");
    const rows = D.jobs.map((j) => h("tr", { "data-job": j.id },
      h("td", null, jobLink(j.id)), h("td", null, j.type), h("td", null, badge(j.status)),
      h("td", null, when(j.finished_at)), h("td", { class: "num" }, j.attempt + "/" + j.max_attempts),
      h("td", null, (j.error && j.error.kind) || dash),
      h("td", { class: "msg", title: jobNote(j) }, jobNote(j)),
      act ? h("td", null, h("button", { type: "button", class: "small", onclick: () =>
        retry({ ids: [j.id] }, "Retry " + j.id + "?") }, "Retry")) : null));
    const headers = [["ID"], ["Type"], ["Status"], ["Ended"], ["Attempts", "num"], ["Kind"],
      ["Error"]];
    if (act) headers.push([""]);
    fill("dlq",
      D.error ? h("p", { class: "empty error-text" }, D.error.message) : null,
      table(headers, rows, D.loaded ? "The dead-letter set is empty." : "Loading\u2026"),
      act ? null : h("p", { class: "empty" }, "Read-only: with [web] actions = true and a " +
        "token, retry and purge are done from here."));
  }

  // ---- views and routes ---------------------------------------------------------------

  function mount(name, ...kids) {
    S.view = name;
    const view = document.getElementById("view");
    view.replaceChildren();
    add(view, kids);
    for (const a of document.querySelectorAll("nav a")) {
      a.classList.toggle("current", a.dataset.route === name);
    }
    window.scrollTo(0, 0);
  }

  function mountOverview(params) {
    S.job = null;
    const f = { status: params.get("status") || "", type: params.get("type") || "",
      tag: params.get("tag") || "" };
    const status = h("select", { id: "f-status", "aria-label": "status" },
      h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s }, s)));
    status.value = f.status;
    const type = h("input", { id: "f-type", list: "type-choices", placeholder: "any type",
      size: 14, value: f.type, "aria-label": "type" });
    const tag = h("input", { id: "f-tag", placeholder: "tag key=value", size: 16, value: f.tag,
      "aria-label": "tag" });
    const apply = (e) => {
      if (e) e.preventDefault();
      setFilters({ status: status.value, type: type.value.trim(), tag: tag.value.trim() });
    };
    status.addEventListener("change", apply);
    const jobs = h("section", { class: "panel" },
      h("h2", null, "Recent jobs", h("span", { class: "extra", id: "jobs-extra" })),
      h("form", { class: "filters", id: "filters", onsubmit: apply },
        h("label", { for: "f-status" }, "Status"), status,
        h("label", { for: "f-type" }, "Type"), type, h("datalist", { id: "type-choices" }),
        h("label", { for: "f-tag" }, "Tag"), tag,
        h("button", { type: "submit" }, "Filter"),
        h("button", { type: "button", onclick: () => {
          status.value = ""; type.value = ""; tag.value = ""; apply();
        } }, "Clear")),
      h("div", { id: "jobs" }), h("div", { class: "more", id: "jobs-more" }));
    const live = (el) => { el.setAttribute("data-live-status", ""); return el; };
    mount("overview",
      live(h("div", { class: "tiles", id: "tiles" })),
      live(h("div", { class: "grid2" }, panel("Pools and queues", "pools"),
        panel("Job types", "types"))),
      live(panel("Workers", "workers")),
      jobs,
      live(h("div", { class: "grid2" }, panel("Circuits", "circuits"), panel("Redis", "redis"))));
    S.list.filters = f;
    S.list.jobs = [];
    S.list.cursor = null;
    S.list.loaded = false;
    loadJobs(false);
    schedule("status", "banner");
  }

  function mountJob(id) {
    S.job = { id, rec: null, error: null, output: "", logsAt: undefined, logsError: null };
    mount("job",
      h("p", null, h("a", { href: "#/" }, "\u2190 all jobs")),
      h("div", { class: "job-head", id: "job-head" }, h("h1", null, id)),
      h("div", { id: "job-main" },
        h("div", { class: "grid2" },
          h("section", { class: "panel" }, h("h2", null, "Details"),
            h("div", { class: "body", id: "job-facts" })),
          h("div", null,
            h("section", { class: "panel" }, h("h2", null, "Progress"),
              h("div", { class: "body", id: "job-progress" })),
            h("section", { class: "panel" }, h("h2", null, "Timeline"),
              h("div", { class: "body", id: "job-timeline" })))),
        h("section", { class: "panel" }, h("h2", null, "Output",
          h("span", { class: "extra" }, "live")), h("pre", { class: "output", id: "output" })),
        h("div", { class: "grid2" },
          h("section", { class: "panel" }, h("h2", null, "Payload"),
            h("div", { class: "body", id: "job-payload" })),
          h("section", { class: "panel" }, h("h2", null, "Result"),
            h("div", { class: "body", id: "job-result" })))));
    renderOutput(S.job);
    loadJob();
    loadLogs();
  }

  function mountDlq() {
    S.job = null;
    mount("dlq", h("section", { class: "panel" },
      h("h2", null, "Dead letters", h("span", { class: "extra", id: "dlq-extra" })),
      h("div", { id: "dlq" })));
    S.dlq.loaded = false;
    renderDlq();
    loadDlq();
  }

  function route() {
    const [path, query] = (location.hash.replace(/^#/, "") || "/").split("?");
    const m = path.match(/^\/job\/([^/]+)$/);
    if (m) mountJob(decodeURIComponent(m[1]));
    else if (path === "/dlq") mountDlq();
    else mountOverview(new URLSearchParams(query || ""));
  }

  // Run times tick on screen between events (only those cells: a redraw would replace
  // buttons under the pointer).
  setInterval(() => {
    const jobs = S.job && S.job.rec ? [S.job.rec] : S.view === "overview" ? S.list.jobs : [];
    for (const j of jobs) {
      if (j.status !== "running") continue;
      for (const el of document.querySelectorAll('[data-runtime="' + CSS.escape(j.id) + '"]')) {
        el.textContent = runTime(j);
      }
    }
  }, 1000);

  window.addEventListener("hashchange", route);
  route();
  loadInfo();
  pollStatus();
  connect();
})();
