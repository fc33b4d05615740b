"""The compose files: docker-compose.yml and its CPU override, and the aLAN commands the containers run.

No image is built here (base images can't be pulled in CI), so the files are checked the way Compose reads them:
against the Compose Specification's own JSON schema, then for the mistakes the schema can't see (an undeclared
volume, a dependency on a service without a health check, a command aLAN doesn't have). The Dockerfile and the build
context are tested in test_deploy_files_dockerfile.py and test_deploy_files_dockerignore.py.

tests/data/compose-spec.json is schema/compose-spec.json of github.com/compose-spec/compose-spec at commit
170098ba07d9f53c383a41bfd4c5166b0a4529a6 (the file last changed in a08f8d51631b7127ddac3d2c65537db429d0f1d0,
2025-10-28); to update it, replace the file with a newer one and run these tests.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml

from alan.cli import app
from alan.settings import Settings
from tests.deploy_files_helpers import (
    COMPOSE,
    COMPOSE_CPU,
    PROJECTS,
    cpu_project,
    dockerfile,
    gpu_project,
    health_test,
    load,
    merge,
    named_volumes,
    one_shot,
    reserves_gpu,
    services,
    variant_stage,
    without_resets,
)

SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"


@cache
def schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/"), "the vendored schema changed draft"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(document: dict[str, Any]) -> list[str]:
    return sorted(
        f"{'.'.join(str(part) for part in error.absolute_path) or '(top)'}: {error.message}"
        for error in schema_validator().iter_errors(without_resets(document))
    )


# The schema --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda path: path.name)
def test_each_compose_file_follows_the_compose_specification(path: Path) -> None:
    assert schema_errors(load(path)) == []


def test_the_cpu_project_follows_the_compose_specification_once_merged() -> None:
    assert schema_errors(cpu_project()) == []


def test_the_schema_catches_the_mistakes_it_should() -> None:
    # A vendored schema that accepted anything would make the tests above worthless.
    document = copy.deepcopy(gpu_project())
    document["services"]["alan"]["depends_on"]["models"]["condition"] = "service_done"
    document["services"]["alan"]["healthcheck"]["intervall"] = "30s"
    document["services"]["ollama"]["restart_policy"] = "always"
    errors = " | ".join(schema_errors(document))
    assert "services.alan.depends_on" in errors
    assert "services.alan.healthcheck: 'intervall' does not match" in errors
    assert "services.ollama: 'restart_policy' does not match" in errors


def test_the_reset_tag_is_read_and_unknown_tags_are_refused(tmp_path: Path) -> None:
    base = {"services": {"ollama": {"image": "ollama/ollama", "deploy": {"replicas": 1}}}}
    assert merge(base, load(COMPOSE_CPU))["services"]["ollama"] == {"image": "ollama/ollama"}
    wrong = tmp_path / "compose.yml"
    wrong.write_text("services:\n  alan:\n    deploy: !rest {}\n")
    with pytest.raises(yaml.constructor.ConstructorError, match="!rest"):
        load(wrong)


# What the schema can't see -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", PROJECTS)
def test_every_named_volume_is_declared(variant: str) -> None:
    project = PROJECTS[variant]()
    declared = set(project.get("volumes", {}))
    used = {volume for service in services(project).values() for volume, _ in named_volumes(service)}
    assert used <= declared, f"used but not declared under volumes: {sorted(used - declared)}"
    assert declared <= used, f"declared but used by no service: {sorted(declared - used)}"


@pytest.mark.parametrize("variant", PROJECTS)
def test_dependencies_exist_and_their_conditions_can_be_met(variant: str) -> None:
    project = PROJECTS[variant]()
    for name, service in services(project).items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services(project), f"{name} depends on {dependency}, which is not a service"
            target = services(project)[dependency]
            if rule["condition"] == "service_healthy":
                # Without a health check of its own, Compose would wait on the image's, or fail.
                assert health_test(target), f"{name} waits for {dependency} to be healthy; it has no health check"
            if rule["condition"] == "service_completed_successfully":
                assert one_shot(target), f"{name} waits for {dependency} to exit, but it restarts"
            if "profiles" in target:  # a service that is only sometimes there can't be required
                assert rule.get("required") is False, f"{name} requires {dependency}, which is only in a profile"


def test_alan_starts_after_ollama_is_healthy_and_the_models_are_downloaded() -> None:
    depends = services(gpu_project())["alan"]["depends_on"]
    assert depends["ollama"]["condition"] == "service_healthy"
    assert depends["models"]["condition"] == "service_completed_successfully"
    assert services(gpu_project())["models"]["depends_on"]["ollama"]["condition"] == "service_healthy"


@pytest.mark.parametrize("variant", PROJECTS)
def test_servers_restart_and_have_health_checks_and_the_one_shot_job_does_not(variant: str) -> None:
    project = services(PROJECTS[variant]())
    for name in ("ollama", "alan", "postgres"):
        assert project[name]["restart"] == "unless-stopped", name
        test = health_test(project[name])
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    assert one_shot(project["models"])
    assert health_test(project["models"]) is None  # the image's `alan health` would call a download unhealthy


def test_the_gpu_is_reserved_for_ollama_and_alan_only() -> None:
    project = services(gpu_project())
    assert {name for name, service in project.items() if reserves_gpu(service)} == {"ollama", "alan"}
    for name in ("ollama", "alan"):
        [device] = project[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"


def test_the_cpu_file_reserves_no_gpu_and_builds_the_cpu_image() -> None:
    gpu, cpu = services(gpu_project()), services(cpu_project())
    assert not any(reserves_gpu(service) for service in cpu.values())
    for name in ("models", "alan"):
        assert gpu[name]["build"]["args"]["VARIANT"] == "cuda"
        assert cpu[name]["build"]["args"]["VARIANT"] == "cpu"
        assert cpu[name]["build"]["context"] == "."
        assert cpu[name]["image"] != gpu[name]["image"], "the CPU image would overwrite the GPU one's tag"
        assert variant_stage("cpu") in dockerfile().stages
    assert gpu["models"]["image"] == gpu["alan"]["image"] and cpu["models"]["image"] == cpu["alan"]["image"]


@pytest.mark.parametrize("name", ["models", "alan"])
def test_alan_reads_env_but_finds_data_caches_and_ollama_where_compose_puts_them(name: str) -> None:
    project = gpu_project()
    service = services(project)[name]
    # .env may be missing (aLAN then says what to set) and is read at run time, never built into the image.
    assert service["env_file"] == [{"path": ".env", "required": False}]
    environment = service["environment"]
    # `environment` wins over env_file, and .env.example's ALAN_DATA_DIR=./data and OLLAMA_HOST=127.0.0.1 would
    # otherwise put the database outside the volume and look for Ollama inside aLAN's own container.
    mounts = {target: volume for volume, target in named_volumes(service)}
    assert environment["ALAN_DATA_DIR"] in mounts
    assert any(environment["HF_HOME"].startswith(target + "/") for target in mounts)
    assert mounts[environment["ALAN_DATA_DIR"]] != mounts[environment["HF_HOME"].rsplit("/", 1)[0]]
    assert environment["OLLAMA_HOST"] == "http://ollama:11434"
    assert "ollama" in services(project)
    # The same places as the image's defaults, so that `docker run` and Compose agree.
    assert dockerfile().env["ALAN_DATA_DIR"] == environment["ALAN_DATA_DIR"]
    assert dockerfile().env["HF_HOME"] == environment["HF_HOME"]
    known = {alias for field in Settings.model_fields.values() for alias in aliases(field.validation_alias)}
    unknown = set(environment) - known - {"HF_HOME"}
    assert not unknown, f"not settings aLAN reads: {sorted(unknown)}"


def aliases(alias: object) -> list[str]:
    if isinstance(alias, str):
        return [alias]
    return [str(choice) for choice in getattr(alias, "choices", [])]


def test_postgres_is_only_there_with_its_profile_and_its_password_is_not_in_the_file() -> None:
    postgres = services(gpu_project())["postgres"]
    assert postgres["profiles"] == ["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${")  # from .env or the shell, never here
    assert services(gpu_project())["alan"]["depends_on"]["postgres"] == {
        "condition": "service_healthy",
        "required": False,
    }


# Commands the containers run are aLAN's -----------------------------------------------------------------------------


def resolve(argv: list[str]) -> Any:
    """The command `alan ARGV…` runs (Typer's, from the app `alan` is); fails, naming the word, if there is none."""
    command = typer.main.get_command(app)
    words = list(argv)
    # A group has `commands` (Typer bundles its own click, so isinstance against click's classes would miss).
    while hasattr(command, "commands") and words:
        word = words.pop(0)
        assert word in command.commands, f"`alan {' '.join(argv)}`: aLAN has no command {word!r}"
        command = command.commands[word]
    assert not hasattr(command, "commands"), f"`alan {' '.join(argv)}` names a group, not a command"
    assert not words, f"`alan {' '.join(argv)}`: {words[0]!r} is an argument; the commands here take none"
    return command


def test_the_images_entrypoint_and_health_check_are_real_commands() -> None:
    image = dockerfile()
    entrypoint = image.exec_form("ENTRYPOINT")
    assert entrypoint[:2] == ["/usr/bin/tini", "--"] and entrypoint[2:] == ["alan"]
    assert resolve(image.exec_form("CMD")).name == "run"
    healthcheck = image.instruction("HEALTHCHECK")
    assert healthcheck.startswith("--") and " CMD " in healthcheck
    test = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert test[0] == "alan" and resolve(test[1:]).name == "health"


@pytest.mark.parametrize("variant", PROJECTS)
def test_the_compose_services_run_real_commands(variant: str) -> None:
    project = services(PROJECTS[variant]())
    for name in ("models", "alan"):
        assert "build" in project[name] and "entrypoint" not in project[name]  # the image's `tini -- alan`
    assert resolve(project["alan"]["command"]).name == "run"
    assert resolve(project["models"]["command"]).name == "download"  # `alan models download`
    test = health_test(project["alan"])
    assert test is not None and test[:2] == ["CMD", "alan"] and resolve(test[2:]).name == "health"
