// The saga list: counts by outcome, filters by state and created time, rows that link to each saga's timeline.
"use strict";

(() => {
  const { api, badge, el, formatMoney, formatTime, shortId } = Dashboard;
  const STATUSES = ["STARTED", "RUNNING", "COMPLETED", "COMPENSATING", "COMPENSATED", "COMPENSATION_FAILED"];
  const IN_FLIGHT = ["STARTED", "RUNNING", "COMPENSATING"];
  // The saga API pages at most 500; the time filter is applied to the newest of them.
  const PAGE = 500;
  const BASE = "/api/customer-orders";

  const status = document.getElementById("filter-status");
  const windowSelect = document.getElementById("filter-window");
  const from = document.getElementById("filter-from");
  const to = document.getElementById("filter-to");
  const seen = new Set();
  let firstRender = true;

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

  // [start, end] in ms since the epoch, or null when no time filter is set.
  function timeWindow() {
    if (!windowSelect.value) return null;
    if (windowSelect.value === "range") {
      const start = from.value ? new Date(from.value).getTime() : -Infinity;
      const end = to.value ? new Date(to.value).getTime() : Infinity;
      return start === -Infinity && end === Infinity ? null : [start, end];
    }
    return [Date.now() - Number(windowSelect.value) * 1000, Infinity];
  }

  function inWindow(saga, span) {
    if (!span) return true;
    const created = new Date(saga.created_at).getTime();
    return created >= span[0] && created <= span[1];
  }

  function onFilterChange() {
    showRange();
    writeQuery();
    Dashboard.pollNow();
  }

  // -- data ------------------------------------------------------------------------------------

  // Exact counts over every saga: one small page per state, whose `total` is the count.
  async function exactCounts() {
    const totals = await Promise.all(STATUSES.map((s) => api(`${BASE}?status=${s}&limit=1`).then((p) => p.total)));
    return Object.fromEntries(STATUSES.map((s, i) => [s, totals[i]]));
  }

  function countsOf(sagas) {
    const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
    for (const saga of sagas) counts[saga.status] = (counts[saga.status] || 0) + 1;
    return counts;
  }

  async function refresh() {
    const span = timeWindow();
    const listPath = status.value ? `${BASE}?status=${status.value}&limit=${PAGE}` : `${BASE}?limit=${PAGE}`;
    let counts;
    let page;
    let countsNote = "";
    if (span) {
      // No created-time filter in the saga API yet: count what the newest page holds in the window.
      const all = await api(`${BASE}?limit=${PAGE}`);
      const inside = all.items.filter((s) => inWindow(s, span));
      counts = countsOf(inside);
      page = status.value ? { items: inside.filter((s) => s.status === status.value), total: null } : all;
      countsNote = all.total > all.items.length
        ? `Counts in the chosen time window, among the newest ${all.items.length} of ${all.total} sagas.`
        : "Counts in the chosen time window.";
    } else {
      [counts, page] = await Promise.all([exactCounts(), api(listPath)]);
    }
    renderCounts(counts, countsNote);
    const shown = page.items.filter((s) => inWindow(s, span));
    renderRows(shown);
    const total = page.total === null ? shown.length : page.total;
    document.getElementById("list-note").textContent = shown.length === 0
      ? "No saga matches these filters."
      : `${shown.length} shown${total > page.items.length ? ` (newest ${page.items.length} of ${total})` : ""}.`;
  }

  // -- rendering -------------------------------------------------------------------------------

  function renderCounts(counts, note) {
    const all = STATUSES.reduce((sum, s) => sum + (counts[s] || 0), 0);
    const values = {
      "": all,
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
  window.addEventListener("popstate", () => { readQuery(); Dashboard.pollNow(); });

  Dashboard.boot(() => Dashboard.startPolling(refresh));
})();
