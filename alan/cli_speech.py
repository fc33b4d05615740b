"""`alan speech serve`: start the speech service on a Ray cluster for several aLAN processes to share.

Ray and its Serve library come with the `cluster` extra (`pip install 'alan[cluster]'`), imported only here.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from typing import Annotated

import typer

from alan.cli_common import console, errors, settings_or_exit

speech_app = typer.Typer(help="The speech service for several aLAN processes (Ray Serve).", no_args_is_help=True)


@speech_app.command("serve")
def serve_speech(
    address: Annotated[
        str | None,
        typer.Option(help="The Ray cluster to join (`auto`: the one `ray start` made here); none: a new one."),
    ] = None,
    host: Annotated[str, typer.Option(help="Where Serve's HTTP proxy listens.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="The HTTP port of the service.")] = 8000,
    route: Annotated[str, typer.Option(help="Its path: ALAN_SPEECH_URL is http://HOST:PORT plus this.")] = "/speech",
    replicas: Annotated[
        int | None, typer.Option(min=1, help="How many replicas; default: one per GPU in the cluster, or one.")
    ] = None,
    detach: Annotated[
        bool, typer.Option(help="Deploy on the cluster given by --address and return; it keeps serving.")
    ] = False,
) -> None:
    """Deploy the speech service (the ALAN_TTS_* model, one replica per GPU) and serve it until stopped."""
    settings = settings_or_exit()
    if detach and address is None:
        errors.print("--detach needs a cluster that outlives this command: start one with `ray start --head` and "
                     "pass --address auto.")  # fmt: skip
        raise typer.Exit(2)
    try:
        import ray
        from ray import serve
    except ImportError:
        errors.print("Ray Serve is not installed: `pip install 'alan[cluster]'` (or `pip install 'ray[serve]'`).")
        raise typer.Exit(1) from None
    from alan.engine_factory import synthesizer_options
    from alan.speech_deployment import APP_NAME, SpeechPlan, replica_layout, speech_application

    # No address: a cluster of this process's own ("local"), never one that happens to run here already.
    ray.init(address=address or "local", namespace="alan", include_dashboard=False, log_to_driver=False)
    # `docker stop`, a service manager: stop as on Ctrl-C, also while the replicas are still loading. After
    # `ray.init`, whose own SIGTERM handler would abort the process instead of letting it take its app down.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        count, gpus_each = replica_layout(ray.cluster_resources().get("GPU", 0.0), replicas)
    except ValueError as error:
        errors.print(f"[red]{error}: run at most that many replicas (--replicas).[/red]", highlight=False)
        ray.shutdown()
        raise typer.Exit(2) from None
    plan = SpeechPlan(
        backend=settings.tts_backend,
        model=settings.tts_model,
        options=synthesizer_options(settings),
        replicas=count,
        gpus_per_replica=gpus_each,
        max_ongoing_requests=2 * (settings.tts_max_batch or 16),
    )
    deployed = False
    try:
        serve.start(http_options={"host": host, "port": port})
        console.print(
            f"Starting {plan.replicas} speech replica(s) of {plan.backend}:{plan.model} "
            f"({'one GPU each' if gpus_each else 'on the CPU'}); each loads its model before it serves."
        )
        try:
            serve.run(speech_application(plan), name=APP_NAME, route_prefix=route)
        except Exception as error:  # a replica that can't load: Serve's error says why (the model's fix included)
            errors.print(f"[red]The speech service did not start: {error}[/red]", highlight=False)
            raise typer.Exit(1) from None
        deployed = True
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
        console.print(f"Speech service ready: set ALAN_SPEECH_URL=http://{shown}:{port}{route} for the bots.")
        if detach:
            return
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("Stopping the speech service.")
    finally:
        if not (detach and deployed):
            with contextlib.suppress(Exception):  # stopping: what could still fail has nothing left to stop
                serve.delete(APP_NAME)  # only ours: a shared cluster may serve other applications
        ray.shutdown()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
