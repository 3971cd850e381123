"""The FastAPI app: one route per row of ``ENDPOINTS``, all behind the token, plus any routers added later.

Errors have one shape everywhere, OpenAI's (``{"error": {"message", "type", "param", "code"}}``), so the chat
API added by another router and the control API read the same to a client.
"""

import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse

from agent.api.auth import require_token
from agent.api.endpoints import API_PREFIX, ENDPOINTS, AgentControl, ControlError, Endpoint
from agent.settings_file import SettingsError


def create_app(control: AgentControl, token: str, extra_routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The control API over ``control``; ``extra_routers`` (e.g. ``/v1`` chat) get the same token check.

    ``app.state.control`` is the agent, for routers that need it (the owner's own generation goes through it).
    """
    app = FastAPI(
        title="Nectar agent",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # nothing is readable without the token
        dependencies=[Depends(require_token)],
    )
    app.state.control = control
    app.state.token = token
    router = APIRouter(prefix=API_PREFIX)
    for endpoint in ENDPOINTS:
        router.add_api_route(
            endpoint.path,
            _handler(endpoint),
            methods=[endpoint.method],
            response_model=endpoint.answer,
            summary=endpoint.summary,
            name=endpoint.name,
        )
    app.include_router(router)
    for extra in extra_routers:
        add_router(app, extra)
    _add_error_handlers(app)
    return app


def add_router(app: FastAPI, router: APIRouter) -> None:
    """Add a router later; the app-wide token dependency covers it too."""
    app.include_router(router)


def _handler(endpoint: Endpoint) -> Callable[..., Any]:
    """A sync route function calling ``control.<name>``; FastAPI runs it in its thread pool."""

    def handler(request: Request, body: Any = None) -> Any:
        method = getattr(request.app.state.control, endpoint.name)
        return method() if endpoint.request is None else method(body)

    parameters = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
    if endpoint.request is not None:
        annotation = Annotated[endpoint.request, Query()] if endpoint.method == "GET" else endpoint.request
        parameters.append(inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation))
    handler.__signature__ = inspect.Signature(parameters, return_annotation=endpoint.answer)  # type: ignore[attr-defined]
    handler.__name__ = endpoint.name
    return handler


def error_body(message: str, kind: str, status: int, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = "authentication_error" if error.status_code == 401 else "invalid_request_error"
        response = error_body(str(error.detail), kind, error.status_code)
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "malformed request"}
        param = ".".join(str(part) for part in first["loc"] if part not in ("body", "query"))
        return error_body(f"{param or 'request'}: {first['msg']}", "invalid_request_error", 400, param or None)

    @app.exception_handler(ControlError)
    async def refused(request: Request, error: ControlError) -> JSONResponse:
        return error_body(str(error), "invalid_request_error", error.status_code, error.param)

    @app.exception_handler(SettingsError)
    async def bad_setting(request: Request, error: SettingsError) -> JSONResponse:
        return error_body(str(error), "invalid_request_error", 400)
