"""Expected errors, shown as one line instead of a traceback.

``SWARM_ERRORS``: the swarm could not serve (servers failed, blocks missing) or let us in; commands exit with 1.
``USER_ERRORS``: the user asked for something wrong; commands exit with 2.
"""

from engine.client.routing import MissingBlocksError
from engine.models.registry import UnsupportedModelError
from engine.peer import SwarmJoinError
from engine.server.network import UnreachableError
from engine.weights import ModelNotFoundError
from engine.wire import BadRequest, RemoteError

USER_ERRORS = (ModelNotFoundError, UnsupportedModelError, MissingBlocksError, BadRequest, RemoteError, ValueError,
               UnreachableError)  # fmt: skip
SWARM_ERRORS = (MissingBlocksError, RemoteError, SwarmJoinError)
