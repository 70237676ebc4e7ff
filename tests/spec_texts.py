"""The alert texts of SPEC §2, copied from SPEC.md as literals (never imported from the code, so a
changed text in the code fails the tests instead of changing them along)."""

from __future__ import annotations

NOT_IMPLEMENTED = (
    "The requested api version is not implemented by this server. If you are using a newer "
    "client with an older server, you will need to use an older client version or upgrade your server."
)
ID_NOT_INTEGER = "getting integer parameters: parameter 'id' not an integer"
NOT_FOUND = "Not Found"
UNAUTHORIZED = "unauthorized, please log in."
MISSING_READ = "missing required Permissions: ASYNC-STATUS:READ"
LOGGED_IN = "Successfully logged in."
CREDENTIALS_REQUIRED = "username and password are required"
INVALID_CREDENTIALS = "Invalid username or password."
# SPEC §2's 200 of GET /api/{v}/async_status/{id}, byte for byte; the seed's Response Example
# (seeds/async_status.rst) is the same JSON, written over several lines.
SEED_GET_BODY = (
    b'{"response":{"id":1,"status":"PENDING","start_time":"2021-02-18T17:13:56.352261Z",'
    b'"end_time":null,"message":"Async job has started."}}'
)
SEED_RESPONSE_EXAMPLE = """{ "response":
{
"id":1,
"status":"PENDING",
"start_time":"2021-02-18T17:13:56.352261Z",
"end_time":null,
"message":"Async job has started."
}
}"""


def no_such_path(path: str) -> str:
    return f"The requested path '{path}' does not exist."


def job_started(version: str, job_id: int) -> str:
    return f"Async job has started. Status updates can be found here: /api/{version}/async_status/{job_id}"


# SPEC §12, with its placeholders as format fields.
MISSING_CANCEL = "missing required Permissions: ASYNC-STATUS:CANCEL"
CANCEL_REQUESTED = "Cancellation of job {id} requested."
ALREADY_FINISHED = "job {id} has already finished: {status}"
CANCELLED_BY = "Cancellation requested by {user}."
CANCEL_GRACE_MESSAGE = "cancelled: the worker did not stop within {n} s"
