"""Passwords out of URLs and messages: what jepa-lab prints, logs or raises shows no secret.

Light on purpose (no MLflow import): the CLI's one-line failure passes every message through
:func:`redact_text`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# scheme://USER:PASSWORD@ (or scheme://TOKEN@) inside any text: a driver's or server's message
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@]*@")


def redact_text(text: str) -> str:
    """``text`` with the user:password part of every URL in it replaced by ``***``."""
    return _CREDENTIALS.sub(r"\1***@", text)


def redact(uri: str) -> str:
    """``uri`` without a user:password part."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return redact_text(uri)
    if parts.password is None and parts.username is None:
        return uri
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"***@{parts.hostname}{port}").geturl()
