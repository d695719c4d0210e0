"""Who may call the HTTP endpoints: optional API keys for scoring and push, and the check both run.

The check is a plain ASGI wrapper with no framework import, so it lives here, beside the
keys it checks and how they are loaded: the scoring API and the push endpoint run this one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

MIN_KEY_CHARS = 16
"""Shorter keys are refused at start-up: `openssl rand -hex 32` makes 64."""
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Probes answer without a key: a kubelet or load balancer has none, and they reveal nothing."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ApiKeys:
    """The accepted keys, kept as SHA-256 digests and compared in constant time.

    Every presented key is compared with every accepted one, with no early exit,
    so neither the timing nor the answer tells which key came close.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)
        if not self._digests:
            raise ValueError("no API key given")

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, authorization: bytes | None) -> bool:
        """Whether an `Authorization` header value is `Bearer <an accepted key>`."""
        scheme, _, presented = (authorization or b"").partition(b" ")
        digest = hashlib.sha256(presented.strip()).digest()
        matched = False
        for accepted in self._digests:
            matched |= hmac.compare_digest(digest, accepted)
        return matched and scheme.lower() == b"bearer"


class AuthSettings(BaseModel):
    """`FRAUDPIPE_AUTH__<FIELD>`: API keys for `/v1/score*` and the push endpoint.

    With no key set, both are open, which is why they bind 127.0.0.1 by default. With keys, every
    path but the probes (`/healthz`, `/readyz`) needs `Authorization: Bearer <key>`; several keys
    let a client move to a new one before the old one is removed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_keys_file: Path | None = Field(
        None,
        description="file of API keys, one per line (# comments); scoring and push then "
        "need `Authorization: Bearer <key>` (a mounted secret)",
    )
    api_keys: SecretStr | None = Field(
        None, description="API keys, comma-separated: for where no file can be mounted"
    )

    @model_validator(mode="after")
    def _one_source(self) -> AuthSettings:
        if self.api_keys_file is not None and self.api_keys is not None:
            raise ValueError("set FRAUDPIPE_AUTH__API_KEYS_FILE or FRAUDPIPE_AUTH__API_KEYS, not both")
        return self

    def keys(self) -> ApiKeys | None:
        """The accepted keys; None when authentication is off.

        Raises:
            ValueError: the file is missing or holds no key or a short one (named by line, never shown).
        """
        if self.api_keys is not None:
            where = "FRAUDPIPE_AUTH__API_KEYS"
            items = self.api_keys.get_secret_value().split(",")
            lines = [(f"item {n}", key.strip()) for n, key in enumerate(items, 1)]
        elif self.api_keys_file is not None:
            where = str(self.api_keys_file)
            try:
                text = self.api_keys_file.read_text()
            except OSError as exc:
                raise ValueError(f"cannot read the API keys file {where}: {exc.strerror}") from None
            lines = [(f"line {n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)]
        else:
            return None
        keys = [(at, key) for at, key in lines if key and not key.startswith("#")]
        short = [at for at, key in keys if len(key) < MIN_KEY_CHARS]
        if short:
            raise ValueError(f"{where}: {', '.join(short)}: keys need at least {MIN_KEY_CHARS} characters")
        if not keys:
            raise ValueError(f"{where} holds no API key")
        return ApiKeys(key for _at, key in keys)


class ApiKeyGuard:
    """Answers 401 to any request but the probes that lacks an accepted key, before it is read.

    It runs outside admission control and the body limit, so an unauthenticated flood takes no
    in-flight slot and no body is buffered for it. `on_refused` counts the refusals.
    """

    def __init__(self, app: ASGIApp, keys: ApiKeys, on_refused: Callable[[], None] = lambda: None) -> None:
        self.app = app
        self.keys = keys
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        if self.keys.accepts(authorization):
            await self.app(scope, receive, send)
            return
        self.on_refused()
        detail = "missing or unknown API key: send `Authorization: Bearer <key>`"
        body = json.dumps({"detail": detail, "error": "unauthorized"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
