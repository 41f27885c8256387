// One saga: its facts, a timeline of steps and compensations built from its event history, the retry button; read
// again whenever the bus says the saga moved.
"use strict";

(() => {
  const { api, badge, el, formatClock, formatDuration, formatMoney, formatTime, TERMINAL } = Dashboard;
  const sagaId = document.body.dataset.sagaId;
  const sagaUrl = `/api/customer-orders/${encodeURIComponent(sagaId)}`;
  const retryButton = document.getElementById("retry");
  const retryResult = document.getElementById("retry-result");
  let lastVersion = -1;

  // -- the timeline, from the events alone --------------------------------------------------------

  // Rows of {kind, step, status, start, end, attempts, error} and the saga's own start and end, in ms.
  // Compensations run one after another, so one starts when the previous one (or the compensation,
  // or an operator's retry) ended.
  function timelineOf(history) {
    const steps = new Map();
    const compensations = new Map();
    let sagaStart = null;
    let sagaEnd = null;
    let compensationClock = null;
    const pendingCompensation = () => [...compensations.values()].find((row) => row.status === "PENDING");

    for (const event of history) {
      const at = Date.parse(event.timestamp);
      const data = event.data || {};
      switch (event.type) {
        case "SagaStarted":
          sagaStart = at;
          break;
        case "StepStarted":
          steps.set(data.step, {
            kind: "step", step: data.step, status: "RUNNING", start: at, end: null, attempts: 0, error: null,
          });
          break;
        case "StepSucceeded": {
          const row = steps.get(data.step);
          if (!row) break;
          Object.assign(row, { status: "SUCCEEDED", end: at, error: data.last_error || null });
          row.attempts += data.attempts || 0;
          break;
        }
        case "StepFailed": {
          const row = steps.get(data.step);
          if (!row) break;
          Object.assign(row, { status: "FAILED", end: at, error: data.error || null, outcomeUnknown: !data.final });
          row.attempts += data.attempts || 0;
          break;
        }
        case "CompensationStarted":
          compensationClock = at;
          for (const step of data.plan || []) {
            compensations.set(step, {
              kind: "compensation", step, status: "PENDING", start: null, end: null, attempts: 0, error: null,
            });
          }
          break;
        case "CompensationSucceeded":
        case "CompensationFailed": {
          const row = compensations.get(data.step);
          if (!row) break;
          const failed = event.type === "CompensationFailed";
          Object.assign(row, {
            status: failed ? "FAILED" : "SUCCEEDED", start: row.start ?? compensationClock, end: at,
            error: failed ? data.error || null : row.error,
          });
          row.attempts += data.attempts || 0;
          compensationClock = at;
          break;
        }
        case "CompensationRetried":
          compensationClock = at;
          for (const row of compensations.values()) {
            if (row.status === "FAILED") Object.assign(row, { status: "PENDING", start: null, end: null, retried: true });
          }
          break;
        case "SagaCompleted":
        case "SagaCompensated":
        case "SagaCompensationFailed":
          sagaEnd = at;
          break;
        default:
          break;
      }
    }
    // The compensation under way (if the saga is still compensating) started when the last one ended.
    const running = sagaEnd === null ? pendingCompensation() : null;
    if (running && compensationClock !== null) Object.assign(running, { status: "RUNNING", start: compensationClock });
    return { rows: [...steps.values(), ...compensations.values()], sagaStart, sagaEnd };
  }

  // -- rendering -------------------------------------------------------------------------------

  function fact(term, ...value) {
    return [el("dt", {}, term), el("dd", {}, ...value)];
  }

  function renderHead(saga) {
    const status = document.getElementById("saga-status");
    status.replaceWith(Object.assign(badge(saga.status), { id: "saga-status" }));
    document.body.dataset.status = saga.status;
    const address = saga.shipping_address || {};
    const lines = (saga.lines || []).map((line) => `${line.quantity} × ${line.sku}`).join(", ");
    document.getElementById("saga-facts").replaceChildren(
      ...fact("Customer", el("code", {}, saga.customer_id)),
      ...fact("Order", saga.order_id ? el("code", {}, saga.order_id) : "—"),
      ...fact("Total", formatMoney(saga.total_minor, saga.currency)),
      ...fact("Lines", lines || "—"),
      ...fact("Ship to", [address.name, address.city, address.country].filter(Boolean).join(", ") || "—"),
      ...fact("Created", formatTime(saga.created_at)),
      ...fact("Updated", formatTime(saga.updated_at)),
      ...(saga.payment_id ? fact("Payment", el("code", {}, saga.payment_id)) : []),
      ...(saga.carrier_code ? fact("Carrier", saga.carrier_code) : []),
      ...(saga.tracking_number ? fact("Tracking", el("code", {}, saga.tracking_number)) : []),
    );
    const failure = document.getElementById("failure");
    failure.textContent = saga.failure_reason ? `Failure: ${saga.failure_reason}` : "";
    failure.hidden = !saga.failure_reason;
    retryButton.hidden = saga.status !== "COMPENSATION_FAILED";
  }

  function bar(row, origin, span, now) {
    if (row.start === null) return el("div", { class: "track" });
    const end = row.end ?? now;
    const left = ((row.start - origin) / span) * 100;
    const width = Math.max(((end - row.start) / span) * 100, 0.4);
    return el("div", { class: "track" }, el("div", {
      class: `span span-${row.kind} span-${row.status}`,
      style: { left: `${Math.min(left, 99.6)}%`, width: `${Math.min(width, 100 - Math.min(left, 99.6))}%` },
      title: `${row.step}: ${formatDuration(end - row.start)}`,
    }));
  }

  function renderTimeline(saga) {
    const { rows, sagaStart, sagaEnd } = timelineOf(saga.history || []);
    const now = Date.now();
    const origin = sagaStart ?? (rows.length ? rows[0].start : now);
    const finish = sagaEnd ?? Math.max(now, origin + 1);
    const span = Math.max(finish - origin, 1);
    const body = document.querySelector("#timeline tbody");
    body.replaceChildren(...rows.map((row) => {
      const name = row.kind === "compensation" ? `↩ undo ${row.step}` : row.step;
      // An error on a row that succeeded is from an earlier attempt (a transient failure, or a retried compensation).
      const earlier = row.error && row.status === "SUCCEEDED" ? "earlier attempt: " : "";
      const error = [row.error ? earlier + row.error : null, row.outcomeUnknown ? "(outcome unknown: compensated too)" : null]
        .filter(Boolean).join(" ");
      return el("tr", { class: `row-${row.kind}`, dataset: { kind: row.kind, step: row.step, status: row.status } },
        el("td", {}, el("code", {}, name), row.retried ? el("span", { class: "note" }, " (retried)") : null),
        el("td", {}, badge(row.status)),
        el("td", { class: "bar-col" }, bar(row, origin, span, now)),
        el("td", {}, row.start === null ? "" : formatClock(row.start)),
        el("td", {}, row.end === null ? "" : formatClock(row.end)),
        el("td", { class: "num" }, row.start !== null && row.end !== null ? formatDuration(row.end - row.start) : ""),
        el("td", { class: "num" }, row.attempts ? String(row.attempts) : ""),
        el("td", { class: "error" }, error));
    }));
  }

  function details(event) {
    const data = { ...(event.data || {}) };
    const summary = [];
    if (data.step) summary.push(data.step);
    if (data.attempts) summary.push(`${data.attempts} attempt${data.attempts === 1 ? "" : "s"}`);
    if (data.error) summary.push(data.error);
    if (data.reason) summary.push(data.reason);
    if (data.requested_by) summary.push(`by ${data.requested_by}`);
    const raw = JSON.stringify(data, null, 2);
    return [
      summary.join(" · "),
      raw === "{}" ? null : el("details", {}, el("summary", {}, "data"), el("pre", {}, raw)),
    ];
  }

  function renderEvents(saga) {
    const history = saga.history || [];
    const newest = history.length ? history[history.length - 1].version : -1;
    if (newest === lastVersion) return; // keep open <details> open while nothing changed
    lastVersion = newest;
    document.querySelector("#events tbody").replaceChildren(...history.map((event) =>
      el("tr", { dataset: { type: event.type } },
        el("td", { class: "num" }, String(event.version)),
        el("td", {}, formatClock(Date.parse(event.timestamp))),
        el("td", {}, el("code", {}, event.type)),
        el("td", {}, ...details(event)))));
  }

  async function refresh() {
    const saga = await api(sagaUrl);
    renderHead(saga);
    renderTimeline(saga);
    renderEvents(saga);
    document.title = `Saga ${sagaId.slice(0, 8)} · ${saga.status} · customer-service`;
    if (TERMINAL.has(saga.status) && saga.status !== "COMPENSATION_FAILED") retryResult.textContent = "";
  }

  retryButton.addEventListener("click", async () => {
    retryButton.disabled = true;
    retryResult.textContent = "Asking for a retry…";
    try {
      const accepted = await api(`${sagaUrl}/retry`, { method: "POST" });
      retryResult.textContent = `Retry accepted: the saga is ${accepted.status}.`;
    } catch (error) {
      retryResult.textContent = `Retry refused: ${error.message}`;
    } finally {
      retryButton.disabled = false;
      Dashboard.refreshNow();
    }
  });

  // The saga's own events on the bus (its subject is the saga's id) say when to read it again.
  function onEvent(event) {
    if (event.subject === sagaId || (event.data && event.data.saga_id === sagaId)) Dashboard.refreshNow();
  }

  Dashboard.boot(() => Dashboard.startLive({ refresh, onEvent, families: ["saga"] }));
})();
