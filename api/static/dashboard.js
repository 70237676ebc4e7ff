// The dashboard's behaviour: log in, read the API (SPEC §7), draw, and refresh while the page is open.
// Every value that comes from the API is put on the page as text (textContent), never as HTML.
// The password is only ever in the form field and the one login request: it is cleared after it.
// What a job says about itself (SPEC §11: progress, kind, labels, duration, error) and the list's
// filters by them are drawn by details.js.

import * as details from "./details.js";

import { jobCancel } from "./cancel.js";

import { followChanges, following, stopFollowing } from "./dashboard-stream.js";

const API = "/api/5.0";
const REFRESH_MS = 5000;
const STREAMED_REFRESH_MS = 10000; // with the stream open, changes redraw at once; the rest (dead letters) at this pace
const WAIT_S = 5; // a job page holds `Prefer: wait` this long instead of sleeping: a change shows at once
const STATUSES = ["PENDING", "SUCCEEDED", "FAILED"];
const NO_FILTERS = { kinds: [], labels: [], errorCodes: [], startedAfter: "" };
const DEFAULT_QUERY = { statuses: [], orderby: "id", sortOrder: "desc", limit: 25, page: 1, ...NO_FILTERS };
const ORDER_WORDS = { id: "id", start_time: "start time", end_time: "end time", status: "status" };

class Unauthenticated extends Error {}

class ApiError extends Error {
  constructor(status, text) {
    super(text);
    this.status = status;
  }
}

const $ = (id) => document.getElementById(id);

const state = {
  session: "unknown", // "unknown" | "out" | "in"
  timer: null,
  generation: 0, // a refresh whose generation is stale draws nothing
  route: null,
  counts: null,
  rows: new Map(), // id -> status, as last drawn, to mark what changed
  jobStatus: null,
  readable: false, // whether the last refresh could read: then the page follows the stream
  waitsHeld: undefined, // whether the API held a `Prefer: wait` (Preference-Applied); unknown at first
};

// ---- the API ----------------------------------------------------------------------------

async function call(path, { method = "GET", body, headers = {} } = {}) {
  // "no-cache": the browser revalidates what it holds, so an unchanged answer can be a 304.
  const options = { method, headers: { Accept: "application/json", ...headers }, cache: "no-cache", credentials: "same-origin" };
  // Every request that changes something declares JSON, with a body or without (logout): the
  // tracker refuses any other from a cookie session (SPEC §2), so that no other page can forge one.
  if (method !== "GET") options.headers["Content-Type"] = "application/json";
  if (body !== undefined) options.body = JSON.stringify(body);
  const response = await fetch(API + path, options);
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    parsed = null;
  }
  if (response.ok) return { body: parsed, headers: response.headers };
  const text = (parsed && Array.isArray(parsed.alerts) && parsed.alerts.map((alert) => alert.text).join(" ")) || `HTTP ${response.status}`;
  if (response.status === 401) throw new Unauthenticated(text);
  throw new ApiError(response.status, text);
}

function listPath(query, extra = {}) {
  const params = new URLSearchParams();
  for (const status of query.statuses) params.append("status", status);
  details.writeFilters(params, query);
  params.set("orderby", query.orderby);
  params.set("sortOrder", query.sortOrder);
  params.set("limit", String(query.limit));
  params.set("offset", String((query.page - 1) * query.limit));
  for (const [name, value] of Object.entries(extra)) params.set(name, String(value));
  return `/async_status?${params}`;
}

async function countOf(status) {
  const { body } = await call(`/async_status?status=${status}&limit=1`);
  return body.summary;
}

// ---- routes: #/?status=…&orderby=…  (the list) and #/jobs/42 (a job) ---------------------

function parseRoute() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const job = hash.match(/^\/jobs\/([0-9]+)$/);
  if (job) return { view: "job", id: job[1] };
  const params = new URLSearchParams(hash.split("?")[1] || "");
  const query = { ...DEFAULT_QUERY, statuses: params.getAll("status").filter((s) => STATUSES.includes(s)), ...details.readFilters(params) };
  if (ORDER_WORDS[params.get("orderby")]) query.orderby = params.get("orderby");
  if (["asc", "desc"].includes(params.get("sortOrder"))) query.sortOrder = params.get("sortOrder");
  const limit = Number(params.get("limit"));
  if (Number.isInteger(limit) && limit >= 1 && limit <= 1000) query.limit = limit;
  const page = Number(params.get("page"));
  if (Number.isInteger(page) && page >= 1) query.page = page;
  return { view: "list", query };
}

