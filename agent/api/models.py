"""Request and answer types of the control API; the same classes parse answers in ``agent/client.py``.

Answers ignore unknown fields when parsed (``extra="ignore"``), so a newer agent can add fields without breaking
an older GUI or CLI; requests forbid them, so a typo in a request is an error, not a silent no-op.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["full", "reduced", "paused"]
ServerState = Literal["stopped", "starting", "running", "draining", "crashed", "failed"]
LogSource = Literal["agent", "server", "dht"]


class Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerStatus(Answer):
    """The engine server the agent supervises."""

    state: ServerState = "stopped"
    pid: int | None = None
    peer_id: str | None = None
    blocks: tuple[int, int] | None = None  # [start, end) of the span it serves
    throughput: float | None = None  # tokens/s it announces (lowered in reduced mode)
    sessions: int = 0  # sessions open on it now
    restarts: int = 0  # crashes it was restarted after
    detail: str = ""  # why it is in this state (the crash reason, the drain, ...)
    reachability: str | None = None  # how peers reach it: direct, relay (through a relay), unknown (not checked)
    swarm_rtt_ms: float | None = None  # round trip to the swarm's bootstrap peers when it joined


class SwarmStatus(Answer):
    name: str = "local"
    model: str = ""
    initial_peers: list[str] = Field(default_factory=list)
    servers: int | None = None  # servers seen in the DHT
    coverage: float | None = None  # share of the model's blocks served by at least one server


class ChatStatus(Answer):
    """The agent's chat client of its swarm (the chat window and the local OpenAI API)."""

    state: Literal["cold", "loading", "ready", "failed"] = "cold"  # cold: loaded by the first chat request
    model: str = ""
    active: int = 0  # chat requests being answered now
    max_concurrent: int = 0  # more than this are answered "busy"
    detail: str = ""  # what it is loading, or why it failed


class ErrorEntry(Answer):
    time: float
    message: str


class Status(Answer):
    """Everything the CLI, the tray and the dashboard show, in the same words."""

    mode: Mode
    reason: str  # why: the same sentence everywhere
    since: float  # unix time the mode began
    manual_pause: bool = False  # paused by the owner until resumed
    snoozed_until: float | None = None  # unix time
    server: ServerStatus = Field(default_factory=ServerStatus)
    swarm: SwarmStatus = Field(default_factory=SwarmStatus)
    chat: ChatStatus = Field(default_factory=ChatStatus)
    tokens_served: int = 0  # to others, all time
    sessions_served: int = 0
    uptime_s: float = 0.0  # this agent process
    hours: dict[str, float] = Field(default_factory=dict)  # all time: "agent" (online), "server", and each mode
    pid: int | None = None
    stopping: bool = False
    stop_reason: str | None = None  # why the agent stopped serving for good (e.g. repeated crashes)
    last_errors: list[ErrorEntry] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)  # e.g. unknown settings in the file


class Empty(Request):
    pass


class PauseRequest(Request):
    pass


class SnoozeRequest(Request):
    minutes: float = Field(gt=0, le=7 * 24 * 60, description="pause for this long, then follow the policy again")


class Ack(Answer):
    ok: bool = True
    message: str = ""


class SettingsAnswer(Answer):
    values: dict[str, Any]  # {"group.name": value}
    file: str
    warnings: list[str] = Field(default_factory=list)


class SettingsChange(Request):
    changes: dict[str, Any] = Field(description='{"group.name": value}; validated like the file, applied together')


class Accelerator(Answer):
    kind: str  # "cuda" or "cpu"
    name: str
    memory_gb: float | None = None
    driver: str | None = None
    source: str = ""  # "nvml", "torch.cuda", "cpu"


class CpuInfo(Answer):
    model: str
    cores: int | None = None  # physical
    threads: int | None = None  # logical
    ram_gb: float | None = None


class ComputeMeasure(Answer):
    model: str
    device: str
    dtype: str
    tokens_per_second: float  # one-token inference steps/s through one block (the interactive speed)
    forward_tokens_per_second: float | None = None  # tokens/s of a bulk forward through one block


class NetworkMeasure(Answer):
    bandwidth_mbps: float | None = None
    rtt_ms: float | None = None
    peers: int = 0
    reachability: str = ""  # named swarms: direct, relay or unreachable, as a server of this machine would be
    detail: str = ""


class BenchmarkRequest(Request):
    refresh: bool = Field(False, description="measure now even if a fresh result is cached")


class BenchmarkAnswer(Answer):
    measured_at: float | None = None  # unix time; None when never measured
    age_s: float | None = None
    accelerators: list[Accelerator] = Field(default_factory=list)
    cpu: CpuInfo | None = None
    compute: ComputeMeasure | None = None
    network: NetworkMeasure | None = None
    detail: str = ""


class LogsQuery(Request):
    source: LogSource = "agent"
    lines: int = Field(100, ge=1, le=10000)


class LogsAnswer(Answer):
    source: LogSource
    file: str
    lines: list[str]


class SwarmServer(Answer):
    """One span a server announces, as the coverage plot draws it."""

    peer_id: str
    start: int
    end: int  # exclusive
    state: str  # online, joining, draining
    throughput: float  # tokens/s it adds to each block of its span
    ours: bool = False  # one of this agent's servers


class SwarmMap(Answer):
    """Who serves which blocks of the model, read from the swarm's DHT a few seconds ago."""

    name: str = "local"
    model: str = ""
    num_blocks: int = 0
    block_throughput: list[float] = Field(default_factory=list)  # per block: tokens/s of its online servers
    servers: list[SwarmServer] = Field(default_factory=list)
    uncovered: list[int] = Field(default_factory=list)  # blocks no online server holds
    read_at: float | None = None  # unix time of the reading; None: not read yet
    detail: str = ""  # why there is no reading (yet)


class ContributionQuery(Request):
    days: int = Field(30, ge=1, le=3650)


class ContributionDay(Answer):
    day: str  # YYYY-MM-DD, local time
    tokens: int = 0
    sessions: int = 0
    hours_online: float = 0.0
    hours_serving: float = 0.0


class Contribution(Answer):
    """What this machine has lent, per day (oldest first) and in all."""

    days: list[ContributionDay] = Field(default_factory=list)
    tokens: int = 0
    sessions: int = 0
    hours: dict[str, float] = Field(default_factory=dict)  # 'agent' (online), 'server' (serving), each mode


SecretName = Literal["hf_token", "swarm_key"]


class SecretInfo(Answer):
    """Where a secret is kept and whether it is set; never its value."""

    name: str
    description: str
    present: bool
    backend: str  # "keyring" or "file"
    detail: str  # the keyring backend's name or the file's path


class SecretsAnswer(Answer):
    secrets: list[SecretInfo] = Field(default_factory=list)


class SecretChange(Request):
    name: SecretName
    value: str | None = Field(None, description="the new value; null deletes the secret")
