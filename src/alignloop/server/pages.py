"""The HTML pages: sign-in, guidelines, labeling, and the admin's pages (projects,
a new project from files, per-item review, labelers).

Templates are Jinja2 with autoescaping on, so whatever a model wrote shows as text.
Markdown rendered to HTML (the guidelines, and prompts on the review page) has raw
HTML disabled (a `<script>` in it shows as text too); the labeling page builds a
prompt's Markdown itself, as elements with textContent. Pages carry no inline
script: the labeling page's data reach `rank.js` through data- attributes and a
JSON script tag (which the browser does not run), and the Content Security Policy
(see `app.py`) allows scripts from this server only.

Every word on the pages comes from the catalogue of the request's language
(`alignloop.server.i18n`: the browser's Accept-Language, or the switch's cookie).
Error pages (`error.html`, rendered by `app.py`'s handlers) say what happened in
words and where to go on.

Every form posts the session's CSRF token; the sign-in form, before there is a
session, uses a double-submit cookie instead.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markdown_it import MarkdownIt
from starlette.concurrency import run_in_threadpool

from alignloop.schema import SchemaError
from alignloop.server import assign, i18n, service
from alignloop.server.api import export_filename, jsonl_response
from alignloop.server.auth import (
    SESSION_LIFETIME,
    Identity,
    db_of,
    end_session,
    page_identity,
    session_identity,
    start_session,
)
from alignloop.server.errors import Conflict, Invalid, NotFound, ServerError
from alignloop.server.security import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    new_csrf_token,
    same_secret,
)

__all__ = ["render", "router"]

router = APIRouter(include_in_schema=False)
Page = Annotated[Identity, Depends(page_identity)]

_env = Environment(
    loader=PackageLoader("alignloop.server", "templates"),
    autoescape=select_autoescape(["html"], default=True),
)
# CommonMark with tables; raw HTML in the Markdown is shown as text, and link
# targets such as javascript: are refused by markdown-it's own check.
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def language(request: Request) -> str:
    """The page's language (see `alignloop.server.i18n.choose`)."""
    return i18n.choose(request.cookies.get(i18n.COOKIE), request.headers.get("accept-language"))


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """The template in the request's language: `t` is its catalogue, `here` the
    page's own path (for the language switch and the error page's links)."""
    lang = language(request)
    if template == "error.html":
        context = {**_error_context(request, context["status_code"]), **context}
    html = _env.get_template(template).render(
        request=request,
        lang=lang,
        html_lang=i18n.LANGUAGES[lang][1],
        languages=[(code, name) for code, (name, _) in i18n.LANGUAGES.items()],
        t=i18n.translator(lang),
        here=_here(request),
        **context,
    )
    return HTMLResponse(html, status_code=status)


def _here(request: Request) -> str:
    query = f"?{request.url.query}" if request.url.query else ""
    return _safe_next(request.url.path + query)


# Error pages: the catalogue's title and explanation by status ("error.KIND.title").
_ERROR_KINDS = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "too_many",
    500: "server",
}


def _error_context(request: Request, status: int) -> dict[str, Any]:
    """What error.html needs beside the status and message (app.py renders it): the
    kind of error for its words, and who is signed in, if anyone, for its links."""
    try:
        who = session_identity(request)
    except Exception:  # the database itself may be what failed
        who = None
    return {"kind": _ERROR_KINDS.get(status, "other"), "who": who, "back": _back(request)}


def _back(request: Request) -> str:
    """Where "try again" goes: this page, or for a form post the page that sent it
    (when it is one of this site's)."""
    if request.method == "GET":
        return _here(request)
    sent_from = urlsplit(request.headers.get("referer", ""))
    if sent_from.netloc != request.url.netloc:
        return "/"
    return _safe_next(sent_from.path + (f"?{sent_from.query}" if sent_from.query else ""))


class CsrfFailed(ServerError):
    status = 403


def form_identity(request: Request, csrf_token: Annotated[str, Form()] = "") -> Identity:
    """The signed-in labeler of a form post whose `csrf_token` field is the session's:
    the dependency of every POST page but sign-in (`CSRF_CHECKS`; a test holds every
    POST route of this router to it)."""
    identity = page_identity(request)
    if not same_secret(csrf_token, identity.csrf_token):
        raise CsrfFailed("the form's security token is missing or stale: reload the page")
    return identity