function listHash(query) {
  const params = new URLSearchParams();
  for (const status of query.statuses) params.append("status", status);
  details.writeFilters(params, query);
  params.set("orderby", query.orderby);
  params.set("sortOrder", query.sortOrder);
  params.set("limit", String(query.limit));
  params.set("page", String(query.page));
  return `#/?${params}`;
}

function go(query) {
  location.hash = listHash(query);
}

// The address of the list as it is now (the list's defaults from a job's page), filtered by ``label`` too.
function labelHref(label) {
  const query = state.route && state.route.view === "list" ? state.route.query : DEFAULT_QUERY;
  return listHash(details.withLabel(query, label));
}

// ---- drawing ----------------------------------------------------------------------------

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function timeCell(value) {
  const cell = element("td", null, "time");
  if (value === null || value === undefined) {
    cell.textContent = "—";
    return cell;
  }
  const time = element("time", `${value.slice(0, 10)} ${value.slice(11, 19)}`);
  time.dateTime = value;
  time.title = value;
  cell.append(time);
  return cell;
}

function statusBadge(status) {
  return element("span", status, `status ${status}`);
}

function number(value) {
  return Number(value).toLocaleString("en");
}

// A summary's count; the list may give PostgreSQL's estimate for a large count (summary.estimated).
function counted(summary) {
  return summary.estimated ? `≈ ${number(summary.count)}` : number(summary.count);
}

function announce(text) {
  $("announce").textContent = text;
}

function showProblem(text) {
  const problem = $("problem");
  problem.textContent = text;
  problem.hidden = false;
}

function clearProblem() {
  $("problem").hidden = true;
  $("problem").textContent = "";
}

function drawGlance(counts, lost, dead) {
  const lostCount = lost.summary;
  for (const status of STATUSES) {
    $(`count-${status}`).textContent = counted(counts[status]);
    $(`count-${status}`).title = counts[status].estimated ? "an estimate: the table is large" : "";
  }
  $("count-lost").textContent = counted(lostCount);
  $("count-lost").closest(".card").classList.toggle("some", lostCount.count > 0);
  const deadFigure = $("count-dead");
  deadFigure.textContent = dead === null ? "?" : number(dead);
  deadFigure.title = dead === null ? "RabbitMQ did not answer" : "";
  deadFigure.closest(".card").classList.toggle("some", dead !== null && dead > 0);
  const list = $("lost-jobs");
  list.replaceChildren(
    ...lost.response.map((job) => {
      const item = element("li");
      const link = element("a", `Job ${job.id}`);
      link.href = `#/jobs/${job.id}`;
      item.append(link, ` — ${job.message} (failed ${job.end_time.slice(0, 10)} ${job.end_time.slice(11, 19)})`);
      return item;
    }),
  );
  $("lost-none").hidden = lost.response.length > 0;
  const now = new Date();
  $("updated-at").textContent = now.toLocaleTimeString("en-GB");
  $("updated-at").dateTime = now.toISOString();
  if (state.counts && STATUSES.some((status) => state.counts[status].count !== counts[status].count)) {
    announce(`Now ${counted(counts.PENDING)} pending, ${counted(counts.SUCCEEDED)} succeeded, ${counted(counts.FAILED)} failed.`);
  }
  state.counts = counts;
}

// The list is drawn anew at each change the stream tells of: a keyboard user's place in it (a
// job's link, a label's) is kept across the redraw, else it would fall back to the page's start.
const FOCUSABLE = "a, button, input";

function focusInRows(body) {
  const active = document.activeElement;
  const row = active && body.contains(active) ? active.closest("tr") : null;
  if (!row) return null;
  return { id: row.dataset.id, index: [...row.querySelectorAll(FOCUSABLE)].indexOf(active) };
}

function refocusInRows(body, focused) {
  if (!focused || focused.index < 0) return;
  const row = [...body.rows].find((candidate) => candidate.dataset.id === focused.id);
  const target = row ? row.querySelectorAll(FOCUSABLE)[focused.index] : null;
  if (target) target.focus();
}

