"""The container files: docker-compose.yml (and its CPU override), the Dockerfile and .dockerignore.

No image is built here (base images can't be pulled in CI), so the files are checked the way Compose and BuildKit
read them: the compose files against the Compose Specification's own JSON schema, then for the mistakes the schema
can't see (an undeclared volume, a dependency on a service without a health check, a command aLAN doesn't have, a
base image whose Python is too old, a secret let into the build context).

tests/data/compose-spec.json is schema/compose-spec.json of github.com/compose-spec/compose-spec at commit
170098ba07d9f53c383a41bfd4c5166b0a4529a6 (the file last changed in a08f8d51631b7127ddac3d2c65537db429d0f1d0,
2025-10-28); to update it, replace the file with a newer one and run these tests.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml
from packaging.specifiers import SpecifierSet

from alan.cli import app
from alan.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
# The Python each Ubuntu release ships: the image's base decides which Python aLAN runs on.
UBUNTU_PYTHON = {"22.04": "3.10", "24.04": "3.12", "26.04": "3.13"}
GPU = "gpu"


# Reading compose files as Compose does -----------------------------------------------------------------------------


class Reset:
    """Compose's `!reset` tag: the override removes this key from what it merges into."""

    def __repr__(self) -> str:
        return "!reset"


RESET = Reset()


class ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Compose's `!reset`; any other custom tag is an error, as in Compose."""


ComposeLoader.add_constructor("!reset", lambda _loader, _node: RESET)


def load(path: Path) -> dict[str, Any]:
    document = yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)
    assert isinstance(document, dict), f"{path.name} is not a mapping"
    return document


def without_resets(value: Any) -> Any:
    """`value` as the schema sees it: Compose takes `!reset` keys out before validating."""
    if isinstance(value, dict):
        return {key: without_resets(item) for key, item in value.items() if item is not RESET}
    if isinstance(value, list):
        return [without_resets(item) for item in value]
    return value


def merge(base: Any, override: Any) -> Any:
    """`override` applied to `base` as `docker compose -f base -f override` does, for what these files use:
    mappings merge key by key, scalars replace, `!reset` removes."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is RESET:
                merged.pop(key, None)
            else:
                merged[key] = merge(base[key], value) if key in base else without_resets(value)
        return merged
    if isinstance(override, list):
        # Compose merges each kind of list its own way (ports append, command replaces…); none is needed yet.
        raise NotImplementedError("the CPU file overrides a list: teach merge() Compose's rule for that key")
    return override


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


@cache
def gpu_project() -> dict[str, Any]:
    return load(COMPOSE)


@cache
def cpu_project() -> dict[str, Any]:
    return merge(load(COMPOSE), load(COMPOSE_CPU))


PROJECTS = {"gpu": gpu_project, "cpu": cpu_project}


def services(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return project["services"]


def named_volumes(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(volume, path in the container) for each named volume the service mounts, short or long syntax."""
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
            if source and not source.startswith((".", "/", "~", "$")):  # not a bind mount
                yield source, target
        elif volume.get("type", "volume") == "volume" and volume.get("source"):
            yield volume["source"], volume["target"]


def reserves_gpu(service: dict[str, Any]) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(GPU in device.get("capabilities", []) for device in devices) or "gpus" in service


def one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart", "no") == "no"


def health_test(service: dict[str, Any]) -> list[str] | None:
    """The service's own health check command, if it has one that is on (the image's isn't known here)."""
    check = service.get("healthcheck")
    if not check or check.get("disable") in (True, "true"):
        return None
    test = check["test"]
    return ["CMD-SHELL", test] if isinstance(test, str) else list(test)


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


# The Dockerfile ----------------------------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, with its global ARGs and its stages, as BuildKit reads them."""

    global_args: dict[str, str] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)  # stage name: the image it is FROM
    final: list[tuple[str, str]] = field(default_factory=list)  # the last stage's instructions
    env: dict[str, str] = field(default_factory=dict)  # the last stage's ENV

    def instruction(self, name: str) -> str:
        [value] = [value for instruction, value in self.final if instruction == name]
        return value

    def exec_form(self, name: str) -> list[str]:
        value = json.loads(self.instruction(name))
        assert isinstance(value, list), f"{name} must be in exec form (a JSON list): signals reach the process"
        return value

    def runs(self) -> list[str]:
        return [value for instruction, value in self.final if instruction == "RUN"]


def logical_lines(text: str) -> Iterator[str]:
    """Whole instructions: comments dropped (inside continued lines too), lines ending in `\\` joined."""
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        yield " ".join((pending + line).split())
        pending = ""
    assert not pending, "the Dockerfile ends in a continued line"