def login_csrf(request: Request, csrf_token: Annotated[str, Form()] = "") -> None:
    """The sign-in form, before there is a session: a double-submit cookie."""
    if not same_secret(csrf_token, request.cookies.get(LOGIN_CSRF_COOKIE)):
        raise CsrfFailed("the sign-in form's security token is missing or stale: reload the page")


FormPage = Annotated[Identity, Depends(form_identity)]  # a POST page: signed in, CSRF checked
CSRF_CHECKS = (form_identity, login_csrf)


def _cookie_secure(request: Request) -> bool:
    return request.app.state.secure_cookies or request.url.scheme == "https"


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no //host): no open redirect."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


# --- signing in and out ---------------------------------------------------------


@router.get("/login")
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return _login_page(request, next)


def _login_page(request: Request, next: str, *, error: str | None = None, status: int = 200):
    """The sign-in form with a fresh CSRF token, also set in its own cookie."""
    csrf = new_csrf_token()
    response = render(
        request, "login.html", status=status, csrf=csrf, next=_safe_next(next), error=error
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        csrf,
        httponly=True,
        samesite="lax",
        secure=_cookie_secure(request),
        max_age=3600,
        path="/login",
    )
    return response


@router.post("/login", dependencies=[Depends(login_csrf)])
def login(
    request: Request,
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    started = start_session(db_of(request), token.strip())
    if started is None:
        error = i18n.translator(language(request))("login.unknown")
        return _login_page(request, next, error=error, status=401)
    session_id, _ = started
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        httponly=True,
        samesite="lax",
        secure=_cookie_secure(request),
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, who: FormPage) -> Response:
    end_session(db_of(request), request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- labelers ----------------------------------------------------------------------


@router.get("/")
def home(request: Request, who: Page) -> HTMLResponse:
    db = db_of(request)
    projects = []
    for p in service.list_projects(db):
        g = assign.guidelines_for(db, who.labeler_id, p["name"])
        projects.append({**p, "acknowledged": g["acknowledged"]})
    return render(request, "home.html", who=who, projects=projects)


@router.get("/projects/{project}/guidelines")
def guidelines_page(request: Request, project: str, who: Page) -> HTMLResponse:
    g = assign.guidelines_for(db_of(request), who.labeler_id, project)
    return render(
        request,
        "guidelines.html",
        who=who,
        g=g,
        html=_markdown.render(g["markdown"]),
        label_url=f"/projects/{quote(project, safe='')}/label",
    )


@router.post("/projects/{project}/guidelines/acknowledge")
def acknowledge_page(
    request: Request,
    project: str,
    who: FormPage,
    version: Annotated[str, Form()] = "",
) -> Response:
    assign.acknowledge(db_of(request), who.labeler_id, project, version)
    return RedirectResponse(f"/projects/{quote(project, safe='')}/label", status_code=303)


@router.get("/projects/{project}/label")
def label_page(request: Request, project: str, who: Page) -> Response:
    g = assign.guidelines_for(db_of(request), who.labeler_id, project)
    if not g["acknowledged"]:
        return RedirectResponse(f"/projects/{quote(project, safe='')}/guidelines", status_code=303)
    return render(
        request,
        "label.html",
        who=who,
        project=project,
        js_strings=i18n.js_strings(language(request)),
        guidelines_html=_markdown.render(g["markdown"]),
        guidelines_version=g["version"],
        personal=g["personal"],
    )


@router.get("/language/{code}")
def switch_language(code: str, next: str = "/") -> Response:
    """The language switch: remembers the choice in a cookie (a display preference,
    so a plain link), then goes back to the page."""
    if code not in i18n.LANGUAGES:
        raise NotFound(f"no language {code!r}; known: {', '.join(i18n.LANGUAGES)}")
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(i18n.COOKIE, code, max_age=365 * 24 * 3600, samesite="lax", path="/")
    return response


# --- admins -------------------------------------------------------------------------


class NotAdmin(ServerError):
    status = 403


def _admin(request: Request, who: Identity) -> None:
    if not who.is_admin:
        raise NotAdmin(i18n.translator(language(request))("error.not_admin"))


@router.get("/admin")
def admin_home(request: Request, who: Page) -> HTMLResponse:
    _admin(request, who)
    return render(
        request, "admin_index.html", who=who, projects=service.list_projects(db_of(request))
    )


# Before /admin/projects/{project}, which would take "new" for a project name.
@router.get("/admin/projects/new")
def admin_new_project_form(request: Request, who: Page) -> HTMLResponse:
    _admin(request, who)
    return render(request, "admin_new_project.html", who=who, form={})


@router.post("/admin/projects/new")
async def admin_new_project(
    request: Request,
    who: FormPage,
    name: Annotated[str, Form()] = "",
    criteria: Annotated[str, Form()] = "",
    overlap: Annotated[str, Form()] = "3",
    assignment_ttl_min: Annotated[str, Form()] = "60",
    gold_rate: Annotated[str, Form()] = "",
    guidelines: Annotated[str, Form()] = "",
    personal: Annotated[bool, Form()] = False,
    prompts: Annotated[UploadFile | None, File()] = None,
    completions: Annotated[UploadFile | None, File()] = None,
    gold: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """A project from uploaded JSONL files (prompts, completions, optional gold
    rankings), as `alignloop project create` makes it: all of it or nothing. A
    mistake shows the form again, filled in, with what is wrong (the file and line).
    A personal project takes no overlap (the field is not read) and no gold."""
    _admin(request, who)
    form = {
        "name": name,
        "criteria": criteria,
        "overlap": overlap,
        "assignment_ttl_min": assignment_ttl_min,
        "gold_rate": gold_rate,
        "guidelines": guidelines,
        "personal": personal,
    }
    t = i18n.translator(language(request))
    try:
        files = {}
        for kind, upload, needed in (
            ("prompt", prompts, True),
            ("completion", completions, True),
            ("ranking", gold, False),
        ):
            if upload is None or not upload.filename:
                if needed:
                    raise Invalid(t("new.file_missing", kind=kind), kind)
                files[kind] = []
                continue
            raw = await upload.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Invalid(t("new.not_utf8", file=upload.filename), kind) from None
            files[kind] = service.parse_records(kind, text, upload.filename)
        summary = await run_in_threadpool(
            service.create_project,
            db_of(request),
            name=name.strip(),
            criteria=[c.strip() for c in criteria.split(",") if c.strip()],
            guidelines=guidelines,
            prompts=files["prompt"],
            completions=files["completion"],
            overlap=None if personal else _form_int(overlap, "overlap", t),
            gold=files["ranking"],
            gold_rate=_form_float(gold_rate, "gold_rate", t) if gold_rate.strip() else None,
            assignment_ttl_s=60 * _form_int(assignment_ttl_min, "assignment_ttl_min", t),
            personal=personal,
        )
    except (SchemaError, ServerError) as e:
        problems = getattr(e, "problems", None) or [str(e)]
        return render(
            request,
            "admin_new_project.html",
            status=409 if isinstance(e, Conflict) else 422,
            who=who,
            form=form,
            problems=problems,
        )
    return RedirectResponse(f"/admin/projects/{quote(summary.name, safe='')}", status_code=303)


def _form_int(value: str, field: str, t) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise Invalid(t("new.not_a_number", field=t(f"new.{field}")), field) from None


def _form_float(value: str, field: str, t) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        number = float("nan")
    if number != number:  # NaN, or not a number at all
        raise Invalid(t("new.not_a_number", field=t(f"new.{field}")), field)
    return number


@router.get("/admin/projects/{project}")
def admin_project(request: Request, project: str, who: Page) -> HTMLResponse:
    _admin(request, who)
    db = db_of(request)
    status = service.project_status(db, project, now=request.app.state.clock())
    (summary,) = service.list_projects(db, name=status["project"])
    return render(
        request,
        "admin_project.html",
        who=who,
        s=status,
        quoted=quote(project, safe=""),
        tasks_done=summary["assignments_done"],  # the pages' one progress unit
        tasks_needed=summary["assignments_needed"],
    )


REVIEW_SHOWN = 100  # items on one review page; the filters narrow it down


@router.get("/admin/projects/{project}/review")
def admin_review(
    request: Request,
    project: str,
    who: Page,
    criterion: str | None = None,
    prompt_id: str | None = None,
    only: str = "",
) -> HTMLResponse:
    """Per-item review: each prompt, its completions and every labeler's ranking and
    rationale side by side, the pairs they ordered both ways highlighted. `only`:
    "contested" (some pair ordered both ways) or "flagged" (flagged unsafe)."""
    _admin(request, who)
    db = db_of(request)
    (summary,) = service.list_projects(db, name=project) or [None]
    if summary is None:
        raise NotFound(f"no project named {project!r}")
    items = service.review_items(
        db, project, criterion=criterion or None, prompt_id=prompt_id or None
    )
    if only == "contested":
        items = [i for i in items if any(c["contested"] for c in i["criteria"].values())]
    elif only == "flagged":
        items = [i for i in items if i["flagged"]]
    return render(
        request,
        "admin_review.html",
        who=who,
        project=summary,
        quoted=quote(project, safe=""),
        items=[_review_view(item) for item in items[:REVIEW_SHOWN]],
        total=len(items),
        shown=min(len(items), REVIEW_SHOWN),
        filters={"criterion": criterion or "", "prompt_id": prompt_id or "", "only": only},
    )


def _review_view(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the review page shows it: completions lettered A, B, ... in the
    files' order; each ranking as groups of letters, a letter of a contested pair
    marked."""
    letter = {
        c["id"]: chr(65 + i) if i < 26 else str(i + 1) for i, c in enumerate(item["completions"])
    }
    criteria = {}
    for name, per in item["criteria"].items():
        contested = {c for pair in per["contested"] for c in pair}
        criteria[name] = {
            "agreement": per["agreement"],
            "contested": [f"{letter[a]} / {letter[b]}" for a, b in per["contested"]],
            "rankings": [
                {
                    **r,
                    "groups": [
                        [{"letter": letter[c], "contested": c in contested} for c in group]
                        for group in r["ranking"]
                    ],
                }
                for r in per["rankings"]
            ],
        }
    return {
        **item,
        "prompt_html": _markdown.render(item["prompt"]),
        "turns": [  # a conversation's, each message's content as Markdown
            {"role": m["role"], "html": _markdown.render(m["content"])}
            for m in item["messages"] or ()
        ],
        "completions": [{**c, "letter": letter[c["id"]]} for c in item["completions"]],
        "criteria": criteria,
    }


@router.get("/admin/projects/{project}/export/{what}")
def admin_export(
    request: Request,
    project: str,
    what: str,
    who: Page,
    criterion: str | None = None,
    labeler: str | None = None,
) -> Response:
    """A download; pairs and consensus of a project with several criteria come one
    criterion at a time (the page offers a button per criterion), and a personal
    project's page offers each labeler's pairs (`labeler`)."""
    _admin(request, who)
    records = service.export_project(
        db_of(request), project, what, criterion=criterion, labeler=labeler
    )
    return jsonl_response(records, export_filename(project, what, criterion, labeler))


def _labelers_page(
    request: Request, who: Identity, *, status: int = 200, new=None, notice=None
) -> HTMLResponse:
    """The labelers' page; `new` shows a token once (then no cache may keep the page),
    `notice` says what the last action did."""
    response = render(
        request,
        "admin_labelers.html",
        status=status,
        who=who,
        labelers=service.list_labelers(db_of(request)),
        new=new,
        notice=notice,
    )
    if new is not None:
        response.headers["Cache-Control"] = "no-store"  # the token must not linger in a cache
    return response


@router.get("/admin/labelers")
def admin_labelers(request: Request, who: Page) -> HTMLResponse:
    _admin(request, who)
    return _labelers_page(request, who)


@router.post("/admin/labelers")
def admin_add_labeler(
    request: Request,
    who: FormPage,
    name: Annotated[str, Form()] = "",
    admin: Annotated[bool, Form()] = False,
) -> HTMLResponse:
    _admin(request, who)
    token = service.add_labeler(db_of(request), name, admin=admin)
    new = {"name": name.strip(), "token": token, "admin": admin, "rotated": False}
    return _labelers_page(request, who, status=201, new=new)


@router.post("/admin/labelers/{name}/deactivate")
def admin_deactivate_labeler(request: Request, name: str, who: FormPage) -> HTMLResponse:
    """Their token stops working and their sessions end at once."""
    _admin(request, who)
    service.deactivate_labeler(db_of(request), name, by=who.name)
    return _labelers_page(request, who, notice=("admin.deactivated", name))


@router.post("/admin/labelers/{name}/reactivate")
def admin_reactivate_labeler(request: Request, name: str, who: FormPage) -> HTMLResponse:
    _admin(request, who)
    service.reactivate_labeler(db_of(request), name)
    return _labelers_page(request, who, notice=("admin.reactivated", name))


@router.post("/admin/labelers/{name}/token")
def admin_rotate_token(request: Request, name: str, who: FormPage) -> Response:
    """A new token, shown once; the old one and the labeler's sessions end (an admin
    renewing their own token is signed out after this page)."""
    _admin(request, who)
    token = service.rotate_token(db_of(request), name)
    (labeler,) = [lab for lab in service.list_labelers(db_of(request)) if lab["name"] == name]
    new = {"name": name, "token": token, "admin": labeler["is_admin"], "rotated": True}
    return _labelers_page(request, who, new=new)
