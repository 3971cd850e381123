"""The errors that mean "the user asked for something wrong", shown as one line instead of a traceback."""

from engine.client.routing import MissingBlocksError
from engine.models.registry import UnsupportedModelError
from engine.weights import ModelNotFoundError
from engine.wire import BadRequest, RemoteError

USER_ERRORS = (ModelNotFoundError, UnsupportedModelError, MissingBlocksError, BadRequest, RemoteError, ValueError)
