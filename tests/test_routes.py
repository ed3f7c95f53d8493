"""The routing table in webapp/app.py is the whole routing table: every route of the built app is written out in
create_app()'s `routes` list, no other module builds routes or sub-routers, and every handler has one style (an
async method of the object holding what it needs). In-process: the app is built, never served."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from webapp import config
from webapp.app import create_app

WEBAPP = Path(__file__).resolve().parent.parent / "webapp"
ROUTING = {"Route", "WebSocketRoute", "Mount", "Router", "Host"}
OTHER_APPS = {"app.py", "engine.py"}  # engine.py: the embedded recognizer's own Flux-compatible server, another app

# (kind, path, methods): the table as it was before issue 18 moved it into one list; a change here is a change of
# the HTTP surface, and belongs in docs/protocol.md or docs/sharing.md too.
EXPECTED = [
    ("Route", "/", {"GET", "HEAD"}),
    ("Route", "/healthz", {"GET", "HEAD"}),
    ("Route", "/metrics", {"GET", "HEAD"}),  # issue 20
    ("Route", "/login", {"POST"}),
    ("Route", "/logout", {"POST"}),
    ("Route", "/favicon.ico", {"GET", "HEAD"}),
    ("WebSocketRoute", "/ws/listen", None),
    ("WebSocketRoute", "/v1/realtime", None),
    ("Route", "/s/{token}", {"GET", "HEAD"}),
    ("Route", "/s/{token}/overlay", {"GET", "HEAD"}),
    ("Route", "/v/{short}", {"GET", "HEAD"}),  # issue 21: the short share link
    ("Route", "/s/{token}/transcript.{fmt}", {"GET", "HEAD"}),
    ("WebSocketRoute", "/ws/watch/{token}", None),
    ("Route", "/sessions", {"GET", "HEAD"}),
    ("Route", "/sessions/{session_id}/revoke", {"POST"}),
    ("Route", "/sessions/{session_id}/share", {"POST"}),
    ("Route", "/sessions/{session_id}/name", {"POST"}),  # issue 21: name and delete, on the page
    ("Route", "/sessions/{session_id}/delete", {"POST"}),
    ("Route", "/api/sessions", {"GET", "HEAD"}),
    ("Route", "/api/sessions/{session_id}", {"PATCH", "DELETE"}),  # issue 21: name and delete, the API
    ("Route", "/api/sessions/{session_id}/share", {"POST", "DELETE"}),
    ("Route", "/api/sessions/{session_id}/qr.svg", {"GET", "HEAD"}),  # issue 21: the share link's QR code
    ("Route", "/api/sessions/{session_id}/transcript.{fmt}", {"GET", "HEAD"}),
    ("Route", "/api/sessions/{session_id}/rules", {"GET", "HEAD", "PUT"}),  # text rules (issue 19)
    ("Route", "/api/sessions/{session_id}/outputs", {"GET", "HEAD", "POST"}),
    ("Route", "/api/sessions/{session_id}/outputs/{output_id}", {"DELETE"}),
    ("Route", "/embed", {"GET", "HEAD"}),
    ("Route", "/embed/snippet", {"GET", "HEAD"}),
    ("Route", "/v1/audio/transcriptions", {"POST"}),  # issue 20: OpenAI-compatible batch (docs/api.md)
    ("Mount", "/static", None),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(config.load({"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": "k",
                                   "DATA_DIR": str(tmp_path_factory.mktemp("data"))}))


def _listed() -> list[tuple[str, str]]:
    """(constructor, path) of each entry of the `routes = [...]` literal in create_app(), read from the source."""
    tree = ast.parse((WEBAPP / "app.py").read_text())
    create_app_def = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "create_app")
    lists = [n.value for n in ast.walk(create_app_def) if isinstance(n, ast.Assign)
             and [getattr(t, "id", None) for t in n.targets] == ["routes"]]
    assert len(lists) == 1 and isinstance(lists[0], ast.List), "create_app() must assign `routes` one list literal"
    entries = []
    for element in lists[0].elts:
        assert isinstance(element, ast.Call) and isinstance(element.func, ast.Name), \
            f"line {element.lineno}: each entry is Route(...), WebSocketRoute(...) or Mount(...), never spliced in"
        path = element.args[0]
        assert isinstance(path, ast.Constant) and isinstance(path.value, str), f"line {element.lineno}: a literal path"
        entries.append((element.func.id, path.value))
    return entries


def test_the_built_app_has_exactly_the_routes_listed_in_create_app(app):
    built = [(type(r).__name__, r.path) for r in app.routes]
    assert built == _listed()


def test_the_routing_table_is_the_one_before_the_move(app):
    built = [(type(r).__name__, r.path, getattr(r, "methods", None)) for r in app.routes]
    assert built == EXPECTED


@pytest.mark.parametrize("module", sorted(str(p.relative_to(WEBAPP)) for p in WEBAPP.rglob("*.py")
                                           if p.name not in OTHER_APPS))
def test_no_other_module_builds_routes(module):
    calls = [n for n in ast.walk(ast.parse((WEBAPP / module).read_text())) if isinstance(n, ast.Call)]
    names = {getattr(c.func, "id", None) or getattr(c.func, "attr", None) for c in calls}
    assert not names & ROUTING, f"{module} builds routes; list them in app.py's create_app() instead"


def test_the_only_mount_is_static_files(app):
    mounts = [r for r in app.routes if isinstance(r, Mount)]
    assert [m.path for m in mounts] == ["/static"]
    assert isinstance(mounts[0].app.app, StaticFiles) and not mounts[0].routes  # NoCache around StaticFiles


def test_every_handler_is_an_async_method_of_its_object(app):
    for route in app.routes:
        if isinstance(route, (Route, WebSocketRoute)):
            assert inspect.ismethod(route.endpoint) and inspect.iscoroutinefunction(route.endpoint), route.path