function drawList(query, rows, summary) {
  const total = summary.count;
  const body = $("jobs");
  const seen = new Map();
  const focused = focusInRows(body);
  body.replaceChildren(
    ...rows.map((job) => {
      const row = element("tr");
      row.dataset.id = String(job.id);
      const before = state.rows.get(job.id);
      if (before !== undefined && before !== job.status) row.classList.add("changed");
      seen.set(job.id, job.status);
      const idCell = element("td");
      const link = element("a", String(job.id));
      link.href = `#/jobs/${job.id}`;
      link.setAttribute("aria-label", `Job ${job.id}`);
      idCell.append(link);
      const statusCell = element("td", null, "state");
      statusCell.append(statusBadge(job.status));
      for (const extra of [details.progressBar(job), details.errorCode(job)]) if (extra) statusCell.append(" ", extra);
      const kindCell = element("td", null, "about");
      kindCell.append(...details.kindAndLabels(job, labelHref));
      row.append(
        idCell,
        statusCell,
        kindCell,
        timeCell(job.start_time),
        timeCell(job.end_time),
        element("td", details.durationText(job), "duration"),
        element("td", job.message ?? "—", "message"),
      );
      return row;
    }),
  );
  state.rows = seen;
  refocusInRows(body, focused);
  const first = total === 0 ? 0 : (query.page - 1) * query.limit + 1;
  const last = (query.page - 1) * query.limit + rows.length;
  const filter = (query.statuses.length ? ` with status ${query.statuses.join(" or ")}` : "") + details.describeFilters(query);
  const order = `${ORDER_WORDS[query.orderby]}, ${query.sortOrder === "desc" ? "descending" : "ascending"}`;
  $("jobs-caption").textContent =
    rows.length === 0 ? `No jobs${filter} on this page (${counted(summary)} in all).` : `Jobs ${number(first)}–${number(last)} of ${counted(summary)}${filter}, by ${order}.`;
  const pages = Math.max(1, Math.ceil(total / query.limit));
  $("page-info").textContent = `Page ${number(query.page)} of ${summary.estimated ? "≈ " : ""}${number(pages)}`;
  $("previous").disabled = query.page <= 1;
  // With an estimated count a short page is the last one; a full page may have more after it.
  $("next").disabled = summary.estimated ? rows.length < query.limit : query.page >= pages;
  details.offerKinds(rows);
  for (const header of document.querySelectorAll("th[data-sort]")) {
    const sorted = header.dataset.sort === query.orderby;
    if (sorted) header.setAttribute("aria-sort", query.sortOrder === "desc" ? "descending" : "ascending");
    else header.removeAttribute("aria-sort");
  }
}

function drawFilters(query) {
  for (const box of document.querySelectorAll("#filters input[name=status]")) box.checked = query.statuses.includes(box.value);
  $("orderby").value = query.orderby;
  $("sortOrder").value = query.sortOrder;
  const limit = $("limit");
  if (![...limit.options].some((option) => option.value === String(query.limit))) limit.append(element("option", String(query.limit)));
  limit.value = String(query.limit);
  details.drawFilterControls(query, (label) => listHash({ ...query, page: 1, labels: query.labels.filter((l) => l !== label) }));
}

function drawJob(job, events) {
  $("job-title").textContent = `Job ${job.id}`;
  $("job-status").replaceChildren(statusBadge(job.status));
  $("job-start").replaceChildren(...timeCell(job.start_time).childNodes);
  $("job-end").replaceChildren(...timeCell(job.end_time).childNodes);
  $("job-message").textContent = job.message ?? "—";
  details.drawJobDetails($("job-about"), job, labelHref);
  $("timeline").replaceChildren(
    ...events.map((event) => {
      const row = element("tr");
      row.append(
        timeCell(event.occurred_at),
        element("td", event.type),
        element("td", String(event.seq ?? 0)),
        element("td", event.message ?? "—", "message"),
        element("td", details.eventDetails(event), "details"),
        timeCell(event.received_at),
        element("td", event.event_id, "event-id"),
      );
      return row;
    }),
  );
  if (events.length === 0) {
    const row = element("tr");
    const cell = element("td", "No events received yet.");
    cell.colSpan = 7;
    row.append(cell);
    $("timeline").append(row);
  }
  if (state.jobStatus && state.jobStatus.id === job.id && state.jobStatus.status !== job.status) {
    announce(`Job ${job.id} is now ${job.status}.`);
  }
  state.jobStatus = { id: job.id, status: job.status };
  state.cancel.draw(job);
}

