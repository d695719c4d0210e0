"""The FastAPI ingress: endpoints, input limits and error mapping, over a `ScoringService`.

One builder serves the Ray Serve deployment (which passes its dynamically
batched scorer) and the single-process baseline (which scores each request on
its own), so both answer exactly the same contract.
"""

from __future__ import annotations

import asyncio
import email.message
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.routing import BaseRoute, Match
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feature_repo.online import OnlineStoreUnavailableError
from serving.columns import TransactionColumns, read_batch
from serving.metrics import REQUEST_SECONDS, ServingMetrics
from serving.schemas import BatchRequest, BatchScores, Score, Transaction
from serving.service import NotReadyError, RequestError, ScoringService, error_reference
from settings import ApiKeyGuard, ApiKeys, ServingConfig

MAX_BODY_BYTES = 1 << 20

logger = logging.getLogger(__name__)

DOCS_ASSETS = "/docs-assets"
"""Where `/docs` and `/redoc` load Swagger UI's and ReDoc's files from: this process, not a CDN.

The files are fastapi-offline's copies (Swagger UI 5, ReDoc 2, FastAPI's favicon: what FastAPI's
own pages fetch from cdn.jsdelivr.net), so the pages work on a machine with no internet.
"""
DOCS_PACKAGE = ("fastapi_offline", "static")


ScoreOne = Callable[[Transaction], Awaitable[Score | Exception]]
STORE_DOWN_LOG_EVERY_S = 10.0
"""While the online store does not answer, a replica says so once per interval, not once per request."""


class _Throttled:
    """One warning per `every_s` at most, saying how many it held back; on the event loop, no lock."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = float("-inf")
        self._held = 0

    def warning(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._held += 1
            return
        held, self._held, self._last = self._held, 0, now
        logger.warning("%s%s", message, f" ({held} more since the last warning)" if held else "")


class BodyLimit:
    """Refuses bodies over `max_bytes` with 413 before anything parses them.

    The declared length is checked first; a chunked body, which declares none,
    is counted as it arrives and replayed to the app only if it stays under.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"body larger than {self.max_bytes} bytes"
        response = JSONResponse({"detail": detail, "error": "too_large"}, status_code=413)
        await response(scope, receive, send)


UNMATCHED = "unmatched"
"""The route label of a request that matched no route: a fixed one, so made-up paths add no series."""


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The path template of the route that handled (or would handle) the request, e.g. `/v1/score`.

    Routing leaves the matched route in `scope["route"]` (Starlette's router and
    FastAPI's both set it, a 405's partial match included). A request refused
    before routing (413) has none: it is matched against `routes` here.
    """
    route = scope.get("route")
    if route is None:
        route = next((r for r in routes if r.matches(scope)[0] is not Match.NONE), None)
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED


class Admission:
    """Refuses scoring requests beyond the runtime config's `max_in_flight` at once: 503, Retry-After.

    Why not Serve's `max_ongoing_requests` alone: at that limit Serve's router holds requests in
    backoff sleeps (up to 1 s each) instead of refusing them; at 2x and 5x saturation goodput fell
    to 22-33 answers/s with the replica under 0.8 cores busy (bench.serve, 16/16 limits).
    """

    def __init__(self, app: ASGIApp, service: ScoringService) -> None:
        self.app = app
        self.service = service
        self.in_flight = 0  # one event loop per replica: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = self.service.config
        if scope["type"] != "http" or config is None or not scope.get("path", "").startswith("/v1/score"):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= config.max_in_flight:
            self.service.metrics.errors.labels("overloaded").inc()
            response = JSONResponse(
                {
                    "detail": f"{self.in_flight} requests in flight, the most this replica takes: retry",
                    "error": "overloaded",
                },
                status_code=503,
                headers={"Retry-After": str(config.retry_after_s)},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class RequestMetrics:
    """Latency by route template and status of `/v1/` requests, 413s included.

    Labelled by the matched route's template, never the raw path, which any
    client could vary to create series without end; no route: `unmatched`.
    Plain ASGI rather than `@app.middleware("http")`, whose per-request task
    and stream wrapping cost the replica a few percent (bench.serve profile).
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = route_template(scope, self.routes)
            self.metrics.request_seconds.labels(endpoint, str(status)).observe(time.perf_counter() - started)
            if status == 413:
                self.metrics.errors.labels("too_large").inc()


