// What a job says about itself (SPEC §11) on the dashboard: its progress bar, kind, labels, how
// long it ran or has been running, its error code, result and details; the list's filters by
// kind, label, time span and error code; and the exact lost-job count. dashboard.js draws the
// rest and calls these. Values from the API go on the page as text, never as HTML.

// SPEC §11's bounds, to keep what the address holds to what the API takes.
const KIND = /^[A-Za-z0-9._-]{1,64}$/;
const LABEL = /^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?(=.{0,256})?$/s;
const ERROR_CODE = /^[a-z0-9_.-]{1,64}$/;
const SPAN = /^[0-9]{1,9}[smhd]$/;
const TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/i;
const MAX_LABEL_FILTERS = 16;

// The tracker's own failed events carry these codes (SPEC §6, §11): the job's worker went silent
// past its heartbeat lease (lost), or the job ran past its deadline (timeout).
export const LOST_CODES = ["lost", "timeout"];
export const LOST_SHOWN = 10; // the latest lost jobs listed under the card

export const SPANS = { "15m": "the last 15 minutes", "1h": "the last hour", "24h": "the last 24 hours", "7d": "the last 7 days" };

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// ---- the filters, in the address and in the list's query ---------------------------------

// The filters of an address's parameters; values the API would refuse are dropped, as the
// status filter drops an unknown status.
export function readFilters(params) {
  const unique = (values) => [...new Set(values)];
  const after = params.get("startedAfter") || "";
  return {
    kinds: unique(params.getAll("kind").filter((kind) => KIND.test(kind))),
    labels: unique(params.getAll("label").filter((label) => LABEL.test(label))).slice(0, MAX_LABEL_FILTERS),
    errorCodes: unique(params.getAll("errorCode").filter((code) => ERROR_CODE.test(code))),
    startedAfter: SPAN.test(after) || TIME.test(after) ? after : "",
  };
}

// Add the filters of ``query`` to ``params`` (the list's request, or the address): the API's names.
export function writeFilters(params, query) {
  for (const kind of query.kinds) params.append("kind", kind);
  for (const label of query.labels) params.append("label", label);
  for (const code of query.errorCodes) params.append("errorCode", code);
  if (query.startedAfter) params.set("startedAfter", query.startedAfter);
}

export function withLabel(query, label) {
  return { ...query, page: 1, labels: query.labels.includes(label) ? query.labels : [...query.labels, label].slice(0, MAX_LABEL_FILTERS) };
}

// The filters as words, for the list's caption.
export function describeFilters(query) {
  const parts = [];
  if (query.kinds.length) parts.push(`of kind ${query.kinds.join(" or ")}`);
  if (query.labels.length) parts.push(`labelled ${query.labels.join(" and ")}`);
  if (query.errorCodes.length) parts.push(`with error code ${query.errorCodes.join(" or ")}`);
  if (query.startedAfter) parts.push(`started ${SPANS[query.startedAfter] ? `in ${SPANS[query.startedAfter]}` : `after ${query.startedAfter}`}`);
  return parts.length ? ` ${parts.join(", ")}` : "";
}

// ---- the filter controls ----------------------------------------------------------------

// Set the kind, label and time span controls to ``query``; each label filter is a chip whose
// button removes it (``hrefWithout(label)``: the address without it).
export function drawFilterControls(query, hrefWithout) {
  const kind = document.getElementById("kind");
  if (document.activeElement !== kind) kind.value = query.kinds.join(" ");
  const span = document.getElementById("startedAfter");
  if (query.startedAfter && ![...span.options].some((option) => option.value === query.startedAfter)) {
    const option = element("option", `after ${query.startedAfter}`);
    option.value = query.startedAfter;
    span.append(option);
  }
  span.value = query.startedAfter;
  document.getElementById("label-filters").replaceChildren(
    ...query.labels.map((label) => {
      const item = element("li", null, "chip");
      const remove = element("a", "×", "remove");
      remove.href = hrefWithout(label);
      remove.setAttribute("aria-label", `Remove the label filter ${label}`);
      item.append(element("span", label), remove);
      return item;
    }),
  );
}

// The filters the controls hold now, for a new query: a kind box of kinds separated by spaces or
// commas, a label typed in the label box added to those the query has, the time span.
export function readFilterControls(query) {
  const kinds = document.getElementById("kind").value.split(/[\s,]+/).filter(Boolean);
  const labelBox = document.getElementById("label");
  const typed = labelBox.value.trim();
  labelBox.value = "";
  const labels = typed && !query.labels.includes(typed) ? [...query.labels, typed] : query.labels;
  return { kinds, labels: labels.slice(0, MAX_LABEL_FILTERS), startedAfter: document.getElementById("startedAfter").value };
}