// ---- screens ----------------------------------------------------------------------------

function showLogin(note) {
  state.session = "out";
  state.generation++; // a refresh still under way draws nothing now
  stopRefreshing();
  state.cancel.forget(); // the next user may hold other permissions
  $("dashboard").hidden = true;
  $("session").hidden = true;
  $("login").hidden = false;
  $("login-note").hidden = !note;
  $("login-note").textContent = note || "";
  $("login-form").reset();
  $("username").focus();
}

function showDashboard() {
  state.session = "in";
  $("login").hidden = true;
  $("session").hidden = false;
  $("dashboard").hidden = false;
}

function showRoute(route, moveFocus) {
  const isJob = route.view === "job";
  $("list-view").hidden = isJob;
  $("job-view").hidden = !isJob;
  if (!isJob) drawFilters(route.query);
  if (isJob && (!state.route || state.route.view !== "job" || state.route.id !== route.id)) {
    $("job-title").textContent = `Job ${route.id}`;
    $("timeline").replaceChildren();
  }
  if (moveFocus) (isJob ? $("job-title") : $("list-title")).focus();
  state.route = route;
}

// ---- refreshing -------------------------------------------------------------------------

async function readGlance() {
  const [pending, succeeded, failed, lost, dead] = await Promise.all([
    countOf("PENDING"),
    countOf("SUCCEEDED"),
    countOf("FAILED"),
    call(details.lostPath()).then(({ body }) => body),
    call("/dead_letters").then(
      ({ body }) => body.response.count,
      (error) => {
        if (error instanceof ApiError && error.status === 503) return null; // shown as "?"
        throw error;
      },
    ),
  ]);
  return { counts: { PENDING: pending, SUCCEEDED: succeeded, FAILED: failed }, lost, dead };
}

async function readJob(id) {
  // While the job is PENDING its GET is held until it changes (Prefer: wait), instead of a sleep.
  const waiting = state.jobStatus && state.jobStatus.id === Number(id) && state.jobStatus.status === "PENDING";
  const job = await call(`/async_status/${id}`, { headers: waiting ? { Prefer: `wait=${WAIT_S}` } : {} });
  const waited = waiting && job.headers.has("Preference-Applied");
  if (waiting) state.waitsHeld = waited;
  const events = await call(`/async_status/${id}/events`);
  return { job: job.body.response, events: events.body.response, waited };
}

async function refresh() {
  stopRefreshing();
  const generation = ++state.generation;
  const route = state.route;
  const started = Date.now();
  let delay = REFRESH_MS;
  try {
    let drawView;
    if (route.view === "job") {
      const { job, events, waited } = await readJob(route.id);
      if (waited) {
        // The held wait took the place of the sleep; still at most one refresh every REFRESH_MS.
        delay = Math.max(0, REFRESH_MS - (Date.now() - started));
      } else if (job.status === "PENDING" && state.waitsHeld !== false) {
        delay = 0; // a PENDING job just seen: start waiting for it now
      }
      drawView = () => drawJob(job, events);
    } else {
      const { body } = await call(listPath(route.query));
      drawView = () => drawList(route.query, body.response, body.summary);
    }
    const glance = await readGlance();
    if (generation !== state.generation) return;
    showDashboard();
    clearProblem();
    drawView();
    drawGlance(glance.counts, glance.lost, glance.dead);
    state.readable = true;
  } catch (error) {
    if (generation !== state.generation) return;
    delay = REFRESH_MS;
    state.readable = false; // no stream for a page that cannot read (401, 403) or is not answered
    if (error instanceof Unauthenticated) {
      stopFollowing();
      showLogin(state.session === "in" ? "Your session has ended: please log in again." : "");
      return;
    }
    if (error instanceof ApiError && error.status === 403) {
      showDashboard();
      $("dashboard").hidden = true;
      showProblem(`You are logged in, but your role may not read job statuses (${error.message}). Ask an administrator for the operations role.`);
    } else if (error instanceof ApiError && error.status === 404 && route.view === "job") {
      showProblem(`Job ${route.id}: ${error.message} (it may never have existed, or it was purged).`);
    } else if (error instanceof ApiError && error.status === 400 && route.view === "list") {
      showProblem(`The list refused a filter: ${error.message}`);
    } else if (error instanceof ApiError) {
      showProblem(`The tracker answered ${error.status}: ${error.message} Retrying.`);
    } else {
      showProblem("The tracker is not answering. Retrying.");
    }
  }
  scheduleRefresh(delay);
}

