"""Masking secrets in text that is shown to people: messages, log lines, reports.

A store URL may carry a password twice over: in its user part
(``postgresql://user:PASSWORD@host/db``) and in its query
(``...?password=PASSWORD``). :func:`mask_secrets` replaces both with ``***``
in any text, whether or not the URL in it can be parsed, so that a message
about an invalid URL never shows its password either. Pure string work: no
imports beyond ``re``, so the command line can use it before anything heavy
is imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"

# scheme://user:PASSWORD@host -- the password runs to the last "@" before the host,
# so an unescaped "@" or "/" inside it is masked too.
_USERINFO = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*):(?P<secret>[^\s'\"]*?)@"
    r"(?=[^\s@/?#'\"]*(?:[\s/?#'\"]|$))"
)
# ?password=PASSWORD, &sslpassword=..., ;pwd=..., &token=..., &secret=... in a query
_QUERY = re.compile(
    r"(?P<head>[?&;][A-Za-z_]*(?:pass|pwd|secret|token)[A-Za-z_]*=)"
    r"(?P<secret>(?!\*\*\*)[^&;\s'\"#]*)",  # (masking twice changes nothing)
    re.IGNORECASE,
)
#: Shorter known secrets are not replaced verbatim elsewhere in a text (too many
#: false hits); they are still masked where a URL shows them.
_MIN_VERBATIM = 3


def mask_secrets(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with URL passwords (user part and query) and each of ``secrets`` masked."""
    if not text:
        return text
    masked = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    masked = _QUERY.sub(lambda m: m["head"] + MASK, masked)
    for secret in secrets:
        if secret and len(secret) >= _MIN_VERBATIM:
            masked = masked.replace(secret, MASK)
    return masked


def mask_values(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string masked."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {k: mask_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_values(v) for v in value)
    return value


__all__ = ["MASK", "mask_secrets", "mask_values"]
