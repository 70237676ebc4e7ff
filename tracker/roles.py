"""Who may do what: the roles, the permissions each grants, and the check (no I/O, no crypto)."""

from __future__ import annotations

from tracker.errors import PermissionDenied

READ = "ASYNC-STATUS:READ"
CREATE = "ASYNC-STATUS:CREATE"
CANCEL = "ASYNC-STATUS:CANCEL"  # SPEC §12

ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset({READ, CREATE, CANCEL}),
    "operations": frozenset({READ, CREATE, CANCEL}),
    "read-only": frozenset(),
}


def permissions_of(role: str) -> frozenset[str]:
    """The permissions a role grants; ``admin`` has every permission there is."""
    return ROLES.get(role, frozenset())


def require(role: str, permission: str) -> None:
    """Raise PermissionDenied unless ``role`` grants ``permission``."""
    if role != "admin" and permission not in permissions_of(role):
        raise PermissionDenied(permission)
