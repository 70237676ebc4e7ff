// The dashboard hears of changes from the tracker's stream (SPEC §13) instead of asking every few
// seconds: one EventSource per page, on the list's stream. The browser resumes a dropped stream by
// itself, sending the last cursor it saw (Last-Event-ID), so no change is missed while it was away.

const STREAM_PATH = "/api/5.0/async_status";
const SETTLE_MS = 200; // changes that come together are drawn together: one redraw per burst

let source = null;
let settleTimer = null;

// Start listening, unless the page listens already; onChange() is called (at most once per burst
// of changes) for every change of a job's row, and for a reset (the page reloads what it shows).
export function followChanges(onChange) {
  if (source !== null && source.readyState !== EventSource.CLOSED) return; // closed: refused, say a 503
  stopFollowing();
  source = new EventSource(STREAM_PATH, { withCredentials: true });
  const changed = () => {
    if (settleTimer !== null) return;
    settleTimer = setTimeout(() => {
      settleTimer = null;
      onChange();
    }, SETTLE_MS);
  };
  source.addEventListener("job", changed);
  source.addEventListener("reset", changed);
  // A stream that opens again after a drop may have missed nothing, but what is drawn may be older
  // than the stream's cursor (a change during the first read): read again.
  source.addEventListener("open", changed);
}

// Whether the stream is open now (else the page falls back to asking at its own pace).
export function following() {
  return source !== null && source.readyState === EventSource.OPEN;
}

// The last cursor the page has seen ("" before any), for tests and the curious.
export function lastCursor() {
  return source === null ? "" : String(source.lastEventId ?? "");
}

export function stopFollowing() {
  if (source !== null) source.close();
  source = null;
  if (settleTimer !== null) clearTimeout(settleTimer);
  settleTimer = null;
}
