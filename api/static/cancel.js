// The Cancel button of a PENDING job's page (SPEC §12), for users who hold ASYNC-STATUS:CANCEL,
// with a confirmation. Imported by dashboard.js, which gives it its `call` (the API) and `refresh`.
// Every value from the API is put on the page as text, never as HTML.

// Whether the user may cancel is read from GET /user/current, which lists the permissions of the
// caller's role. Asked once per login (`forget` on logout).
const PERMISSION = "ASYNC-STATUS:CANCEL";

export function jobCancel({ call, refresh, announce, showProblem }) {
  let permitted = null; // null: not asked yet in this session; then a Promise of a boolean
  let shown = null; // the job the section was drawn for: {id, status, cancel_requested_at}

  const section = document.createElement("section");
  section.id = "cancel";
  section.setAttribute("aria-labelledby", "cancel-title");
  section.hidden = true;
  const title = document.createElement("h3");
  title.id = "cancel-title";
  title.textContent = "Cancel";
  const note = document.createElement("p");
  note.id = "cancel-note";
  const open = document.createElement("button");
  open.type = "button";
  open.id = "cancel-job";
  open.textContent = "Cancel this job";
  section.append(title, note, open);

  // The confirmation: a modal dialog, so that one click cannot cancel a job by mistake.
  const dialog = document.createElement("dialog");
  dialog.id = "cancel-dialog";
  dialog.setAttribute("aria-labelledby", "cancel-question");
  const form = document.createElement("form");
  form.method = "dialog";
  const question = document.createElement("p");
  question.id = "cancel-question";
  const reasonLabel = document.createElement("label");
  reasonLabel.htmlFor = "cancel-reason";
  reasonLabel.textContent = "Why (optional)";
  const reason = document.createElement("input");
  reason.id = "cancel-reason";
  reason.maxLength = 4096;
  const confirm = document.createElement("button");
  confirm.value = "confirm";
  confirm.id = "cancel-confirm";
  confirm.textContent = "Yes, cancel it";
  const keep = document.createElement("button");
  keep.value = "keep";
  keep.textContent = "No, keep it running";
  const failure = document.createElement("p");
  failure.className = "problem";
  failure.setAttribute("role", "alert");
  failure.hidden = true;
  form.append(question, reasonLabel, reason, confirm, keep);
  dialog.append(form, failure);

  document.getElementById("job-fields").after(section, dialog);

  open.addEventListener("click", () => {
    question.textContent =
      `Cancel job ${shown.id}? Its worker is told to stop; if it is still running after the grace, ` +
      "the tracker fails the job. This cannot be undone.";
    reason.value = "";
    failure.hidden = true;
    dialog.showModal();
  });
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "confirm" || shown === null) return;
    const id = shown.id;
    const body = reason.value ? { message: reason.value } : {};
    try {
      const { body: answer } = await call(`/async_status/${id}/cancel`, { method: "POST", body });
      announce(answer.alerts.map((alert) => alert.text).join(" "));
      draw(answer.response);
      refresh();
    } catch (error) {
      showProblem(`Job ${id} could not be cancelled: ${error.message}`);
    }
  });

  async function mayCancel() {
    if (permitted === null) {
      permitted = call("/user/current").then(
        ({ body }) => Array.isArray(body?.response?.permissions) && body.response.permissions.includes(PERMISSION),
        () => {
          permitted = null; // not answered (the API away, the session ended): no button, asked again next time
          return false;
        },
      );
    }
    return permitted;
  }

  async function draw(job) {
    shown = { id: job.id, status: job.status, cancel_requested_at: job.cancel_requested_at ?? null };
    if (job.status !== "PENDING" || !(await mayCancel()) || shown.id !== job.id) {
      section.hidden = true;
      return;
    }
    const asked = job.cancel_requested_at;
    note.textContent = asked
      ? `Cancellation requested at ${asked.slice(0, 10)} ${asked.slice(11, 19)} UTC: waiting for the worker to stop.`
      : "Ask the job's worker to stop. The job then ends FAILED, with error code cancelled.";
    open.hidden = Boolean(asked);
    section.hidden = false;
  }

  function forget() {
    permitted = null;
  }

  return { draw, hide: () => (section.hidden = true), forget };
}
