"""Making text safe to show people: secrets masked, control characters written out.

A store URL may carry a password twice over: in its user part
(``postgresql://user:PASSWORD@host/db``) and in its query
(``...?password=PASSWORD``). :func:`mask_secrets` replaces both with ``***``
in any text, whether or not the URL in it can be parsed, so that a message
about an invalid URL never shows its password either. It takes time linear in
the text's length, whatever the text (a recorded string may be long and made
to be slow).

:func:`printable` writes out the control characters of a recorded string
(``\\x1b``, ``\\n``, bidirectional overrides), so that a run named
``$'\\e]0;PWNED\\a'`` shows those characters instead of sending them to the
terminal. Pure string work: no imports beyond ``re``, so the command line can
use it before anything heavy is imported.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"

# scheme://user:PASSWORD@host -- the password runs to the last "@" before the host,
# so an unescaped "@" or "/" inside it is masked too. What is masked is what
#   (?P<head>SCHEME://[^\s:/@'"]*):(?P<secret>[^\s'"]*?)@(?=[^\s@/?#'"]*(?:[\s/?#'"]|$))
# matches; the functions below find it without backtracking (a regular expression of that
# shape takes quadratic time on text made for it).
_SCHEME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_STOP = re.compile(r"[\s'\"]")  # no part of a URL's authority crosses these
_USER_END = re.compile(r"[\s:/@'\"]")  # the end of the user name
# An "@" that ends a password: the host after it has no "@" up to its end.
_HOST_AT = re.compile(r"@(?=[^\s@/?#'\"]*(?:[\s/?#'\"]|$))")
# ?password=PASSWORD, &sslpassword=..., ;pwd=..., &token=..., &secret=... in a query
_QUERY_KEY = re.compile(r"[?&;]([A-Za-z_]*)=")
_SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
_QUERY_VALUE = re.compile(r"[^&;\s'\"#]*")
#: Shorter known secrets are not replaced verbatim elsewhere in a text (too many
#: false hits); they are still masked where a URL shows them.
_MIN_VERBATIM = 3


def _mask_userinfo(text: str) -> str:
    """``scheme://user:PASSWORD@host`` -> ``scheme://user:***@host``, in linear time."""
    if "://" not in text or "@" not in text:
        return text
    stops = [m.start() for m in _STOP.finditer(text)]
    ends = [m.start() for m in _HOST_AT.finditer(text)]  # each "@" that may end a password
    out: list[str] = []
    done = 0  # text[:done] is settled
    i = text.find("://")
    while i != -1:
        start = i  # the scheme: scheme characters before "://", from a letter, after `done`
        while start > done and text[start - 1] in _SCHEME:
            start -= 1
        while start < i and text[start] not in _LETTERS:
            start += 1
        colon = None
        if start < i:
            found = _USER_END.search(text, i + 3)
            if found is not None and found.group() == ":":
                colon = found.start()
        if colon is not None:
            stop = stops[bisect.bisect_right(stops, colon)] if stops and stops[-1] > colon \
                else len(text)
            k = bisect.bisect_right(ends, colon)
            if k < len(ends) and ends[k] < stop:
                at = ends[k]
                out += [text[done:colon], ":", MASK, "@"]
                done = at + 1
                i = text.find("://", done)
                continue
        i = text.find("://", i + 1)
    out.append(text[done:])
    return "".join(out)


def _mask_query(text: str) -> str:
    """``?password=PASSWORD`` (and the like) -> ``?password=***``, in linear time."""
    if "=" not in text:
        return text
    out: list[str] = []
    done = 0
    for key in _QUERY_KEY.finditer(text):
        if key.start() < done or not _SECRET_KEY.search(key.group(1)):
            continue
        value = _QUERY_VALUE.match(text, key.end())
        if text.startswith(MASK, key.end()):  # masking twice changes nothing
            continue
        out += [text[done:key.end()], MASK]
        done = value.end()
    out.append(text[done:])
    return "".join(out)


def mask_secrets(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with URL passwords (user part and query) and each of ``secrets`` masked."""
    if not text:
        return text
    masked = _mask_query(_mask_userinfo(text))
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


# C0 and C1 controls, DEL, and the characters that reorder or hide text (line and paragraph
# separators, bidirectional marks, embeddings, overrides and isolates).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _written_out(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]  # "\x1b" -> "\\x1b", "\n" -> "\\n", "\u202e" -> "\\u202e"


def printable(text: str) -> str:
    """``text`` with every control character written out as an escape (``\\x1b``), so that a
    terminal shows it and acts on none of it."""
    return _CONTROL.sub(_written_out, text) if text else text


__all__ = ["MASK", "mask_secrets", "mask_values", "printable"]
