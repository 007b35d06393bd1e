"""The latent explorer: a browser page at `/` on the HTTP port (docs/explorer.md; `--no-ui` turns it off).

Static files only (static/: index.html, style.css, the ES modules under static/js/, and the validation
digits the page encodes, written by `python -m training.explorer_digits`). Nothing is fetched from elsewhere
and nothing is built: the page's only way to the models is the public Open Inference Protocol REST API on
the same port (/v2/...), so it is an example of that API as much as a tool.

    GET /          index.html (with a Content-Security-Policy that allows this origin only)
    GET /ui/...    the other static files
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/ui"
# The page may load and talk to this origin only; images it builds itself are data:/blob: URLs.
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


class _Static(StaticFiles):
    """StaticFiles that asks browsers to revalidate (a restarted server may ship a newer page)."""

    def file_response(self, *args, **kwargs) -> Response:  # type: ignore[override]
        response = super().file_response(*args, **kwargs)
        response.headers.update(_HEADERS)
        return response


async def _index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=_HEADERS, media_type="text/html; charset=utf-8")


def routes() -> list[BaseRoute]:
    """The page's routes, to add to the HTTP app after the API's."""
    return [Route("/", _index, methods=["GET", "HEAD"]),
            Mount(PREFIX, app=_Static(directory=STATIC), name="ui")]
