"""What a docs page needs to work offline: every script, stylesheet and icon it loads comes from the app itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx

# What each kind of asset must be served as (Python < 3.12 names JavaScript application/javascript).
CONTENT_TYPES = {"script": ("text/javascript", "application/javascript"), "stylesheet": ("text/css",),
                 "icon": ("image/png",)}


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: dict[str, str] = {}  # url -> kind

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script" and attributes.get("src"):
            self.urls[str(attributes["src"])] = "script"
        elif tag == "link" and attributes.get("href"):
            rel = attributes.get("rel") or ""
            self.urls[str(attributes["href"])] = "stylesheet" if rel == "stylesheet" else "icon"


async def assert_page_loads_locally(client: httpx.AsyncClient, page: str) -> dict[str, str]:
    """GET the page and every asset it names; returns the assets, url -> kind."""
    response = await client.get(page)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    # No host but the one serving the page: no http(s):// and no protocol-relative //host URL anywhere.
    assert not re.search(r"https?://|[\"'(]//", response.text), response.text
    parser = _Assets()
    parser.feed(response.text)
    assert "script" in parser.urls.values(), response.text
    for url, kind in parser.urls.items():
        assert url.startswith("/docs/assets/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, (url, asset.status_code)
        assert asset.headers["content-type"].split(";")[0] in CONTENT_TYPES[kind], (url, asset.headers)
        assert len(asset.content) > 1000, url
    return parser.urls
