"""The speech service as a Ray Serve deployment: one replica per GPU, each running the batched speech service.

Ray Serve does what we would otherwise write: it places replicas on the cluster's GPU nodes, restarts one that
dies, and routes each HTTP request to a replica that has room, with streaming responses. The API is
alan/speech_api.py; every aLAN process points ALAN_SPEECH_URL at `http://<head>:<port><route>`.

A replica is ready (Serve routes to it) only once its model has loaded, so the first sentence never waits for a
load. What it speaks with is the launching process's ALAN_TTS_* settings, passed to each replica: the bots must
name the same backend and model (their client checks it).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from alan.speech_api import apply_forget, serve_synthesizer, speech_api
from engine.speech_synthesizer import SynthesizerOptions
from engine.tts import make_synthesizer

log = logging.getLogger(__name__)

APP_NAME = "alan-speech"
LEDGER_NAME = "alan-speech-forget-ledger"
LEDGER_KEPT = 10_000  # forget requests remembered for replicas that fall behind (a replica checks every 10 s)


@ray.remote(num_cpus=0)
class ForgetLedger:
    """The forget requests every replica must apply: Serve routes a `/forget` to one replica, which records it here,
    and the others read what they haven't applied yet at their next health check (every 10 s)."""

    def __init__(self) -> None:
        self.recorded = 0
        self.keys: list[str | None] = []

    def record(self, voice_key: str | None) -> int:
        self.recorded += 1
        self.keys = [*self.keys, voice_key][-LEDGER_KEPT:]
        return self.recorded

    def since(self, seen: int) -> tuple[int, list[str | None]]:
        """How many were recorded, and the ones after the first `seen` (None among them: forget everyone)."""
        missed = self.recorded - seen
        if missed > len(self.keys):  # fell behind further than what is kept: forget everything to be safe
            return self.recorded, [None]
        return self.recorded, self.keys[len(self.keys) - missed :] if missed else []


@dataclass(frozen=True)
class SpeechPlan:
    """What the deployment runs: the synthesizer, and how many replicas with how much of a GPU each."""

    backend: str
    model: str
    options: SynthesizerOptions
    replicas: int
    gpus_per_replica: float
    # Every sentence in flight on a replica is one open request: as many as its speech service batches, and a
    # few more waiting for a slot there rather than piling up in front of a busy replica while another has room.
    max_ongoing_requests: int


@serve.deployment(name="speech", health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress(speech_api())
class SpeechReplica:
    """One replica: one synthesizer (its model loaded before Serve sends it anything), serving the API."""

    async def __init__(self, backend: str, model: str, device: str, options: SynthesizerOptions) -> None:
        self.synthesizer = make_synthesizer(backend, model, device, options)
        await self.synthesizer.load()  # raises with the operator's fix; Serve reports it and retries the replica
        # A new replica caches nothing yet: only forget requests from now on concern it.
        self.ledger = ForgetLedger.options(name=LEDGER_NAME, get_if_exists=True, lifetime="detached").remote()
        self.seen, _ = await self.ledger.since.remote(0)
        serve_synthesizer(self.synthesizer, share_forget=self._share_forget)
        log.info("speech replica %s:%d ready with %s", socket.gethostname(), os.getpid(), self.synthesizer.tag)

    async def _share_forget(self, voice_key: str | None) -> None:
        self.seen = max(self.seen, await self.ledger.record.remote(voice_key))  # applied here already

    async def check_health(self) -> None:
        """Every 10 s: apply what other replicas were told to forget. (Liveness itself is Ray's: a replica whose
        process died is replaced.)"""
        recorded, keys = await self.ledger.since.remote(self.seen)
        for key in keys:
            apply_forget(key)
        self.seen = recorded


def speech_application(plan: SpeechPlan) -> Any:
    """The bound Serve application for `plan` (what `serve.run` takes)."""
    deployment = SpeechReplica.options(
        num_replicas=plan.replicas,
        max_ongoing_requests=plan.max_ongoing_requests,
        ray_actor_options={"num_gpus": plan.gpus_per_replica, "num_cpus": 1},
    )
    # The device follows what Ray gives a replica (its GPU, made `cuda` for it), not the launching machine's.
    device = "cuda" if plan.gpus_per_replica else "cpu"
    return deployment.bind(plan.backend, plan.model, device, plan.options)


def replica_layout(gpus: float, replicas: int | None) -> tuple[int, float]:
    """Replicas and GPUs each: one per whole GPU in the cluster by default, or one on the CPU where there is none.
    Raises ValueError for more replicas than GPUs (Ray could never place them: the deployment would wait for ever)."""
    whole = int(gpus)
    if whole < 1:
        return replicas or 1, 0.0
    if replicas is not None and replicas > whole:
        raise ValueError(f"{replicas} replicas need {replicas} GPUs, and the cluster has {whole}")
    return replicas or whole, 1.0
