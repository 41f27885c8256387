// The saga list: counts by outcome, filters by state and created time, rows that link to each saga's timeline.
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
    Dashboard.pollNow();
  }

  // -- data ------------------------------------------------------------------------------------

  async function refresh() {
    const span = windowParams();
    const windowed = Object.keys(span).length > 0;
    // ISO strings in UTC compare like the instants they name.
    if (span.created_after && span.created_before && span.created_after > span.created_before) {
      renderCounts(Object.fromEntries(STATUSES.map((s) => [s, 0])), 0, "The chosen time window ends before it starts.");
      renderRows([]);
      document.getElementById("list-note").textContent = "No saga matches these filters.";
      return;
    }
    const listParams = { ...span, limit: String(PAGE) };
    if (status.value) listParams.status = status.value;
    const [stats, page] = await Promise.all([api(withQuery(`${BASE}/stats`, span)), api(withQuery(BASE, listParams))]);
    renderCounts(stats.counts, stats.total, windowed ? "Counts of the sagas created in the chosen time window." : "");
    renderRows(page.items);
    const shown = page.items.length;
    document.getElementById("list-note").textContent = shown === 0
      ? "No saga matches these filters."
      : `${shown} shown${page.total > shown ? ` (newest ${shown} of ${page.total})` : ""}.`;
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
