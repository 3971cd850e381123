"""The client side of the swarm.

- ``config.py``: ``ClientSettings``, every client knob (step timeout, retries, bans, pings) declared once.
- ``swarm.py``: ``SwarmConnection``, a P2P peer and client-mode DHT node on a background event loop, plus its router.
- ``routing.py``: pure routing decisions: ``inference_route`` (lowest expected latency: measured round trips plus
  announced compute, avoiding banned and cache-less servers) and ``make_route`` (forward/backward: fewest hops,
  load spread by throughput); ``MissingBlocksError`` names the blocks nothing can serve.
- ``router.py``: ``Router``, what routing needs, per connection: fresh DHT views, the ban list, the pinger;
  ``Router.recover``, the one answer to a failed request (re-raise, or ban and count against a ``RetryBudget``);
  and ``is_server_fault``, which failures another server may fix.
- ``answers.py``: ``check_answer`` (shape, dtype, finite) and ``BadAnswer``; ``wire_dtype``, the dtype hidden states
  travel in to a server (its own when 16-bit).
- ``pinger.py``: ``Pinger``, smoothed round trips to servers, refreshed in the background.
- ``speeds.py``: ``SpeedBook``, each server's throughput as measured by this client; routing believes no more than it.
- ``bans.py``: ``BanList``, servers that failed, avoided for a time that doubles with each failure in a row.
- ``spot_check.py``: spot-checks, is a server running the model it claims: ``SpotChecker`` (which servers are
  verified, when a check is due, the tolerance, a third server's verdict) and ``second_route`` (who may verify a hop).
- ``stream.py``: ``InferenceStream``, one open inference session on one server; ``merge_steps`` for batched replays.
- ``shadow.py``: ``ShadowChain``, a second chain over one hop's blocks that spot-checks an inference session's hop,
  catching up with the steps it missed at each check.
- ``session.py``: ``InferenceSession``, a generation's attention caches held along a chain of ``HopState`` (an
  ``InferenceStream`` and its inputs); on a server failure it replays a hop's remembered inputs at their positions
  on a new chain (the paper's Algorithm 1), it reopens hops left idle past their server's timeout, and it spot-checks
  hops against a ``ShadowChain``.
- ``remote.py``: ``RemoteBlocks``, forward and backward through the swarm as a torch module; failed hops are
  recomputed on other servers.
- ``model.py``: ``CausalLMParts`` (the client-side embeddings, norm and head) and ``DistributedCausalLM`` (them
  around the remote blocks).
- ``local.py``: ``LocalCausalLM``, the same interface with every block in this process (baselines, tests).
- ``generation.py``: ``generate``: sampling, stop strings, streaming, chat prompts.
- ``ptune.py``: ``PromptTuning``, ``DeepPromptTuning`` and ``SequenceClassifier``: trainable prompts and a head kept
  by the client, trained through the frozen swarm.
- ``finetune.py``: JSONL data (validated, tokenized with the chat template), the training loop, and the safetensors
  file of trained prompts (``nectar finetune`` / ``nectar generate --prompts``).
"""
