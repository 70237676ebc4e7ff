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


def no_such_path(path: str) -> str:
    return f"The requested path '{path}' does not exist."


def job_started(version: str, job_id: int) -> str:
    return f"Async job has started. Status updates can be found here: /api/{version}/async_status/{job_id}"
