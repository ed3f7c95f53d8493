"""The one Jinja2Templates every page renders with (templates/), and the static files' version stamp."""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.templating import Jinja2Templates

ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = ROOT / "static"
TEMPLATES_DIR = ROOT / "templates"


def asset_version() -> str:
    """Changes whenever a static file changes, so browsers never run a stale worklet."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.glob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def page_templates(version: str) -> Jinja2Templates:
    """Every page links its static files as ?v=`asset_version`, so it is a global rather than in each context."""
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    templates.env.globals["asset_version"] = version
    return templates