def build_api(
    service: ScoringService, score_one: ScoreOne | None = None, api_keys: ApiKeys | None = None
) -> FastAPI:
    """The HTTP app.

    Args:
        service: what scores.
        score_one: how `/v1/score` scores one transaction; by default on its
            own, in a worker thread (the Ray deployment passes its batcher).
        api_keys: the keys every request but the probes must bear (`settings.AuthSettings`);
            None: open, as on the loopback default.
    """

    async def score_alone(transaction: Transaction) -> Score | Exception:
        return (await asyncio.to_thread(service.score_each, [transaction]))[0]

    scorer = score_one or score_alone
    metrics = service.metrics
    api = FastAPI(
        title="fraudpipe scoring",
        version="1",
        description="Card-fraud probabilities from online features, champion / challenger routed.",
        # FastAPI's own pages load their scripts from a CDN: blank offline. `add_docs` serves them.
        docs_url=None,
        redoc_url=None,
    )

    def fail(kind: str, status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        # `error`: a code a client can branch on; `detail`: for a person, never an exception's text.
        return JSONResponse({"detail": detail, "error": kind}, status_code=status, headers=headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": _message(e), "type": e["type"]} for e in exc.errors()]
        return fail("validation", 422, errors)

    @api.exception_handler(NotReadyError)
    async def not_ready(_request: Request, exc: NotReadyError) -> JSONResponse:
        retry_after = service.config.retry_after_s if service.config else ServingConfig().retry_after_s
        return fail("not_ready", 503, str(exc), {"Retry-After": str(retry_after)})

    store_down_log = _Throttled(STORE_DOWN_LOG_EVERY_S)

    @api.exception_handler(OnlineStoreUnavailableError)
    async def store_down(_request: Request, exc: OnlineStoreUnavailableError) -> JSONResponse:
        # Never a score from missing features: a known customer would be scored as a new card.
        store_down_log.warning(f"online store unavailable, answering 503: {exc.__cause__ or exc}")
        retry_after = service.config.retry_after_s if service.config else ServingConfig().retry_after_s
        detail = "the online store did not answer: no score without features, retry later"
        return fail("online_unavailable", 503, detail, {"Retry-After": str(retry_after)})

    @api.exception_handler(RequestError)
    async def unreadable(_request: Request, exc: RequestError) -> JSONResponse:
        where = [["body", "transactions", i, exc.field] for i in exc.positions] or [["body", exc.field]]
        return fail("stale_read", 422, [{"loc": loc, "msg": str(exc), "type": "stale_read"} for loc in where])

    @api.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # The exception's text may name a host, a path or a URL: it goes to the log under an id.
        error_id = error_reference()
        logger.error("%s %s: error %s", request.method, request.url.path, error_id, exc_info=exc)
        metrics.errors.labels("internal").inc()
        return JSONResponse(
            {"detail": "internal error", "error": "internal", "error_id": error_id}, status_code=500
        )

    @api.post("/v1/score", response_model=Score, responses={413: {}, 422: {}, 503: {}})
    async def score(transaction: Transaction) -> Score:
        """Score one transaction; concurrent calls are batched together on the replica."""
        started = time.perf_counter()
        result = await scorer(transaction)
        if isinstance(result, Exception):
            raise result
        result.latency.total_ms = (time.perf_counter() - started) * 1e3
        return result

    @api.post(
        "/v1/score/batch",
        response_model=BatchScores,
        responses={413: {}, 422: {}, 503: {}},
        openapi_extra={"requestBody": BATCH_REQUEST_BODY},
    )
    async def score_batch(request: Request) -> Response:
        """Score up to `max_transactions_per_call` transactions in one feature read and model call.

        The body is a `BatchRequest`, read into columns without a Python object per
        transaction (`serving.columns`); a body that reader leaves to the schema is
        validated as FastAPI validates a declared body, with the same answers.
        """
        body = await request.body()
        fast = read_batch(body) if _declares_json(request) else None
        transactions = fast or TransactionColumns.of(_validated_batch(request, body).transactions)
        config = service.config
        limit = config.max_transactions_per_call if config else None
        if limit is not None and len(transactions) > limit:
            detail = [
                {
                    "loc": ["body", "transactions"],
                    "msg": f"at most {limit} transactions per call, got {len(transactions)}",
                    "type": "too_long",
                }
            ]
            return fail("validation", 422, detail)
        started = time.perf_counter()
        scored = await asyncio.to_thread(service.score, transactions)
        # Written from the scored columns: FastAPI would build and validate a model per score first.
        return Response(scored.json((time.perf_counter() - started) * 1e3), media_type="application/json")

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok"}

    @api.get("/readyz", responses={503: {}})
    async def readyz() -> JSONResponse:
        """A champion is loaded and the online store answers (readiness)."""
        ready, detail = await asyncio.to_thread(service.ready)
        return JSONResponse({"ready": ready, "detail": detail}, status_code=200 if ready else 503)

    @api.get("/metrics", response_class=PlainTextResponse, responses={404: {}})
    async def prometheus() -> Response:
        """This process's serving metrics; in a Ray Serve replica, 404 with a pointer to Ray's endpoint.

        404 in Ray: through the proxy this reaches one replica of several, so any
        answer would pass one replica's numbers off as the service's, and a
        scraper of this path must fail loudly rather than see a part.
        """
        if metrics.in_ray:
            port = metrics.ray_metrics_port
            where = f"port {port}" if port else "its metrics export port"
            return PlainTextResponse(
                f"Serving's metrics are exported by Ray's metrics agent of each node ({where}, "
                f"path /metrics, names {REQUEST_SECONDS.exported}_* and the like), with every replica "
                "of the node; a replica's /metrics would show one replica only.\n",
                status_code=404,
            )
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    add_docs(api)  # after the scoring routes: a score request is matched before it looks at these
    api.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    api.add_middleware(Admission, service=service)  # before the body is read: a refusal costs nothing
    if api_keys is not None:  # before admission: an unauthenticated flood takes no in-flight slot
        api.add_middleware(ApiKeyGuard, keys=api_keys, on_refused=metrics.errors.labels("unauthorized").inc)
    api.add_middleware(RequestMetrics, metrics=metrics, routes=api.router.routes)
    return api


COMPONENT = "#/components/schemas/{model}"
BATCH_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                key: value
                for key, value in BatchRequest.model_json_schema(ref_template=COMPONENT).items()
                if key != "$defs"  # `Transaction` is a component already: `/v1/score` takes it
            }
        }
    },
}
"""`/v1/score/batch`'s body in the OpenAPI document, which its handler reads itself."""


