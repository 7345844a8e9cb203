// tokenpool console: reads the JSON API with the operator's admin key (docs/CONSOLE.md).
// The key lives in this tab's sessionStorage and travels only as the X-API-Key header,
// the live feed included (fetch streaming, not EventSource, which cannot send headers).
"use strict";

(() => {
  const KEY_STORE = "tokenpool.console.key";
  const POLL_MS = 1500; // pools and leases: a change shows within 2 s
  const EVENT_REFRESH_MS = 700; // events bring the next poll forward, but no closer than this
  const HEALTH_MS = 5000;
  const CHART_MS = 5000;
  const LEASE_LIMIT = 200;
  const FEED_MAX = 100;
  const SERIES = ["leases", "evictions", "expiries", "rejections"];

  const state = {
    key: null, // null: not signed in; "" : the server needs no key (development without keys)
    running: false,
    pool: "default",
    endpoints: null, // paths of /openapi.json, or null when the document could not be read
    poolsApi: true,
    leases: [],
    skewMs: 0,
    timers: new Map(), // loop name -> its pending timeout
    wakers: new Map(), // loop name -> a function starting its next run now
    stream: null, // the AbortController of the open event stream
    lastEventId: null,
    retryMs: 750, // how long to wait before asking for the stream again (the server's `retry:`)
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function show(id, text) {
    const node = $(id);
    node.textContent = text || "";
    node.hidden = !text;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  function headers(extra) {
    const h = { Accept: "application/json", ...extra };
    if (state.key) h["X-API-Key"] = state.key;
    return h;
  }

  function noteClock(response, sentAt) {
    // expires_at is the server's time: count "time left" on the server's clock
    const date = Date.parse(response.headers.get("Date") || "");
    if (Number.isNaN(date)) return;
    const skew = date + 500 - (sentAt + Date.now()) / 2; // Date has whole seconds
    state.skewMs = Math.abs(skew) > 1500 ? skew : 0;
  }

  const serverNow = () => Date.now() + state.skewMs;

  async function api(path, key) {
    const sentAt = Date.now();
    const h = headers();
    if (key !== undefined) {
      delete h["X-API-Key"];
      if (key) h["X-API-Key"] = key;
    }
    const response = await fetch(path, { headers: h, cache: "no-store", credentials: "omit" });
    noteClock(response, sentAt);
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new HttpError(response.status, body);
    return body;
  }

  function has(path) {
    return state.endpoints === null || state.endpoints.has(path);
  }

  // --- the key ---------------------------------------------------------------------------

  function askForKey(message) {
    stop();
    state.key = null;
    sessionStorage.removeItem(KEY_STORE);
    $("dashboard").hidden = true;
    $("forget-key").hidden = true;
    $("key-form").hidden = false;
    $("key-error").textContent = message || "";
    $("key-input").value = "";
    $("key-input").focus();
  }

  function refusal(error) {
    if (error.status === 401) return "The key was refused: " + error.message;
    if (error.status === 403) return "This key is not an admin key: " + error.message;
    if (error.status === 429) return "Too many attempts; try again in a minute.";
    if (error.status) return `The server answered ${error.status}: ${error.message}`;
    return "The server could not be reached.";
  }

  async function signIn(key) {
    try {
      await api("/api/monitoring/activity?window=1", key); // admin only: proves the key
    } catch (error) {
      $("key-error").textContent = refusal(error);
      $("key-input").select();
      return;
    }
    state.key = key;
    sessionStorage.setItem(KEY_STORE, key);
    start();
  }

  function handle(error, where) {
    if (error.status === 401 || error.status === 403) {
      askForKey(refusal(error));
      return true;
    }
    console.warn(`console: ${where} failed`, error.status || "", error.message);
    return false;
  }

  // --- loops -----------------------------------------------------------------------------

  function every(ms, task) {
    // run `task`, then again `ms` after it finished (never two at once), while signed in;
    // `wake(name)` starts the next run early
    const name = task.name;
    const run = async () => {
      if (!state.running) return;
      state.wakers.delete(name);
      await task();
      if (state.running) {
        state.timers.set(name, setTimeout(run, ms));
        state.wakers.set(name, () => {
          clearTimeout(state.timers.get(name));
          run();
        });
      }
    };
    return run();
  }

  function wake(name) {
    const waker = state.wakers.get(name);
    if (waker) waker();
  }

  async function start() {
    state.running = true;
    $("key-form").hidden = true;
    $("dashboard").hidden = false;
    $("forget-key").hidden = false;
    await discover();
    every(POLL_MS, refresh);
    every(HEALTH_MS, loadHealth);
    every(CHART_MS, loadChart);
    state.timers.set("tick", setInterval(tick, 1000));
    streamEvents();
  }

  function stop() {
    state.running = false;
    for (const timer of state.timers.values()) {
      clearTimeout(timer);
      clearInterval(timer);
    }
    state.timers.clear();
    state.wakers.clear();
    if (state.stream) state.stream.abort();
    state.stream = null;
  }

  async function discover() {
    // which optional endpoints this server has, without asking each for a 404
    try {
      const doc = await api("/openapi.json");
      state.endpoints = new Set(Object.keys(doc.paths || {}));
    } catch (error) {
      state.endpoints = null;
    }
    state.poolsApi = has("/api/pools");
  }

  let refreshing = null;
  function refresh() {
    lastRefresh = Date.now();
    if (!refreshing) {
      refreshing = Promise.all([loadPools(), loadLeases()]).finally(() => {
        refreshing = null;
        $("updated").textContent = clockTime(Date.now());
      });
    }
    return refreshing;
  }

  let lastRefresh = 0;
  let soon = null;
  function refreshSoon() {
    // an event arrived: the counts change now, not at the next poll; at most one
    // refresh per EVENT_REFRESH_MS however many events arrive (the key's rate limit)
    if (soon !== null) return;
    const wait = Math.max(100, lastRefresh + EVENT_REFRESH_MS - Date.now());
    soon = setTimeout(() => {
      soon = null;
      wake("refresh");
    }, wait);
  }

  // --- pools -----------------------------------------------------------------------------

  async function loadPools() {
    try {
      if (state.poolsApi) {
        const body = await api("/api/pools?limit=1000");
        renderPools(body.pools, body.next_cursor ? "Showing the first 1000 pools." : "");
        return;
      }
      const s = await api("/api/tokens/summary");
      const pool = {
        name: "default", policy: "evict", size: s.total, active: s.active,
        available: s.available, queued: null, utilization: s.utilization,
      };
      renderPools([pool], "This server has no pools API: the default pool, from /api/tokens/summary.");
    } catch (error) {
      if (error.status === 404 && state.poolsApi) {
        state.poolsApi = false;
        return loadPools();
      }
      handle(error, "pools");
    }
  }

  function renderPools(pools, note) {
    show("pools-note", note);
    const names = pools.map((p) => p.name);
    if (!names.includes(state.pool) && names.length) state.pool = names[0];
    const body = $("pools").tBodies[0];
    body.replaceChildren(
      ...pools.map((p) => {
        const row = el("tr", p.name === state.pool ? "selected" : "");
        row.dataset.pool = p.name;
        row.append(
          el("td", "name", p.name),
          el("td", "wide-only", p.policy || ""),
          el("td", "num size", p.size),
          el("td", "num active", p.active),
          el("td", "num available", p.available),
          el("td", "num queued", p.queued === null || p.queued === undefined ? "–" : p.queued),
          utilisationCell(p.utilization),
        );
        row.addEventListener("click", () => choosePool(p.name));
        return row;
      }),
    );
    const select = $("pool-select");
    const current = Array.from(select.options).map((o) => o.value);
    if (current.join("\n") !== names.join("\n")) {
      select.replaceChildren(...names.map((n) => new Option(n, n)));
    }
    select.value = state.pool;
  }

  function utilisationCell(utilization) {
    const cell = el("td", "util");
    const meter = el("meter");
    meter.min = 0;
    meter.max = 1;
    meter.low = 0.7;
    meter.high = 0.9;
    meter.optimum = 0;
    meter.value = utilization || 0;
    cell.append(meter, el("span", "pct", `${Math.round((utilization || 0) * 100)} %`));
    return cell;
  }

  function choosePool(name) {
    if (name === state.pool) return;
    state.pool = name;
    state.leases = [];
    renderLeases(false);
    for (const row of $("pools").tBodies[0].rows) row.classList.toggle("selected", row.dataset.pool === name);
    $("pool-select").value = name;
    refresh();
  }

  // --- active leases ---------------------------------------------------------------------

  async function loadLeases() {
    const pool = state.pool;
    const path = state.poolsApi
      ? `/api/pools/${encodeURIComponent(pool)}/tokens?state=active&limit=${LEASE_LIMIT}`
      : `/api/tokens?state=active&limit=${LEASE_LIMIT}`;
    try {
      const body = await api(path);
      if (pool !== state.pool) return; // another pool was chosen meanwhile
      state.leases = body.tokens.slice().sort((a, b) => Date.parse(a.expires_at) - Date.parse(b.expires_at));
      renderLeases(Boolean(body.next_cursor));
    } catch (error) {
      if (error.status === 404 && state.poolsApi && pool !== "default") return; // pool deleted
      handle(error, "leases");
    }
  }

  function clockTime(value) {
    // HH:MM:SS on a 24-hour clock, in the browser's time zone
    const d = new Date(value);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
  }

  function short(id) {
    return id ? String(id).slice(0, 8) : "–";
  }

  function timeLeft(expiresAt) {
    const ms = Date.parse(expiresAt) - serverNow();
    if (ms <= 0) return "ending";
    const s = Math.ceil(ms / 1000);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const rest = String(s % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
  }

  function renderLeases(more) {
    const n = state.leases.length;
    $("leases-note").textContent = n
      ? `${n}${more ? "+" : ""} active in ${state.pool}${more ? ` (the first ${LEASE_LIMIT})` : ""}, ending first on top.`
      : `No active lease in ${state.pool}.`;
    $("leases").tBodies[0].replaceChildren(
      ...state.leases.map((t) => {
        const row = el("tr");
        const token = el("td", "mono", short(t.token_id));
        token.title = t.token_id;
        const user = el("td", "mono", short(t.current_user_id));
        user.title = t.current_user_id || "";
        const left = el("td", "num left", timeLeft(t.expires_at));
        left.dataset.expires = t.expires_at;
        row.append(
          token,
          user,
          el("td", "wide-only num", t.fencing_token === undefined ? "–" : t.fencing_token),
          el("td", "wide-only", clockTime(t.expires_at)),
          left,
        );
        return row;
      }),
    );
  }

  function tick() {
    for (const cell of document.querySelectorAll("#leases td.left")) {
      const text = timeLeft(cell.dataset.expires);
      cell.textContent = text;
      cell.classList.toggle("ending", text === "ending");
    }
  }

  // --- chart -----------------------------------------------------------------------------

  async function loadChart() {
    if (!has("/api/monitoring/activity")) {
      show("chart-note", "This server does not serve per-minute activity.");
      return;
    }
    try {
      const body = await api("/api/monitoring/activity?window=60");
      drawChart(body.minutes);
      show(
        "chart-note",
        body.scope === "process" ? "Counted by this server process only (no Redis configured)." : "",
      );
    } catch (error) {
      handle(error, "activity");
    }
  }

  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    return node;
  }

  let chartMinutes = null;

  function drawChart(minutes) {
    // drawn in the box's own pixels (no stretched text); again when the box changes size
    chartMinutes = minutes;
    const box = $("chart");
    const W = Math.max(200, box.clientWidth);
    const H = Math.max(100, box.clientHeight);
    const left = 34;
    const bottom = 16;
    const top = 8;
    const peak = Math.max(1, ...minutes.flatMap((m) => SERIES.map((s) => m[s])));
    const x = (i) => left + (i * (W - left - 4)) / Math.max(1, minutes.length - 1);
    const y = (v) => top + (H - top - bottom) * (1 - v / peak);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H });
    root.append(
      svg("line", { class: "axis", x1: left, y1: y(0), x2: W, y2: y(0) }),
      svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: y(0) }),
    );
    const label = (text, attrs) => {
      const t = svg("text", attrs);
      t.textContent = text;
      return t;
    };
    root.append(
      label(String(peak), { x: left - 4, y: top + 8, "text-anchor": "end" }),
      label("0", { x: left - 4, y: y(0), "text-anchor": "end" }),
      label(`-${minutes.length} min`, { x: left, y: H - 2 }),
      label("now", { x: W - 2, y: H - 2, "text-anchor": "end" }),
    );
    for (const series of SERIES) {
      const points = minutes.map((m, i) => `${x(i).toFixed(1)},${y(m[series]).toFixed(1)}`).join(" ");
      const line = svg("polyline", { class: series, points });
      const title = svg("title");
      title.textContent = series;
      line.append(title);
      root.append(line);
    }
    box.replaceChildren(root);
    const totals = SERIES.map((s) => minutes.reduce((sum, m) => sum + m[s], 0));
    $("chart-legend").replaceChildren(...SERIES.map((s, i) => el("li", s, `${s} ${totals[i]}`)));
  }

  new ResizeObserver(() => chartMinutes && drawChart(chartMinutes)).observe($("chart"));

  // --- health ----------------------------------------------------------------------------

  async function loadHealth() {
    let body = null;
    try {
      const response = await fetch("/health", { headers: { Accept: "application/json" }, cache: "no-store", credentials: "omit" });
      body = await response.json(); // 503 (unhealthy) has the same body
    } catch (error) {
      body = null;
    }
    const badge = $("health-badge");
    const status = body && body.status ? body.status : "down";
    badge.className = `badge ${status}`;
    badge.textContent = body ? `health: ${status}` : "health: unreachable";
    const checks = (body && body.checks) || {};
    $("health-checks").replaceChildren(
      ...Object.entries(checks).map(([name, check]) => {
        const item = el("li");
        item.append(el("span", `badge ${check.status}`, name), el("span", "detail", checkDetail(name, check)));
        return item;
      }),
    );
  }

  function checkDetail(name, check) {
    if (check.latency_ms !== undefined) return `${check.latency_ms} ms`;
    if (check.utilization !== undefined) return `${Math.round(check.utilization * 100)} % used`;
    if (check.last_run_at) return `last run ${clockTime(check.last_run_at)}`;
    if (check.percent !== undefined) return `${check.percent} %`;
    return check.status;
  }

  // --- live events -----------------------------------------------------------------------

  function feedStatus(text, kind) {
    const badge = $("feed-status");
    badge.textContent = text;
    badge.className = `badge ${kind}`;
  }

  function feedMessage(text) {
    $("feed").replaceChildren(el("li", "empty", text));
  }

  async function streamEvents() {
    if (!has("/api/events/stream")) {
      feedStatus("not available", "unknown");
      feedMessage("Events not available: this server has no /api/events/stream.");
      return;
    }
    feedMessage("Waiting for events…");
    let failures = 0;
    while (state.running) {
      const controller = new AbortController();
      state.stream = controller;
      const h = headers({ Accept: "text/event-stream" });
      if (state.lastEventId) h["Last-Event-ID"] = state.lastEventId;
      let wait = state.retryMs; // the server's `retry:` after a stream it ended
      try {
        const response = await fetch("/api/events/stream", {
          headers: h, cache: "no-store", credentials: "omit", signal: controller.signal,
        });
        if (response.status === 404) {
          feedStatus("not available", "unknown");
          feedMessage("Events not available: this server has no /api/events/stream.");
          return;
        }
        if (!response.ok) {
          const body = await response.json().catch(() => null);
          if (handle(new HttpError(response.status, body), "events")) return;
          throw new HttpError(response.status, body);
        }
        feedStatus("live", "live");
        failures = 0;
        await readEvents(response.body); // a server may end each stream at once (long polling)
      } catch (error) {
        if (controller.signal.aborted) return;
        failures += 1;
        wait = Math.min(1000 * 2 ** (failures - 1), 10000);
        feedStatus("reconnecting", "reconnecting");
      }
      if (!state.running) return;
      await sleep(wait);
    }
  }

  async function readEvents(stream) {
    // Server-Sent Events: blocks separated by a blank line; `id:`, `event:`, `data:` fields
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        dispatch(block);
      }
    }
  }

  function dispatch(block) {
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue; // heartbeat or comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "id") id = value;
      else if (field === "data") data.push(value);
      else if (field === "retry" && /^\d+$/.test(value)) state.retryMs = Number(value);
    }
    if (id !== null) state.lastEventId = id;
    if (!data.length) return;
    let event;
    try {
      event = JSON.parse(data.join("\n"));
    } catch (error) {
      return;
    }
    addEvent(event);
    refreshSoon();
  }

  function addEvent(event) {
    const feed = $("feed");
    const empty = feed.querySelector(".empty");
    if (empty) empty.remove();
    const item = el("li", `event ${event.type}`);
    item.dataset.eventId = event.event_id;
    const at = event.at ? clockTime(event.at) : "";
    const who = [event.pool, `token ${short(event.token_id)}`, event.user_id ? `user ${short(event.user_id)}` : ""];
    item.append(el("span", "at", at), el("span", `type ${event.type}`, event.type), el("span", "who", who.filter(Boolean).join(" · ")));
    item.title = JSON.stringify(event);
    feed.prepend(item);
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  }

  // --- start -----------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      signIn($("key-input").value.trim());
    });
    $("forget-key").addEventListener("click", () => askForKey(""));
    $("pool-select").addEventListener("change", (event) => choosePool(event.target.value));
    loadHealth();
    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved === null) {
      askForKey("");
    } else {
      state.key = saved;
      start();
    }
  });
})();
