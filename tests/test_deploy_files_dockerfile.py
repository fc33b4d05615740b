"""The Dockerfile: its base image per variant, the Python and PyTorch it brings, and what the image runs as.

No image is built here (base images can't be pulled in CI), so the Dockerfile is checked the way BuildKit reads it
(see tests/deploy_files_helpers.py): for a base image whose Python is too old, a PyTorch for another CUDA, a
dependency list that doesn't match pyproject.toml, or a secret or root user in the image.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib

import pytest
from packaging.specifiers import SpecifierSet

from tests.deploy_files_helpers import ROOT, dockerfile, variant_stage

# The Python each Ubuntu release ships: the image's base decides which Python aLAN runs on.
UBUNTU_PYTHON = {"22.04": "3.10", "24.04": "3.12", "26.04": "3.13"}


# The Dockerfile ----------------------------------------------------------------------------------------------------


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