def _declares_json(request: Request) -> bool:
    """Whether FastAPI would parse this request's body as JSON: `application/json` or `application/*+json`."""
    message = email.message.Message()
    message["content-type"] = request.headers.get("content-type", "")
    subtype = message.get_content_subtype()
    json_subtype = subtype == "json" or subtype.endswith("+json")
    return message.get_content_maintype() == "application" and json_subtype


def _validated_batch(request: Request, body: bytes) -> BatchRequest:
    """`body` validated as FastAPI validates a declared `BatchRequest` body parameter.

    As `fastapi.routing.get_request_handler` does: a JSON content type is parsed
    (a decode error is `json_invalid` at its position, bytes in no Unicode encoding
    a 400), any other is validated as bytes, an empty body is missing; errors are
    located under `body`.

    Raises:
        RequestValidationError: as FastAPI's would be, answered 422 by the app's handler.
        HTTPException: 400, where FastAPI's would be.
    """
    value: Any = body
    if not body:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    if _declares_json(request):
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            raise RequestValidationError(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body", exc.pos),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": exc.msg},
                    }
                ]
            ) from exc
        except ValueError as exc:  # UnicodeDecodeError: FastAPI answers 400 to any other parse failure
            raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
    try:
        return BatchRequest.model_validate(value, from_attributes=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def _message(error: Mapping[str, Any]) -> str:
    """A validation error's message, with the JSON parser's reason where the body is no JSON."""
    reason = (error.get("ctx") or {}).get("error")
    return f"{error['msg']}: {reason}" if error["type"] == "json_invalid" and reason else str(error["msg"])


def add_docs(api: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc` over the app's OpenAPI schema, their files from `DOCS_ASSETS`.

    Every URL the pages load is this app's: under the request's `root_path`, so they also work
    where the app is mounted under a prefix (a Ray Serve `route_prefix`, a proxy's path).
    """
    api.mount(DOCS_ASSETS, StaticFiles(packages=[DOCS_PACKAGE]), name="docs-assets")
    openapi_url = api.openapi_url or "/openapi.json"

    @api.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{api.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            # No validator badge: it would send the schema's URL to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None, **(api.swagger_ui_parameters or {})},
        )

    @api.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{api.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
