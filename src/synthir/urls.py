"""Server URLs: an LLM block's `base_url`, one server or a fleet, parsed once for the params check and the client.

Messages echo a URL without its user:password.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

from .errors import excerpt

_CREDENTIALS = re.compile(r"(?<=//)[^/?#]*@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_SERVERS = 1024
"""Servers one `base_url` list (a fleet) may name."""


def split_http_url(value: str) -> SplitResult:
    """`value`'s parts if it is an http(s) URL with a host; a ValueError saying what is wrong otherwise (echoing
    the URL without its user:password)."""
    shown = excerpt(_CREDENTIALS.sub("***@", value))
    if _CONTROL.search(value):  # urlsplit would silently drop tabs and newlines
        raise ValueError(f"{shown} contains a control character")
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as error:
        raise ValueError(f"{shown} is not a URL ({str(error)[:80]})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown} is not an http(s) URL with a host, e.g. http://localhost:8000/v1")
    return parts


def server_roots(base_url: str | list[str]) -> list[tuple[str, str]]:
    """(root, shown) for each server `base_url` names: one URL, or a list of them (a fleet). `root` is the URL
    with a lower-case scheme and host and without a trailing slash or /v1; `shown` the same without user:password
    (what messages and the cache identity show). A ValueError for a bad URL, an empty or oversized list, or a
    server listed twice."""
    urls = [base_url] if isinstance(base_url, str) else base_url
    if not isinstance(urls, list) or not urls:
        raise ValueError("an empty list: name at least one server, e.g. [http://gpu1:8000/v1, http://gpu2:8000/v1]")
    if len(urls) > MAX_SERVERS:
        raise ValueError(f"lists {len(urls)} servers; at most {MAX_SERVERS}")
    roots: list[tuple[str, str]] = []
    for number, url in enumerate(urls, 1):
        where = "" if isinstance(base_url, str) else f"entry {number}: "
        if not isinstance(url, str):
            raise ValueError(f"{where}{excerpt(url)} is not a URL")
        try:
            parts = split_http_url(url)
        except ValueError as error:
            raise ValueError(f"{where}{error}") from None
        credentials, _, host = parts.netloc.rpartition("@")
        path = parts.path.rstrip("/").removesuffix("/v1")
        shown = f"{parts.scheme.lower()}://{host.lower()}{path}"
        twin = next((i for i, (_, other) in enumerate(roots, 1) if other == shown), None)
        if twin is not None:
            raise ValueError(f"entries {twin} and {number} name the same server {shown}/v1")
        roots.append((shown.replace("://", f"://{credentials}@", 1) if credentials else shown, shown))
    return roots