@cache
def dockerfile() -> Dockerfile:
    parsed = Dockerfile()
    seen_from = False
    for line in logical_lines((ROOT / "Dockerfile").read_text(encoding="utf-8")):
        instruction, _, value = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            seen_from = True
            image, _, name = value.partition(" AS ")
            parsed.final = []
            parsed.env = {}
            if name:
                parsed.stages[name.strip()] = image.strip()
            else:
                parsed.stages[""] = image.strip()
            continue
        if not seen_from:
            assert instruction == "ARG", f"only ARG may come before the first FROM, not {instruction}"
            key, _, default = value.partition("=")
            parsed.global_args[key] = default
            continue
        parsed.final.append((instruction, value))
        if instruction == "ENV":
            for assignment in shlex.split(value):
                key, _, item = assignment.partition("=")
                parsed.env[key] = item
    return parsed


def variant_stage(variant: str) -> str:
    return dockerfile().stages[""].replace("${VARIANT}", variant)


def base_image(variant: str) -> str:
    """The image the variant's stage starts from, its ARG resolved to its default."""
    image = dockerfile().stages[variant_stage(variant)]
    match = re.fullmatch(r"\$\{(\w+)\}", image)
    return dockerfile().global_args[match.group(1)] if match else image


def test_the_variant_picks_a_base_stage_that_exists() -> None:
    image = dockerfile()
    assert image.stages[""] == "base-${VARIANT}", "the last stage is built on the chosen variant's base"
    assert image.global_args["VARIANT"] == "cuda"
    for variant in ("cuda", "cpu"):
        assert variant_stage(variant) in image.stages


@pytest.mark.parametrize("variant", ["cuda", "cpu"])
def test_each_base_image_has_a_python_alan_runs_on(variant: str) -> None:
    image = base_image(variant)
    release = re.search(r"ubuntu:?(\d\d\.\d\d)$", image)
    assert release, f"{image}: not an Ubuntu release this test knows the Python of"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    assert UBUNTU_PYTHON[release.group(1)] in SpecifierSet(requires), f"{image}'s Python is too old for aLAN"


