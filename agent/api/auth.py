"""The API's bearer token: random, made on first start, kept in a file only the owner can read.

Every route of the app (the control endpoints and any router added later, such as the OpenAI-compatible one)
depends on ``require_token``; a missing or wrong token is answered 401 before any handler runs.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from fastapi import HTTPException, Request

from agent.paths import write_private

TOKEN_BYTES = 32


def load_or_create_token(path: Path) -> str:
    """The token in ``path``; a new random one (written 0600) when the file is missing or empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        write_private(path, token + "\n")
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)  # someone loosened it: tighten again rather than serve with a readable token
    return token


def require_token(request: Request) -> None:
    """FastAPI dependency: the ``Authorization: Bearer <token>`` header must carry the app's token."""
    expected: str = request.app.state.token
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong API token (see the token file in the agent's data directory)",
            headers={"WWW-Authenticate": "Bearer"},
        )
