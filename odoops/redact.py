"""Keep secrets out of logs, artifacts, audit records and error messages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SECRET_KEY_PATTERN = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential)", re.IGNORECASE
)
_DSN_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)([^@\s]+)(@)")
_KV_PASSWORD = re.compile(r"\b(password|passwd|admin_passwd|secret)\s*=\s*('[^']*'|\S+)", re.IGNORECASE)
MASK = "***"


def redact_text(text: str) -> str:
    """Mask passwords inside DSNs and ``key=value`` pairs of a free text."""
    text = _DSN_PASSWORD.sub(rf"\1{MASK}\3", text)
    return _KV_PASSWORD.sub(rf"\1={MASK}", text)


def redact(value: Any) -> Any:
    """A deep copy of ``value`` with every secret-looking key's value masked and DSNs cleaned."""
    if isinstance(value, Mapping):
        return {
            k: (MASK if SECRET_KEY_PATTERN.search(str(k)) and v not in (None, "") and not
                str(k).endswith(("_env", "_block")) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