// Offer the kinds on the page as choices in the kind box.
export function offerKinds(rows) {
  const kinds = [...new Set(rows.map((job) => job.kind).filter(Boolean))].sort();
  document.getElementById("kinds").replaceChildren(
    ...kinds.map((kind) => {
      const option = document.createElement("option");
      option.value = kind;
      return option;
    }),
  );
}

// ---- a job's row ------------------------------------------------------------------------

function percent(value) {
  return `${Number(value.toFixed(1))}%`;
}

// A running job's progress as a bar with its figure; null for an ended job or one with none.
export function progressBar(job) {
  if (job.status !== "PENDING" || job.progress === undefined || job.progress === null) return null;
  const wrap = element("span", null, "progress");
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = job.progress;
  bar.setAttribute("aria-label", `Job ${job.id}: ${percent(job.progress)} done`);
  wrap.append(bar, element("span", percent(job.progress), "percent"));
  return wrap;
}

// A failed job's error code (SPEC §11); null when it has none.
export function errorCode(job) {
  if (!job.error) return null;
  const code = element("code", job.error.code, "error-code");
  code.title = "error code";
  return code;
}

// The kind and the labels; each label links to the list filtered by it too (``hrefFor(label)``).
export function kindAndLabels(job, hrefFor) {
  const parts = [];
  if (job.kind) parts.push(element("span", job.kind, "kind"));
  const labels = Object.entries(job.labels || {});
  if (labels.length) {
    const list = element("ul", null, "labels");
    for (const [key, value] of labels) {
      const item = element("li");
      const link = element("a", `${key}=${value}`);
      link.href = hrefFor(`${key}=${value}`);
      link.title = `Show only jobs labelled ${key}=${value}`;
      item.append(link);
      list.append(item);
    }
    parts.push(list);
  }
  return parts;
}

// Seconds as people say them: 4.2 s, 42 s, 3 min 12 s, 2 h 5 min, 3 d 4 h.
export function spanText(seconds) {
  const s = Math.max(0, seconds);
  if (s < 10) return `${s.toFixed(1)} s`;
  const whole = Math.floor(s);
  if (whole < 60) return `${whole} s`;
  if (whole < 3600) return `${Math.floor(whole / 60)} min ${whole % 60} s`;
  if (whole < 86400) return `${Math.floor(whole / 3600)} h ${Math.floor((whole % 3600) / 60)} min`;
  return `${Math.floor(whole / 86400)} d ${Math.floor((whole % 86400) / 3600)} h`;
}

// How long a job ran, or has been running until ``now`` (the browser's clock, against the
// tracker's start_time: a clock behind the tracker's reads as 0, not as a negative time).
export function durationText(job, now = Date.now()) {
  const start = Date.parse(job.start_time);
  if (job.end_time) return `ran for ${spanText((Date.parse(job.end_time) - start) / 1000)}`;
  return `running for ${spanText((now - start) / 1000)}`;
}

// ---- a job's page -----------------------------------------------------------------------

function json(value) {
  return JSON.stringify(value, null, 2);
}

// The pairs of the job's page beyond the seed's four: kind, labels, progress, duration, error,
// result, each only when the job has it (the duration always).
export function drawJobDetails(list, job, hrefFor) {
  const pairs = [];
  const add = (term, ...content) => {
    const dd = element("dd");
    dd.append(...content);
    pairs.push(element("dt", term), dd);
  };
  if (job.kind) add("Kind", job.kind);
  if (job.labels) add("Labels", ...kindAndLabels({ labels: job.labels }, hrefFor));
  if (job.progress !== undefined && job.progress !== null) {
    add("Progress", progressBar(job) || percent(job.progress));
  }
  add("Duration", durationText(job));
  if (job.error) {
    const parts = [errorCode(job)];
    if (job.error.details !== undefined) parts.push(element("pre", json(job.error.details), "json"));
    add("Error", ...parts);
  }
  if (job.result !== undefined) add("Result", element("pre", json(job.result), "json"));
  list.replaceChildren(...pairs);
}

// A timeline entry's SPEC §11 fields, as a short text: "40%", "error disk_full", "result {…}".
export function eventDetails(event) {
  const parts = [];
  if (event.progress !== undefined && event.progress !== null) parts.push(percent(event.progress));
  if (event.error) parts.push(`error ${event.error.code}`);
  if (event.result !== undefined) {
    const text = JSON.stringify(event.result);
    parts.push(`result ${text.length > 80 ? `${text.slice(0, 79)}…` : text}`);
  }
  return parts.join("; ") || "—";
}

// ---- the glance: lost jobs ---------------------------------------------------------------

// The list request whose summary.count is the lost-job count, and whose rows are the latest of them.
export function lostPath() {
  const params = new URLSearchParams();
  for (const code of LOST_CODES) params.append("errorCode", code);
  params.set("orderby", "id");
  params.set("sortOrder", "desc");
  params.set("limit", String(LOST_SHOWN));
  return `/async_status?${params}`;
}
