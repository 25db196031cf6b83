"""What the server answered, in words: the message of a page or a JSON error, and an optional log of them."""

from __future__ import annotations

import html
import json
import os
import re

# --- Recording what the server answered -------------------------------------------------

_LOG_PATH = os.environ.get("HARDENING_LOG", "")
_ALERT = re.compile(r'role="alert">(.*?)</p>', re.S)
_ERRORLIST = re.compile(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', re.S)
_MESSAGELIST = re.compile(r'<ul class="messagelist">(.*?)</ul>', re.S)
_HEADING = re.compile(r"<h1>(.*?)</h1>\s*(?:<p>(.*?)</p>)?", re.S)
_TAG = re.compile(r"<[^>]+>")


def message_of(response) -> str:
    """The message a response shows: the JSON error, the page's alert or form errors, or the plain text."""
    content_type = response.get("Content-Type", "")
    body = response.content.decode("utf-8", errors="replace")
    if content_type.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            return body[:300]
        return str(data.get("error", "")) if isinstance(data, dict) and "error" in data else "(results)"
    if content_type.startswith("text/plain"):
        return body[:300]
    found = [html.unescape(_TAG.sub(" ", m)).strip() for m in _ALERT.findall(body)]
    found += [" ".join(html.unescape(_TAG.sub(" ", m)).split()) for m in _ERRORLIST.findall(body)]
    found += [" ".join(html.unescape(_TAG.sub(" ", m)).split()) for m in _MESSAGELIST.findall(body)]
    if found:
        return " | ".join(found)[:400]
    if response.status_code in (301, 302):
        return f"redirect to {response['Location']}"
    heading = _HEADING.search(body)
    if heading:
        return " ".join(html.unescape(_TAG.sub(" ", " ".join(g for g in heading.groups() if g))).split())[:300]
    if response.status_code == 200 and "<html" in body[:200].lower():
        return "(page with results)"
    return body[:120].strip() or "(empty body)"


def record(where: str, hostile: str, response) -> None:
    """Append ``hostile input -> status + message`` to HARDENING_LOG (when set)."""
    if not _LOG_PATH:
        return
    line = {"where": where, "input": hostile, "status": response.status_code, "message": message_of(response)}
    if response.status_code == 429:
        line["retry_after"] = response.get("Retry-After")
    with open(_LOG_PATH, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, ensure_ascii=False) + "\n")
