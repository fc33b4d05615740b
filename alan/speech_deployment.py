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

from ray import serve

from alan.speech_api import serve_synthesizer, speech_api
from engine.speech_synthesizer import SynthesizerOptions
from engine.tts import make_synthesizer

log = logging.getLogger(__name__)

APP_NAME = "alan-speech"


@dataclass(frozen=True)
class SpeechPlan:
    """What the deployment runs: the synthesizer, and how many replicas with how much of a GPU each."""

    backend: str
    model: str
    device: str
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
        serve_synthesizer(self.synthesizer)
        log.info("speech replica %s:%d ready with %s", socket.gethostname(), os.getpid(), self.synthesizer.tag)

    async def check_health(self) -> None:
        await self.synthesizer.load()  # loaded: returns at once; a replica whose model is gone is replaced


def speech_application(plan: SpeechPlan) -> Any:
    """The bound Serve application for `plan` (what `serve.run` takes)."""
    deployment = SpeechReplica.options(
        num_replicas=plan.replicas,
        max_ongoing_requests=plan.max_ongoing_requests,
        ray_actor_options={"num_gpus": plan.gpus_per_replica, "num_cpus": 1},
    )
    return deployment.bind(plan.backend, plan.model, plan.device, plan.options)


def replicas_for_cluster(gpus: float) -> tuple[int, float]:
    """Replicas and GPUs each: one per whole GPU in the cluster, or one on the CPU where there is none."""
    whole = int(gpus)
    return (whole, 1.0) if whole >= 1 else (1, 0.0)