function scheduleRefresh(delay) {
  stopRefreshing();
  if (state.session === "out" || document.hidden) return stopFollowing(); // a hidden page asks nothing
  if (state.readable) followChanges(refresh);
  else stopFollowing();
  state.timer = setTimeout(refresh, following() && delay > 0 ? STREAMED_REFRESH_MS : delay);
}

function stopRefreshing() {
  if (state.timer !== null) clearTimeout(state.timer);
  state.timer = null;
}

// ---- events -----------------------------------------------------------------------------

async function logIn(event) {
  event.preventDefault();
  const username = $("username").value;
  const password = $("password").value;
  $("password").value = "";
  if (!username || !password) {
    showProblem("Enter a username and a password.");
    return;
  }
  try {
    await call("/user/login", { method: "POST", body: { u: username, p: password } });
  } catch (error) {
    showProblem(error.message || "The tracker is not answering.");
    $("password").focus();
    return;
  }
  clearProblem();
  state.session = "in";
  showDashboard();
  showRoute(parseRoute(), true);
  refresh();
}

async function logOut() {
  try {
    await call("/user/logout", { method: "POST" });
  } catch {
    // Logged out already (401) or the server is away: the login form is right either way.
  }
  clearProblem();
  state.counts = null;
  stopFollowing();
  showLogin("You are logged out.");
}

function changeFilters() {
  // From the address, not state.route (set at the next hashchange): a change and a submit in a
  // row (Enter in a text box) then make the same address, not the second undoing the first.
  const current = parseRoute();
  if (current.view !== "list") return;
  const query = { ...current.query, page: 1 };
  query.statuses = [...document.querySelectorAll("#filters input[name=status]:checked")].map((box) => box.value);
  query.orderby = $("orderby").value;
  query.sortOrder = $("sortOrder").value;
  query.limit = Number($("limit").value);
  Object.assign(query, details.readFilterControls(current.query));
  go(query);
}

function sortBy(column) {
  const query = { ...state.route.query, page: 1 };
  if (query.orderby === column) query.sortOrder = query.sortOrder === "desc" ? "asc" : "desc";
  else Object.assign(query, { orderby: column, sortOrder: "desc" });
  go(query);
}

function start() {
  state.cancel = jobCancel({ call, refresh, announce, showProblem });
  $("refresh-every").textContent = String(REFRESH_MS / 1000);
  $("login-form").addEventListener("submit", logIn);
  $("logout").addEventListener("click", logOut);
  $("filters").addEventListener("change", changeFilters);
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault(); // Enter in the kind or label box: the filter as typed
    changeFilters();
  });
  for (const header of document.querySelectorAll("th[data-sort]")) {
    header.querySelector("button").addEventListener("click", () => sortBy(header.dataset.sort));
  }
  $("previous").addEventListener("click", () => go({ ...state.route.query, page: state.route.query.page - 1 }));
  $("next").addEventListener("click", () => go({ ...state.route.query, page: state.route.query.page + 1 }));
  $("skip").addEventListener("click", (event) => {
    event.preventDefault(); // the address holds the view: a "#main" there would reset it
    $("main").focus();
  });
  window.addEventListener("hashchange", () => {
    if (!/^(#\/|#?$)/.test(location.hash)) return; // not a view of ours
    const route = parseRoute();
    showRoute(route, route.view !== state.route.view);
    if (state.session !== "out") refresh();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) stopRefreshing();
    else if (state.session === "in") refresh();
  });
  showRoute(parseRoute(), false);
  refresh(); // a 401 shows the login form; a live cookie, the dashboard
}

start();
