"""The JSON API under /api/v1: what the labeling page's JavaScript uses, and scripts.

    GET  /api/v1/me
    GET  /api/v1/projects
    GET  /api/v1/projects/{project}/guidelines
    POST /api/v1/projects/{project}/guidelines/{version}/acknowledge
    GET  /api/v1/tasks/next[?project=NAME]        200 a task, 204 none left
    GET  /api/v1/assignments/{id}
    POST /api/v1/assignments/{id}/ranking         201 stored, 200 the same one again
    PUT  /api/v1/assignments/{id}/ranking         a new version (your last ranked task)
    GET  /api/v1/rankings/last[?project=NAME]     that task with its rankings; 204 none
    POST /api/v1/assignments/{id}/skip
    GET  /api/v1/admin/projects                   (admins)
    POST /api/v1/admin/projects                   201: a project from records (JSON)
    PUT  /api/v1/admin/projects/{project}/guidelines   new guidelines (a new version)
    GET  /api/v1/admin/projects/{project}/status
    GET  /api/v1/admin/projects/{project}/items[?criterion=&prompt_id=]   per-item review
    GET  /api/v1/admin/projects/{project}/export?what=rankings|pairs|consensus
                                 [&criterion=NAME]  (needed for pairs/consensus of several)
                                 [&labeler=NAME]    (one labeler's: a personal project's user)
    GET  /api/v1/admin/labelers
    POST /api/v1/admin/labelers                   201 with the new token (shown once)
    POST /api/v1/admin/labelers/{name}/deactivate  token and sessions end at once
    POST /api/v1/admin/labelers/{name}/reactivate
    POST /api/v1/admin/labelers/{name}/token       a new token (shown once)

Errors are `{"detail": "..."}` (400, 401, 403, 404, 409, 413), and 422 is FastAPI's
validation shape `{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}` whether
the body is malformed or a ranking is not an ordering of the assignment's
completions; at most 20 errors are listed, none echoing what was sent. Bodies are
capped before they are read (`limits.py`): 64 KiB without a valid token, `serve
--max-body-mb` with one. Strings the tables cannot hold (NUL bytes, over-long
names) and ids beyond a PostgreSQL INTEGER get the same 4xx on both databases.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt

from alignloop.schema import SchemaError, check_ranking_groups
from alignloop.server import assign, service
from alignloop.server.auth import Identity, api_admin, api_identity, db_of
from alignloop.server.errors import Invalid

__all__ = ["router"]

router = APIRouter(prefix="/api/v1")
Labeler = Annotated[Identity, Depends(api_identity)]
Admin = Annotated[Identity, Depends(api_admin)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RankingIn(Strict):
    criterion: str | None = Field(
        None,
        max_length=service.CRITERION_MAX,
        description="one of the project's criteria; may be left out (or null) when it has "
        "only one, and is required when it has several",
    )
    ranking: Annotated[list[list[str]], BeforeValidator(check_ranking_groups)] = Field(
        default_factory=list,
        description="groups of completion ids, best first; ids in one group are tied",
        examples=[[["3f2a9c01d4e5b6a7"], ["9b1c2d3e4f5a6b7c", "0a1b2c3d4e5f6a7b"]]],
    )
    unrankable: StrictBool = Field(
        False, description="the labeler cannot rank these (may leave ranking empty)"
    )
    rationale: str = Field("", max_length=assign.RATIONALE_MAX, description="optional free text")
    flag_unsafe: StrictBool = Field(False, description="flag the prompt or a completion as unsafe")


class CompletionOut(BaseModel):
    id: str
    text: str


class Progress(BaseModel):
    labeler_done: int = Field(
        description="your done tasks; in a personal project, of project_prompts (all yours)"
    )
    project_complete_prompts: int
    project_prompts: int
    project_tasks_done: int = Field(description="tasks (a prompt ranked by one labeler) done")
    project_tasks: int = Field(
        description="tasks the project needs: prompts x overlap (personal: x its labelers)"
    )


class MessageOut(BaseModel):
    role: str = Field(description="system, user, assistant or tool")
    content: str


class TaskOut(BaseModel):
    assignment_id: int
    project: str
    personal: bool = Field(
        False, description="a personal project: rank by your own preferences, for yourself"
    )
    prompt: str = Field(
        description="the prompt's text; for a conversation, its turns as plain text "
        '("role: content" paragraphs)'
    )
    messages: list[MessageOut] | None = Field(
        None, description="a conversational prompt's turns, in order; null for a text prompt"
    )
    completions: list[CompletionOut]
    criteria: list[str]
    ranked_criteria: list[str]
    guidelines_version: str
    expires_at: str
    progress: Progress
    status: str = Field(description="pending, done, skipped or expired")


class StoredRanking(BaseModel):
    assignment_id: int
    criterion: str
    ranking: list[list[str]]
    unrankable: bool
    rationale: str
    flag_unsafe: bool
    version: int = Field(description="1 when first submitted; each change adds one")


class RankingOut(StoredRanking):
    created: bool = Field(
        description="False: this ranking was already stored (a retry), nothing changed"
    )
    assignment_complete: bool


class LastRankedOut(TaskOut):
    rankings: list[StoredRanking] = Field(description="the current version of each criterion's")


class SkipOut(BaseModel):
    assignment_id: int
    status: str


class GuidelinesOut(BaseModel):
    project: str
    version: str
    markdown: str
    acknowledged: bool = Field(description="also true where none is needed (personal default)")
    personal: bool = False


class AcknowledgementOut(BaseModel):
    project: str
    version: str
    acknowledged_at: str


class MeOut(BaseModel):
    name: str
    is_admin: bool


class NewLabelerIn(Strict):
    name: str = Field(min_length=1, max_length=service.NAME_MAX)
    admin: StrictBool = False


class NewLabelerOut(BaseModel):
    name: str
    is_admin: bool
    token: str = Field(description="shown once: only its SHA-256 is stored")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "a request the server cannot take (e.g. a bad Content-Length)"},
    401: {"description": "no or unknown token"},
    404: {"description": "no such assignment of yours, or no such project"},
    413: {"description": "the body is over the size limit (serve --max-body-mb)"},
}
CONFLICT = {409: {"description": "the request conflicts with what is stored"}}
# Row ids are PostgreSQL INTEGERs: a bigger id is a 422 on every backend, never a 500.
AssignmentId = Annotated[int, PathParam(ge=1, le=service.DB_INT_MAX)]


@router.get("/me", response_model=MeOut, responses=ERRORS)
def me(who: Labeler) -> MeOut:
    return MeOut(name=who.name, is_admin=who.is_admin)


@router.get("/projects", responses=ERRORS)
def projects(request: Request, who: Labeler) -> list[dict[str, Any]]:
    return [
        {k: p[k] for k in ("name", "criteria", "prompts", "guidelines_version")}
        for p in service.list_projects(db_of(request))
    ]


@router.get("/projects/{project}/guidelines", response_model=GuidelinesOut, responses=ERRORS)
def guidelines(request: Request, project: str, who: Labeler) -> dict[str, Any]:
    return assign.guidelines_for(db_of(request), who.labeler_id, project)


@router.post(
    "/projects/{project}/guidelines/{version}/acknowledge",
    response_model=AcknowledgementOut,
    responses={**ERRORS, 409: {"description": "not the current version"}},
)
def acknowledge(request: Request, project: str, version: str, who: Labeler) -> dict[str, Any]:
    return assign.acknowledge(db_of(request), who.labeler_id, project, version)


@router.get(
    "/tasks/next",
    response_model=TaskOut,
    responses={
        **ERRORS,
        204: {"description": "no task is left for you"},
        409: {"description": "acknowledge the project's current guidelines first"},
    },
)
def next_task(
    request: Request,
    who: Labeler,
    project: Annotated[str | None, Query(description="a project (default: any)")] = None,
) -> Any:
    task = assign.next_task(db_of(request), who.labeler_id, project, now=request.app.state.clock())
    return Response(status_code=204) if task is None else task


@router.get("/assignments/{assignment_id}", response_model=TaskOut, responses=ERRORS)
def get_assignment(request: Request, assignment_id: AssignmentId, who: Labeler) -> dict[str, Any]:
    return assign.get_task(
        db_of(request), who.labeler_id, assignment_id, now=request.app.state.clock()
    )


@router.post(
    "/assignments/{assignment_id}/ranking",
    response_model=RankingOut,
    status_code=201,
    responses={
        **ERRORS,
        200: {"model": RankingOut, "description": "the same ranking was already stored"},
        409: {"description": "a different ranking is stored, or the task was skipped/expired"},
    },
)
def submit(
    request: Request, response: Response, assignment_id: AssignmentId, body: RankingIn, who: Labeler
) -> dict[str, Any]:
    result = assign.submit_ranking(
        db_of(request),
        who.labeler_id,
        assignment_id,
        _submission(body),
        now=request.app.state.clock(),
    )
    if not result["created"]:
        response.status_code = 200
    return result


@router.put(
    "/assignments/{assignment_id}/ranking",
    response_model=RankingOut,
    responses={
        **ERRORS,
        409: {
            "description": "not your last ranked task, nothing to replace by this criterion, "
            "or the task was skipped/expired"
        },
    },
)
def replace(request: Request, assignment_id: AssignmentId, body: RankingIn, who: Labeler) -> Any:
    """Change a ranking of your last ranked task: a new version replaces it in the
    exports (the earlier one is kept). The same ranking again changes nothing."""
    return assign.replace_ranking(
        db_of(request),
        who.labeler_id,
        assignment_id,
        _submission(body),
        now=request.app.state.clock(),
    )


@router.get(
    "/rankings/last",
    response_model=LastRankedOut,
    responses={**ERRORS, 204: {"description": "you have ranked nothing yet (in the project)"}},
)
def last_ranked(
    request: Request,
    who: Labeler,
    project: Annotated[str | None, Query(description="a project (default: any)")] = None,
) -> Any:
    """Your last ranked task with its rankings: what PUT .../ranking may change."""
    task = assign.last_ranked_task(
        db_of(request), who.labeler_id, project, now=request.app.state.clock()
    )
    return Response(status_code=204) if task is None else task


def _submission(body: RankingIn) -> assign.Submission:
    return assign.Submission(
        criterion=body.criterion,
        ranking=body.ranking,
        unrankable=body.unrankable,
        rationale=body.rationale,
        flag_unsafe=body.flag_unsafe,
    )


@router.post(
    "/assignments/{assignment_id}/skip",
    response_model=SkipOut,
    responses={**ERRORS, 409: {"description": "the task is done"}},
)
def skip(request: Request, assignment_id: AssignmentId, who: Labeler) -> dict[str, Any]:
    return assign.skip_assignment(db_of(request), who.labeler_id, assignment_id)


# --- admins ------------------------------------------------------------------------

ADMIN_ERRORS = {**ERRORS, 403: {"description": "not an admin"}}


@router.get("/admin/projects", responses=ADMIN_ERRORS)
def admin_projects(request: Request, who: Admin) -> list[dict[str, Any]]:
    return service.list_projects(db_of(request))


class NewProjectIn(Strict):
    name: str = Field(min_length=1, max_length=service.NAME_MAX, description="no '/'")
    criteria: list[str] = Field(min_length=1, examples=[["helpfulness", "harmlessness"]])
    guidelines: str = Field(
        "", description="the labelers' guidelines (Markdown); optional only when personal"
    )
    prompts: list[dict[str, Any]] = Field(
        min_length=1, description='prompt records: {"id", "prompt", "reference"?, "metadata"?}'
    )
    completions: list[dict[str, Any]] = Field(
        min_length=2, description='completion records: {"id", "prompt_id", "completion", ...}'
    )
    gold: list[dict[str, Any]] = Field(
        default_factory=list, description="ranking records of gold prompts (known rankings)"
    )
    overlap: StrictInt | None = Field(
        None, ge=1, le=service.DB_INT_MAX, description="default 3; none when personal"
    )
    gold_rate: float | None = Field(None, description="default 0.1 with gold, else 0")
    assignment_ttl_s: StrictInt = Field(3600, ge=1, le=service.DB_INT_MAX)
    personal: StrictBool = Field(
        False,
        description="my own preferences: every labeler ranks every prompt for themself "
        "(no overlap, no gold, no agreement); one labeler's pairs fit their weights",
    )


@router.post(
    "/admin/projects",
    response_model=service.ProjectSummary,
    status_code=201,
    responses={**ADMIN_ERRORS, 409: {"description": "a project of that name exists"}},
)
def admin_create_project(request: Request, body: NewProjectIn, who: Admin) -> Any:
    """A project from records, as `alignloop project create` makes it from files (all of
    it or nothing). Errors name the item: `prompts[3]: field 'id': ...`."""
    try:
        prompts = service.parse_records("prompt", body.prompts, "prompts")
        completions = service.parse_records("completion", body.completions, "completions")
        gold = service.parse_records("ranking", body.gold, "gold")
        summary = service.create_project(
            db_of(request),
            name=body.name,
            criteria=body.criteria,
            guidelines=body.guidelines,
            prompts=prompts,
            completions=completions,
            overlap=body.overlap,
            gold=gold,
            gold_rate=body.gold_rate,
            assignment_ttl_s=body.assignment_ttl_s,
            personal=body.personal,
        )
    except SchemaError as e:
        raise Invalid(str(e), "prompts") from None
    return summary


class GuidelinesIn(Strict):
    markdown: str = Field(min_length=1, description="the new guidelines (Markdown)")


class GuidelinesSetOut(BaseModel):
    project: str
    version: str
    changed: bool = Field(description="False: the text was already the current version")


@router.put(
    "/admin/projects/{project}/guidelines",
    response_model=GuidelinesSetOut,
    responses={**ADMIN_ERRORS, **CONFLICT},
)
def admin_set_guidelines(
    request: Request, project: str, body: GuidelinesIn, who: Admin
) -> dict[str, Any]:
    """New guidelines (`alignloop project guidelines`): labelers acknowledge the new
    version before their next task."""
    version, changed = service.set_guidelines(db_of(request), project, body.markdown)
    return {"project": project, "version": version, "changed": changed}


@router.get("/admin/projects/{project}/status", responses=ADMIN_ERRORS)
def admin_status(request: Request, project: str, who: Admin) -> dict[str, Any]:
    return service.project_status(db_of(request), project, now=request.app.state.clock())


@router.get("/admin/projects/{project}/items", responses=ADMIN_ERRORS)
def admin_items(
    request: Request,
    project: str,
    who: Admin,
    criterion: Annotated[str | None, Query(max_length=service.CRITERION_MAX)] = None,
    prompt_id: Annotated[str | None, Query(max_length=service.NAME_MAX)] = None,
) -> list[dict[str, Any]]:
    """Per-item review: each prompt's completions and every labeler's ranking and
    rationale side by side, with the pairs they disagree on (`service.review_items`)."""
    return service.review_items(db_of(request), project, criterion=criterion, prompt_id=prompt_id)


@router.get(
    "/admin/projects/{project}/export",
    responses={
        **ADMIN_ERRORS,
        200: {"content": {"application/x-ndjson": {}}},
        404: {"description": "no such project, or no labeler of that name"},
        422: {"description": "pairs or consensus of several criteria without `criterion`"},
    },
)
def admin_export(
    request: Request,
    project: str,
    who: Admin,
    what: Literal["rankings", "pairs", "consensus"] = "rankings",
    criterion: Annotated[
        str | None,
        Query(
            max_length=service.CRITERION_MAX,
            description="one of the project's criteria; needed for pairs and consensus "
            "when it has several (one file per criterion)",
        ),
    ] = None,
    include_gold: bool = False,
    labeler: Annotated[
        str | None,
        Query(
            max_length=service.NAME_MAX,
            description="only this labeler's records (in a personal project: the pairs "
            "that fit their weights, `alignloop personal fit --user NAME`)",
        ),
    ] = None,
) -> Response:
    records = service.export_project(
        db_of(request),
        project,
        what,
        include_gold=include_gold,
        criterion=criterion,
        labeler=labeler,
    )
    return jsonl_response(records, export_filename(project, what, criterion, labeler))


def export_filename(
    project: str, what: str, criterion: str | None = None, labeler: str | None = None
) -> str:
    """`demo-pairs-helpfulness.jsonl` (`demo-pairs-ann.jsonl`, one labeler's): what an
    export is called when downloaded."""
    parts = [project, what, *(x for x in (criterion, labeler) if x is not None)]
    return "-".join(parts) + ".jsonl"


def jsonl_response(records: list, filename: str) -> Response:
    """Records as a JSONL download; the file name keeps only safe characters."""
    body = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return Response(
        body,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{safe}"'},
    )


@router.post(
    "/admin/labelers",
    response_model=NewLabelerOut,
    status_code=201,
    responses={**ADMIN_ERRORS, **CONFLICT},
)
def admin_add_labeler(
    request: Request, response: Response, body: NewLabelerIn, who: Admin
) -> NewLabelerOut:
    token = service.add_labeler(db_of(request), body.name, admin=body.admin)
    response.headers["Cache-Control"] = "no-store"  # the token must not linger in a cache
    return NewLabelerOut(name=body.name.strip(), is_admin=body.admin, token=token)


class LabelerOut(BaseModel):
    name: str
    is_admin: bool
    active: bool
    created_at: str


@router.get("/admin/labelers", response_model=list[LabelerOut], responses=ADMIN_ERRORS)
def admin_labelers(request: Request, who: Admin) -> list[dict[str, Any]]:
    return service.list_labelers(db_of(request))


@router.post(
    "/admin/labelers/{name}/deactivate",
    response_model=LabelerOut,
    responses={**ADMIN_ERRORS, 409: {"description": "an admin cannot deactivate themselves"}},
)
def admin_deactivate(request: Request, name: str, who: Admin) -> dict[str, Any]:
    """The labeler's token stops working and their sessions end at once; their
    pending tasks go back to the pool."""
    return service.deactivate_labeler(db_of(request), name, by=who.name)


@router.post(
    "/admin/labelers/{name}/reactivate",
    response_model=LabelerOut,
    responses={**ADMIN_ERRORS, **CONFLICT},
)
def admin_reactivate(request: Request, name: str, who: Admin) -> dict[str, Any]:
    return service.reactivate_labeler(db_of(request), name)


@router.post(
    "/admin/labelers/{name}/token",
    response_model=NewLabelerOut,
    responses={**ADMIN_ERRORS, **CONFLICT},
)
def admin_rotate_token(request: Request, response: Response, name: str, who: Admin) -> Any:
    """A new token for the labeler (shown once); the old one and their sessions end."""
    db = db_of(request)
    token = service.rotate_token(db, name)
    response.headers["Cache-Control"] = "no-store"
    labeler = next(lab for lab in service.list_labelers(db) if lab["name"] == name)
    return NewLabelerOut(name=name, is_admin=labeler["is_admin"], token=token)