def test_pytorch_comes_from_the_index_matching_each_base() -> None:
    args = dockerfile().global_args
    cuda = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime)-ubuntu\d\d\.\d\d", base_image("cuda"))
    assert cuda, base_image("cuda")
    # A CUDA 12.8 image with PyTorch for another CUDA lets the toolkit accept a driver PyTorch can't use.
    assert args["CUDA_TORCH_INDEX"] == f"https://download.pytorch.org/whl/cu{cuda.group(1)}{cuda.group(2)}"
    assert args["CPU_TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert base_image("cpu").startswith("ubuntu:")
    [install] = [run for run in dockerfile().runs() if "--index-url" in run]
    assert '--index-url "$TORCH_INDEX_URL" torch' in install


def test_the_dependency_list_the_image_installs_is_pyprojects_with_the_cluster_extra() -> None:
    # Run the Dockerfile's own one-liner on the real pyproject.toml: a broken quote or key fails here, not in a build.
    [install] = [run for run in dockerfile().runs() if "pyproject.toml" in run and "python -c" in run]
    words = shlex.split(install)
    code = words[words.index("-c") + 1].replace("/tmp/alan/pyproject.toml", str(ROOT / "pyproject.toml"))
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert [line for line in listed if line] == project["dependencies"] + project["optional-dependencies"]["cluster"]
    assert any(line.startswith("ray[serve]") for line in listed)  # `alan speech serve` runs from the same image


def test_dependencies_are_installed_before_the_source_so_code_changes_reuse_them() -> None:
    runs = dockerfile().runs()
    [dependencies] = [index for index, run in enumerate(runs) if "-r /tmp/requirements.txt" in run]
    [source] = [index for index, run in enumerate(runs) if "--no-deps" in run]
    assert dependencies < source
    assert "source=pyproject.toml" in runs[dependencies]  # only pyproject.toml: editing code doesn't touch it


def test_the_image_has_what_alan_needs_at_run_time() -> None:
    [apt] = [run for run in dockerfile().runs() if "apt-get install" in run]
    packages = set(apt.split("apt-get install", 1)[1].split("&&")[0].split())
    assert {"python3", "python3-venv", "libopus0", "ca-certificates", "tini"} <= packages
    assert "rm -rf /var/lib/apt/lists/*" in apt  # the package lists don't stay in the layer
    assert dockerfile().env["ALAN_DATA_DIR"] == "/data"
    assert dockerfile().env["HF_HOME"].startswith("/models/")
    assert "install -d -o alan -g alan -m 0700 /data /models" in apt  # volumes start owner-only, the user's


def test_the_image_runs_as_a_user_and_holds_no_secret() -> None:
    image = dockerfile()
    names = [instruction for instruction, _ in image.final]
    user = image.instruction("USER")
    assert user.split(":")[0] not in ("root", "0"), "aLAN must not run as root"
    assert names.index("USER") < min(names.index(name) for name in ("ENTRYPOINT", "CMD", "HEALTHCHECK"))
    for instruction, value in image.final:
        assert instruction not in ("COPY", "ADD"), f"{instruction} {value}: the context is bind-mounted, not copied"
    variables = set(image.global_args) | set(image.env)
    variables |= {value.split("=")[0] for instruction, value in image.final if instruction == "ARG"}
    assert not [name for name in variables if re.search(r"TOKEN|SECRET|PASSWORD|KEY", name)]


# .dockerignore -----------------------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(exception?, pattern) per line of .dockerignore, translated as Docker's patternmatcher reads them."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        line = line.removeprefix("!").strip().strip("/")
        regex, index = "", 0
        while index < len(line):
            char = line[index]
            if line.startswith("**/", index):
                regex, index = regex + "(.*/)?", index + 3
                continue
            if line.startswith("**", index):
                regex, index = regex + ".*", index + 2
                continue
            if char == "*":
                regex += "[^/]*"
            elif char == "?":
                regex += "[^/]"
            elif char == "[":
                end = line.index("]", index)
                regex += "[" + line[index + 1 : end].replace("!", "^", 1) + "]"
                index = end
            else:
                regex += re.escape(char)
            index += 1
        patterns.append((exception, re.compile(regex)))
    return patterns


def ignored(path: str) -> bool:
    """Whether `path` (relative to the context) stays out of it: the last pattern matching it or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    result = False
    for exception, pattern in dockerignore_patterns():
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            result = not exception
    return result


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.local",
        "alan/.env",
        ".venv/bin/python",
        "data/alan.db",
        "data/voices/ann.ogg",
        ".git/config",
        "tests/data/compose-spec.json",
        "alan/__pycache__/cli.cpython-311.pyc",
        "alan.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeids",
        "build/lib/alan/cli.py",
        "models/csm-1b/model.safetensors",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert ignored(path)


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "alan/cli.py", "engine/tts/__init__.py", "migrations/script.py.mako"]
)
def test_dockerignore_lets_in(path: str) -> None:
    assert not ignored(path)


def context_files() -> Iterator[Path]:
    """The files of this checkout that the build context holds, as `docker build .` would send it."""
    exceptions = [pattern.pattern for exception, pattern in dockerignore_patterns() if exception]
    for path in ROOT.iterdir():
        relative = path.name
        # A left-out folder is skipped whole unless an exception might let something under it back in.
        if path.is_dir() and ignored(relative) and not any(pattern.startswith(relative) for pattern in exceptions):
            continue
        candidates = path.rglob("*") if path.is_dir() else [path]
        for candidate in candidates:
            if candidate.is_file() and not ignored(candidate.relative_to(ROOT).as_posix()):
                yield candidate


def test_the_build_context_holds_the_packages_pip_installs_and_nothing_secret() -> None:
    files = [path.relative_to(ROOT).as_posix() for path in context_files()]
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    for include in packages["packages"]["find"]["include"]:
        package = include.rstrip("*")
        assert f"{package}/__init__.py" in files, f"the package {package} is missing from the build context"
    for package, patterns in packages["package-data"].items():
        for pattern in patterns:
            for path in (ROOT / package).glob(pattern):
                assert path.relative_to(ROOT).as_posix() in files
    # The Dockerfile's bind mounts read pyproject.toml and README.md (its `readme`) from the context.
    assert {"pyproject.toml", "README.md"} <= set(files)
    assert not [name for name in files if Path(name).name.startswith(".env") or name.startswith(("data/", ".venv/"))]
    size = sum((ROOT / name).stat().st_size for name in files)
    assert size < 20 * 1024 * 1024, f"the build context is {size / 2**20:.0f} MiB: something big got in"


def test_the_dockerfiles_bind_mounts_read_what_the_context_holds() -> None:
    for run in dockerfile().runs():
        for source in re.findall(r"--mount=type=bind,source=([^,\s]+)", run):
            assert (ROOT / source).exists() and not ignored(source), source
