// What both dashboard pages share: admin login through the gateway, API calls with the token, live updates from
// the bus's event stream, DOM helpers.
"use strict";

const Dashboard = (() => {
  const TOKEN_KEY = "cs-dashboard.access-token";
  const REFRESH_KEY = "cs-dashboard.refresh-token";
  const EMAIL_KEY = "cs-dashboard.email";
  const TERMINAL = new Set(["COMPLETED", "COMPENSATED", "COMPENSATION_FAILED"]);

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  // -- DOM helpers: text always goes in as text, never as HTML ---------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "style") Object.assign(node.style, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(status) {
    return el("span", { class: `badge status-${status}`, dataset: { status } }, status);
  }

  function formatTime(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return date.toLocaleString(undefined, {
      year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
      hour12: false,
    });
  }

  function formatClock(ms) {
    if (ms === null || ms === undefined) return "";
    const date = new Date(ms);
    const time = date.toLocaleTimeString(undefined, { hour12: false });
    return `${time}.${String(date.getMilliseconds()).padStart(3, "0")}`;
  }

  function formatDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    const minutes = Math.floor(ms / 60000);
    return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
  }

  function formatMoney(minor, currency) {
    try {
      const format = new Intl.NumberFormat(undefined, { style: "currency", currency });
      const digits = format.resolvedOptions().maximumFractionDigits;
      return format.format(minor / 10 ** digits);
    } catch (_) {
      return `${minor} ${currency} (minor units)`;
    }
  }

  function shortId(id) {
    return id ? String(id).slice(0, 8) : "";
  }

  function showError(message) {
    const banner = document.getElementById("error");
    banner.textContent = message || "";
    banner.hidden = !message;
  }

  // -- tokens ----------------------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function forget() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(REFRESH_KEY);
    sessionStorage.removeItem(EMAIL_KEY);
  }

  async function readProblem(response) {
    try {
      return await response.json();
    } catch (_) {
      return null;
    }
  }

  let refreshing = null;

  // One refresh at a time: every call that met a 401 waits for the same new token.
  async function refreshToken() {
    const refresh = sessionStorage.getItem(REFRESH_KEY);
    if (!refresh) return false;
    if (!refreshing) {
      refreshing = (async () => {
        const response = await fetch("/api/auth/refresh", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ refresh_token: refresh }),
        });
        if (!response.ok) return false;
        const pair = await response.json();
        sessionStorage.setItem(TOKEN_KEY, pair.access_token);
        sessionStorage.setItem(REFRESH_KEY, pair.refresh_token);
        return true;
      })().finally(() => { refreshing = null; });
    }
    return refreshing;
  }

  async function api(path, options = {}, retried = false) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401 && !retried && await refreshToken()) {
      return api(path, options, true);
    }
    if (response.status === 401) {
      forget();
      showLogin("Your session has ended; log in again.");
      throw new ApiError(401, await readProblem(response));
    }
    if (!response.ok) throw new ApiError(response.status, await readProblem(response));
    return response.status === 204 ? null : response.json();
  }

  async function fetchAdmin() {
    const me = await api("/api/auth/me");
    if (!Array.isArray(me.roles) || !me.roles.includes("admin")) {
      forget();
      throw new ApiError(403, { detail: `${me.email} is not an admin: the dashboard is for admins only.` });
    }
    return me;
  }

  async function login(email, password) {
    const response = await fetch("/api/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ email, password }),
    });
    if (!response.ok) {
      const problem = await readProblem(response);
      throw new ApiError(response.status, problem || { detail: "Login failed." });
    }
    const pair = await response.json();
    sessionStorage.setItem(TOKEN_KEY, pair.access_token);
    sessionStorage.setItem(REFRESH_KEY, pair.refresh_token);
    return fetchAdmin();
  }

  async function logout() {
    const refresh = sessionStorage.getItem(REFRESH_KEY);
    try {
      if (token()) {
        await fetch("/api/auth/logout", {
          method: "POST",
          headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json" },
          body: JSON.stringify(refresh ? { refresh_token: refresh } : {}),
        });
      }
    } finally {
      forget();
      await fetch(`${EVENTS}/token`, { method: "DELETE" }).catch(() => null);
      window.location.reload();
    }
  }

  // -- page frame ------------------------------------------------------------------------------

  function showLogin(message) {
    stopLive();
    document.getElementById("content").hidden = true;
    document.getElementById("logout").hidden = true;
    document.getElementById("who").textContent = "";
    document.getElementById("login").hidden = false;
    document.getElementById("login-error").textContent = message || "";
    document.getElementById("login-email").focus();
  }

  function showContent(me) {
    document.getElementById("login").hidden = true;
    document.getElementById("content").hidden = false;
    document.getElementById("logout").hidden = false;
    document.getElementById("who").textContent = me.email;
  }

  let onReady = null;

  // Starts the page: `ready(me)` runs once an admin is logged in (now, or after the login form).
  function boot(ready) {
    onReady = ready;
    document.getElementById("logout").addEventListener("click", logout);
    document.getElementById("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const email = document.getElementById("login-email").value;
      const password = document.getElementById("login-password").value;
      const submit = event.target.querySelector("button[type=submit]");
      submit.disabled = true;
      try {
        const me = await login(email, password);
        document.getElementById("login-password").value = "";
        showContent(me);
        onReady(me);
      } catch (error) {
        document.getElementById("login-error").textContent = error.message;
      } finally {
        submit.disabled = false;
      }
    });
    if (!token()) {
      showLogin("");
      return;
    }
    fetchAdmin().then((me) => { showContent(me); onReady(me); }).catch((error) => showLogin(error.message));
  }

  // -- live updates ----------------------------------------------------------------------------
  //
  // The page reads its data once, then again only when the bus says something changed: an EventSource on the
  // gateway's event stream (one subscription to the bus for every open page) instead of polling. The stream's
  // first frame says whether the bus is live; when it is not (NATS down or not configured) the page reads once
  // and says so, and goes live by itself when the bus is back. EventSource sends no Authorization header: the
  // page hands its token to the stream's path as a cookie first (dashboard/router.py).

  const EVENTS = "/dashboard/api/events";
  const RECONNECT_MAX_MS = 30000;
  let liveOptions = null;
  let source = null;
  let live = false;
  let downShown = false;
  let detail = "";
  let reconnectMs = 1000;
  let reconnectTimer = null;
  let eventsSeen = 0;
  let reading = false;
  let readAgain = false;

  function setLive(text, state) {
    const indicator = document.getElementById("live");
    indicator.textContent = text;
    indicator.dataset.state = state;
    indicator.classList.toggle("stale", state !== "live");
  }

  function stamp() {
    const at = new Date().toLocaleTimeString(undefined, { hour12: false });
    if (live) setLive(`live · updated ${at}`, "live");
    else setLive(`not live (${detail || "no event stream"}) · updated ${at}`, "down");
  }

  // One refresh at a time; one asked for while another runs follows right after it.
  async function refreshNow() {
    if (!liveOptions) return;
    if (reading) {
      readAgain = true;
      return;
    }
    reading = true;
    try {
      do {
        readAgain = false;
        if (!liveOptions) return; // logged out meanwhile
        await liveOptions.refresh();
      } while (readAgain);
      showError("");
      stamp();
    } catch (error) {
      if (error.status !== 401) showError(`Could not refresh: ${error.message}`);
    } finally {
      reading = false;
    }
  }

  function closeStream() {
    if (reconnectTimer) clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (source) source.close();
    source = null;
  }

  // Not live: say so, read once (not again while it stays down), and try the stream again later.
  function streamDown(why) {
    closeStream();
    live = false;
    detail = why;
    if (!downShown) {
      downShown = true;
      refreshNow();
    } else {
      stamp();
    }
    reconnectTimer = setTimeout(openStream, reconnectMs);
    reconnectMs = Math.min(reconnectMs * 2, RECONNECT_MAX_MS);
  }

  function onStatus(status) {
    reconnectMs = 1000;
    live = status.live;
    detail = status.detail;
    if (live) {
      // (Re)connected: what happened meanwhile was kept for nobody, so the page reads what it shows again.
      downShown = false;
      refreshNow();
    } else if (!downShown) {
      downShown = true;
      refreshNow();
    } else {
      stamp();
    }
  }

  async function openStream() {
    closeStream();
    if (!liveOptions) return;
    try {
      await api(`${EVENTS}/token`, { method: "POST" }); // a 401 refreshes the token (or shows the login form)
    } catch (error) {
      if (error.status === 401) return;
      streamDown(`the event stream refused the token: ${error.message}`);
      return;
    }
    const query = (liveOptions.families || []).map((family) => `family=${encodeURIComponent(family)}`).join("&");
    const stream = new EventSource(`${EVENTS}/stream${query ? `?${query}` : ""}`);
    source = stream;
    stream.addEventListener("status", (event) => onStatus(JSON.parse(event.data)));
    stream.addEventListener("resync", () => refreshNow()); // this page read too slowly: events were dropped
    stream.addEventListener("auth", () => openStream()); // the token expired or was revoked: hand over a new one
    stream.onmessage = (event) => {
      eventsSeen += 1;
      document.getElementById("live").dataset.events = String(eventsSeen);
      liveOptions.onEvent(JSON.parse(event.data));
    };
    stream.onerror = () => {
      if (stream !== source) return;
      if (stream.readyState === EventSource.CLOSED) {
        streamDown("the event stream is unavailable"); // refused (not a 200), or gone for good
      } else if (live) {
        live = false; // dropped: the browser reconnects by itself, and the next status says what to read
        setLive("reconnecting…", "down");
      }
    };
  }

  // Starts the page's live view: `refresh()` reads everything the page shows, `onEvent(cloudEvent)` applies one
  // bus event of the `families` asked for (e.g. ["saga"]).
  function startLive(options) {
    liveOptions = options;
    setLive("connecting…", "down");
    openStream();
  }

  function stopLive() {
    liveOptions = null;
    closeStream();
  }

  return {
    ApiError, TERMINAL, api, badge, boot, el, formatClock, formatDuration, formatMoney, formatTime, refreshNow,
    shortId, showError, startLive,
  };
})();
