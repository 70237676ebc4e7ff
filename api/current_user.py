"""GET /api/{version}/user/current: who the caller is and what their role lets them do, read-only.

Traffic Ops' endpoint of that name answers the logged-in user's record. The tracker's users have a
username, a role and a creation time only, so the answer holds those fields of Traffic Ops' shape
that apply (``username``, ``role``, ``localUser``) and adds ``permissions`` (the role's, sorted), which
a client such as the dashboard needs to know which controls to show without trying them.
"""

from __future__ import annotations

from typing import Any

import falcon

from api.middleware import requires
from tracker import roles
from tracker.users import User


def current_user_view(user: User) -> dict[str, Any]:
    """The body's ``response``: the fields of Traffic Ops' user that the tracker has, and the permissions."""
    return {
        "username": user.username,
        "role": user.role,
        "localUser": True,  # every tracker user has a password in the tracker's own table
        "permissions": sorted(roles.permissions_of(user.role)),
    }


class CurrentUser:
    """GET /api/{version}/user/current: any logged-in caller, whatever their role, may read themselves."""

    @requires()
    def on_get(self, req: falcon.Request, resp: falcon.Response, version: str) -> None:
        resp.media = {"response": current_user_view(req.context.user)}
