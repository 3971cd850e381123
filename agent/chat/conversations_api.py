"""The conversation endpoints (the table in ``endpoints.py``) over a ``ConversationStore``, under ``/api``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from agent.api.endpoints import API_PREFIX, ControlError
from agent.chat.endpoints import CONVERSATION_ENDPOINTS, ConversationEndpoint
from agent.chat.schema import Conversation, Deleted, SearchAnswer, export_json, export_markdown
from agent.chat.store import ConversationStore, NotFound


def conversation_router(store: ConversationStore) -> APIRouter:
    """The endpoints of ``CONVERSATION_ENDPOINTS`` over ``store``; the app's token check covers them."""
    handlers: dict[str, Callable[..., Any]] = {
        "list_conversations": lambda query: store.list_conversations(query.limit, query.offset),
        "create_conversation": store.create,
        "search_conversations": lambda query: SearchAnswer(hits=store.search(query.q, query.limit)),
        "get_conversation": store.get,
        "change_conversation": lambda conversation_id, change: store.change(conversation_id, change),
        "delete_conversation": lambda conversation_id: Deleted(deleted=store.delete(conversation_id)),
        "append_message": lambda conversation_id, message: store.append(conversation_id, message),
        "delete_message": lambda conversation_id, message_id: Deleted(
            deleted=store.delete_message(conversation_id, message_id)
        ),
        "export_conversation": lambda conversation_id, query: _export(store.get(conversation_id), query.format),
    }
    router = APIRouter(prefix=API_PREFIX)
    for endpoint in CONVERSATION_ENDPOINTS:
        router.add_api_route(
            endpoint.path,
            _route(endpoint, handlers[endpoint.name]),
            methods=[endpoint.method],
            response_model=endpoint.answer,
            summary=endpoint.summary,
            name=endpoint.name,
        )
    return router


def _route(endpoint: ConversationEndpoint, handler: Callable[..., Any]) -> Callable[..., Any]:
    """A sync route function (FastAPI runs it in its thread pool) with typed path ids and the request model."""
    ids = [name for name in ("conversation_id", "message_id") if "{" + name + "}" in endpoint.path]

    order = [*ids, *(["body"] if endpoint.request is not None else [])]

    def route(**arguments: Any) -> Any:
        try:
            return handler(*(arguments[name] for name in order))
        except NotFound as error:
            raise ControlError(str(error), status_code=404) from None
        except ValueError as error:
            raise ControlError(str(error)) from None

    annotations: dict[str, Any] = {name: int for name in ids}
    if endpoint.request is not None:
        get = endpoint.method == "GET"
        annotations["body"] = Annotated[endpoint.request, Query()] if get else endpoint.request
    route.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind) for name, kind in annotations.items()]
    )
    route.__name__ = endpoint.name
    return route


def _export(conversation: Conversation, format: str) -> Response:
    stem = f"conversation-{conversation.id}"
    if format == "json":
        return JSONResponse(
            export_json(conversation), headers={"Content-Disposition": f'attachment; filename="{stem}.json"'}
        )
    return Response(
        export_markdown(conversation),
        media_type="text/markdown; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{stem}.md"'},
    )
