"""Small helpers for reading registry responses: bounded bodies, error summaries, links."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx

# Error bodies are only summarized; never read more than this of one.
ERROR_BODY_LIMIT = 64 * 1024
_SUMMARY_LIMIT = 200
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;[^,]*?\brel\s*=\s*"?next"?', re.IGNORECASE)


async def iter_raw(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body's bytes as sent (no content decoding), in network-sized chunks."""
    if response.is_stream_consumed:
        # A response built in memory (httpx.MockTransport from bytes) arrives read.
        yield response.content
        return
    async for chunk in response.aiter_raw():
        yield chunk


async def read_limited(response: httpx.Response, limit: int, *, raw: bool = False) -> bytes:
    """Read at most ``limit + 1`` bytes of the body, so that "too long" is detectable.

    ``raw`` skips content decoding: a blob's bytes are what its digest covers,
    even when a storage backend labels them ``Content-Encoding: gzip``.
    """
    chunks: list[bytes] = []
    count = 0
    stream = iter_raw(response) if raw else response.aiter_bytes()
    async for chunk in stream:
        chunks.append(chunk)
        count += len(chunk)
        if count > limit:
            break
    data = b"".join(chunks)
    return data[: limit + 1]


def one_line(text: str, limit: int = _SUMMARY_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_summary(body: bytes) -> str:
    """``CODE: message`` from a registry (or token server) JSON error body, else ``""``.

    Understands the Distribution ``{"errors": [{"code", "message"}]}`` shape,
    Docker Hub's token server ``{"details": ...}`` and OAuth2's ``{"error", "error_description"}``.
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    parts: list[str] = []
    errors = doc.get("errors")
    if isinstance(errors, list):
        for err in errors[:3]:
            if isinstance(err, dict):
                code = str(err.get("code") or "").strip()
                message = str(err.get("message") or "").strip()
                parts.append(f"{code}: {message}" if code and message else code or message)
    for key in ("error", "error_description", "details", "message"):
        value = doc.get(key)
        if isinstance(value, str) and value.strip():
            parts.append(value.strip())
    return one_line("; ".join(p for p in parts if p))


def next_link(response: httpx.Response) -> str | None:
    """The absolute URL of a ``Link: <…>; rel="next"`` header (pagination), or None."""
    for value in response.headers.get_list("link"):
        m = _LINK_NEXT.search(value)
        if m:
            return str(response.url.join(m.group(1)))
    return None


def content_type(response: httpx.Response) -> str:
    """The media type of a response, without parameters (``; charset=…``)."""
    return response.headers.get("content-type", "").split(";", 1)[0].strip()
