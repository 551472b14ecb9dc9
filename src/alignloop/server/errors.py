"""What can go wrong in a request or an admin command, with the HTTP status it maps to.

Every error is a `ConfigError` (a ValueError), so the CLI prints it as `error: ...`
and exits with status 2, and the API answers with its `status` and the message.
"""

from __future__ import annotations

from alignloop.config import ConfigError

__all__ = [
    "AssignmentExpired",
    "Conflict",
    "GuidelinesRequired",
    "Invalid",
    "NotFound",
    "ServerError",
]


class ServerError(ConfigError):
    status = 400


class NotFound(ServerError):
    status = 404


class Conflict(ServerError):
    status = 409


class AssignmentExpired(Conflict):
    """A pending assignment expired and its slot went to another labeler."""

    def __init__(self, assignment_id: int):
        self.assignment_id = assignment_id
        super().__init__(
            f"assignment {assignment_id} expired and its prompt went to another labeler; "
            "fetch a new task"
        )


class GuidelinesRequired(Conflict):
    """The labeler has not acknowledged the current guidelines of a project."""

    def __init__(self, project: str, version: str):
        self.project, self.version = project, version
        super().__init__(
            f"read and acknowledge the guidelines of project {project!r} first (version "
            f"{version[:12]}): GET /api/v1/projects/{project}/guidelines, then POST "
            f"/api/v1/projects/{project}/guidelines/{version}/acknowledge"
        )


class Invalid(ServerError):
    """A request whose content is wrong; `field` names the body field at fault."""

    status = 422

    def __init__(self, message: str, field: str):
        self.field = field
        super().__init__(message)
