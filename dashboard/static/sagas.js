// The saga list: counts by outcome, filters by state and created time, rows that link to each saga's timeline;
// kept current by the bus's saga events (a row moves from the event itself, a new saga is one fetch of it).
"use strict";

(() => {
  const { api, badge, el, formatMoney, formatTime, shortId } = Dashboard;
  const STATUSES = ["STARTED", "RUNNING", "COMPLETED", "COMPENSATING", "COMPENSATED", "COMPENSATION_FAILED"];
  const IN_FLIGHT = ["STARTED", "RUNNING", "COMPENSATING"];
  // The saga API pages at most 500: the list shows the newest of the sagas that match the filters.
  const PAGE = 500;
  const BASE = "/api/customer-orders";

  const status = document.getElementById("filter-status");
  const windowSelect = document.getElementById("filter-window");
  const from = document.getElementById("filter-from");
  const to = document.getElementById("filter-to");
  // Counts are read again at most this often while saga events come.
  const COUNTS_MS = 500;
  // What each saga event says of the saga's status (a step's failure leaves it as it was).
  const STATUS_AFTER = {
    "saga.started": "STARTED",
    "saga.step_succeeded": "RUNNING",
    "saga.compensating": "COMPENSATING",
    "saga.completed": "COMPLETED",
  };

  const seen = new Set();
  let firstRender = true;
  let shown = []; // the sagas in the table, newest first (the saga API's summaries)
  let listed = 0; // how many match the filters, as far as the page knows
  let countsTimer = null;
  const fetching = new Map(); // saga id -> asked again while its fetch ran
  // What the latest events said of each saga (id -> {status, order_id, updated_at}), newest last: a list read
  // while they came may predate them. Bounded: the oldest are forgotten.
  const moves = new Map();
  const MOVES_KEPT = 2000;

  // -- filters live in the URL's query, so a filtered view can be bookmarked and shared ----------

  function readQuery() {
    const query = new URLSearchParams(window.location.search);
    status.value = STATUSES.includes(query.get("status")) ? query.get("status") : "";
    windowSelect.value = query.get("window") || "";
    if (windowSelect.value !== (query.get("window") || "")) windowSelect.value = "";
    from.value = query.get("from") || "";
    to.value = query.get("to") || "";
    showRange();
  }

  function writeQuery() {
    const query = new URLSearchParams();
    if (status.value) query.set("status", status.value);
    if (windowSelect.value) query.set("window", windowSelect.value);
    if (windowSelect.value === "range" && from.value) query.set("from", from.value);
    if (windowSelect.value === "range" && to.value) query.set("to", to.value);
    const search = query.toString();
    history.replaceState(null, "", search ? `?${search}` : window.location.pathname);
  }

  function showRange() {
    for (const label of document.querySelectorAll("#filters .range")) label.hidden = windowSelect.value !== "range";
  }

  // The chosen created-time window as the saga API's parameters: `created_after` (included) and
  // `created_before` (excluded), ISO 8601 in UTC; none when no window is chosen.
  function windowParams() {
    const params = {};
    const iso = (ms) => (Number.isNaN(ms) ? null : new Date(ms).toISOString());
    if (windowSelect.value === "range") {
      const start = from.value ? iso(new Date(from.value).getTime()) : null;
      const end = to.value ? iso(new Date(to.value).getTime()) : null;
      if (start) params.created_after = start;
      if (end) params.created_before = end;
    } else if (windowSelect.value) {
      params.created_after = iso(Date.now() - Number(windowSelect.value) * 1000);
    }
    return params;
  }

  function withQuery(path, params) {
    const query = new URLSearchParams(params).toString();
    return query ? `${path}?${query}` : path;
  }

  function onFilterChange() {
    showRange();
    writeQuery();
    Dashboard.refreshNow();
  }

  function matches(saga) {
    if (status.value && saga.status !== status.value) return false;
    const span = windowParams();
    const created = new Date(saga.created_at).toISOString();
    return !(span.created_after && created < span.created_after)
      && !(span.created_before && created >= span.created_before);
  }

  // -- data ------------------------------------------------------------------------------------

  async function refresh() {
    const span = windowParams();
    const windowed = Object.keys(span).length > 0;
    // ISO strings in UTC compare like the instants they name.
    if (span.created_after && span.created_before && span.created_after > span.created_before) {
      renderCounts(Object.fromEntries(STATUSES.map((s) => [s, 0])), 0, "The chosen time window ends before it starts.");
      listed = 0;
      renderRows([]);
      return;
    }
    const listParams = { ...span, limit: String(PAGE) };
    if (status.value) listParams.status = status.value;
    const [stats, page] = await Promise.all([api(withQuery(`${BASE}/stats`, span)), api(withQuery(BASE, listParams))]);
    renderCounts(stats.counts, stats.total, windowed ? "Counts of the sagas created in the chosen time window." : "");
    listed = page.total;
    renderRows(page.items.map(overlay));
  }

  async function refreshCounts() {
    const span = windowParams();
    const stats = await api(withQuery(`${BASE}/stats`, span));
    const windowed = Object.keys(span).length > 0;
    renderCounts(stats.counts, stats.total, windowed ? "Counts of the sagas created in the chosen time window." : "");
  }

  // Many events in a burst are one read of the counts.
  function countsSoon() {
    if (countsTimer) return;
    countsTimer = setTimeout(() => {
      countsTimer = null;
      refreshCounts().catch((error) => Dashboard.showError(`Could not refresh the counts: ${error.message}`));
    }, COUNTS_MS);
  }

  // One saga event: its row moves (or leaves the filtered list); a saga the list does not show yet is read once.
  function onEvent(event) {
    const sagaId = event.data && event.data.saga_id;
    if (!sagaId) return;
    countsSoon();
    const name = event.type.replace(/\.v[0-9]+$/, "");
    const next = name === "saga.failed" ? event.data.status : STATUS_AFTER[name];
    remember(sagaId, { status: next, order_id: event.data.order_id, updated_at: event.time });
    const index = shown.findIndex((saga) => saga.saga_id === sagaId);
    if (index < 0) {
      if (!next || !status.value || next === status.value) fetchSaga(sagaId);
      return;
    }
    const saga = moved(shown[index], moves.get(sagaId));
    if (matches(saga)) {
      shown[index] = saga;
    } else {
      shown.splice(index, 1);
      listed -= 1;
    }
    renderRows(shown);
  }

  function remember(sagaId, move) {
    const known = moves.get(sagaId) || {};
    moves.delete(sagaId);
    moves.set(sagaId, {
      status: move.status || known.status, order_id: move.order_id || known.order_id, updated_at: move.updated_at,
    });
    if (moves.size > MOVES_KEPT) moves.delete(moves.keys().next().value);
  }

  function moved(saga, move) {
    return {
      ...saga, status: move.status || saga.status, order_id: saga.order_id || move.order_id || null,
      updated_at: move.updated_at,
    };
  }

  // The saga as the API said it, moved on by the events that came after (one saga's events come in order; two of
  // one save share their time, so only a strictly newer answer is taken over them).
  function overlay(saga) {
    const move = moves.get(saga.saga_id);
    return !move || Date.parse(move.updated_at) < Date.parse(saga.updated_at) ? saga : moved(saga, move);
  }

  async function fetchSaga(sagaId) {
    if (fetching.has(sagaId)) {
      fetching.set(sagaId, true); // it moved while being read: read it again after
      return;
    }
    fetching.set(sagaId, false);
    try {
      const saga = overlay(await api(`${BASE}/${encodeURIComponent(sagaId)}`));
      if (!matches(saga) || shown.some((row) => row.saga_id === sagaId)) return;
      const created = (row) => Date.parse(row.created_at);
      const oldest = shown[shown.length - 1];
      if (shown.length >= PAGE && oldest && created(saga) < created(oldest)) return; // not among the newest
      shown = [...shown, saga].sort((a, b) => created(b) - created(a)).slice(0, PAGE);
      listed += 1;
      renderRows(shown);
    } catch (error) {
      if (error.status !== 401) Dashboard.showError(`Could not read saga ${shortId(sagaId)}: ${error.message}`);
    } finally {
      const again = fetching.get(sagaId);
      fetching.delete(sagaId);
      if (again) fetchSaga(sagaId);
    }
  }

  // -- rendering -------------------------------------------------------------------------------

  function renderCounts(counts, total, note) {
    const values = {
      "": total,
      COMPLETED: counts.COMPLETED || 0,
      COMPENSATED: counts.COMPENSATED || 0,
      COMPENSATION_FAILED: counts.COMPENSATION_FAILED || 0,
      IN_FLIGHT: IN_FLIGHT.reduce((sum, s) => sum + (counts[s] || 0), 0),
    };
    for (const node of document.querySelectorAll("[data-count-value]")) {
      node.textContent = String(values[node.dataset.countValue]);
    }
    for (const card of document.querySelectorAll("[data-count]")) {
      const key = card.dataset.count;
      card.classList.toggle("selected", key === "IN_FLIGHT" ? false : key === status.value);
    }
    document.getElementById("counts-note").textContent = note;
  }

  function renderRows(sagas) {
    shown = sagas;
    const count = sagas.length;
    document.getElementById("list-note").textContent = count === 0
      ? "No saga matches these filters."
      : `${count} shown${listed > count ? ` (newest ${count} of ${listed})` : ""}.`;
    const body = document.querySelector("#sagas tbody");
    const rows = sagas.map((saga) => {
      const link = `/dashboard/sagas/${encodeURIComponent(saga.saga_id)}`;
      const fresh = !firstRender && !seen.has(saga.saga_id);
      seen.add(saga.saga_id);
      return el("tr", { class: fresh ? "fresh" : null, dataset: { sagaId: saga.saga_id, status: saga.status } },
        el("td", {}, formatTime(saga.created_at)),
        el("td", {}, el("a", { href: link, title: saga.saga_id }, el("code", {}, shortId(saga.saga_id)))),
        el("td", {}, badge(saga.status)),
        el("td", { title: saga.customer_id }, el("code", {}, shortId(saga.customer_id))),
        el("td", { title: saga.order_id || "" }, saga.order_id ? el("code", {}, shortId(saga.order_id)) : "—"),
        el("td", { class: "num" }, formatMoney(saga.total_minor, saga.currency)),
        el("td", {}, formatTime(saga.updated_at)));
    });
    body.replaceChildren(...rows);
    firstRender = false;
  }

  // -- wiring ----------------------------------------------------------------------------------

  readQuery();
  status.addEventListener("change", onFilterChange);
  windowSelect.addEventListener("change", onFilterChange);
  from.addEventListener("change", onFilterChange);
  to.addEventListener("change", onFilterChange);
  document.getElementById("filter-clear").addEventListener("click", () => {
    status.value = "";
    windowSelect.value = "";
    from.value = "";
    to.value = "";
    onFilterChange();
  });
  for (const card of document.querySelectorAll("a[data-count]")) {
    card.addEventListener("click", (event) => {
      event.preventDefault();
      status.value = card.dataset.count;
      onFilterChange();
    });
  }
  window.addEventListener("popstate", () => { readQuery(); Dashboard.refreshNow(); });

  Dashboard.boot(() => Dashboard.startLive({ refresh, onEvent, families: ["saga"] }));
})();
