"""pyproject.toml and environment.yml pin the same packages at the same versions."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from conftest import REPO_ROOT

# a requirement pinned exactly: name==version, nothing else (no extras, markers or ranges)
PINNED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[0-9][0-9A-Za-z.+!-]*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: list[str], where: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for requirement in requirements:
        match = PINNED.match(requirement.strip())
        assert match, f"{where}: {requirement!r} is not pinned as name==version"
        name = canonical(match["name"])
        assert name not in result, f"{where}: {name} listed twice"
        result[name] = match["version"]
    return result


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def environment() -> dict:
    return yaml.safe_load((REPO_ROOT / "environment.yml").read_text())


def pip_section(environment: dict) -> list[str]:
    sections = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return sections[0]


def test_environment_yml_structure(environment):
    assert isinstance(environment, dict)
    assert isinstance(environment.get("name"), str) and environment["name"]
    assert isinstance(environment.get("channels"), list) and environment["channels"]
    assert isinstance(environment.get("dependencies"), list)
    conda_packages = [d for d in environment["dependencies"] if isinstance(d, str)]
    assert "pip" in conda_packages or any(d.startswith("pip=") for d in conda_packages)
    assert any(d.startswith("python") for d in conda_packages)
    assert isinstance(pip_section(environment), list) and pip_section(environment)


def test_every_dependency_is_pinned_exactly(pyproject, environment):
    project = pyproject["project"]
    pins(project["dependencies"], "pyproject dependencies")
    pins(project["optional-dependencies"]["test"], "pyproject test extra")
    pins(pip_section(environment), "environment.yml pip section")


def test_pyproject_and_environment_list_the_same_pins(pyproject, environment):
    project = pyproject["project"]
    from_pyproject = pins(project["dependencies"] + project["optional-dependencies"]["test"], "pyproject")
    from_environment = pins(pip_section(environment), "environment.yml")
    assert from_pyproject == from_environment


def test_torch_is_pinned_to_2_13_0(pyproject, environment):
    assert pins(pyproject["project"]["dependencies"], "pyproject")["torch"] == "2.13.0"
    assert pins(pip_section(environment), "environment.yml")["torch"] == "2.13.0"


def test_pins_reject_what_they_should():
    """The checker itself: ranges, extras and bare names are not pins."""
    for loose in ["torch>=2.13", "torch", "torch==2.13.*", "torch[cpu]==2.13.0", "torch ==2.13.0; python_version>'3'"]:
        with pytest.raises(AssertionError):
            pins([loose], "example")
    assert pins(["PyYAML==6.0.3", "typing_extensions==4.0"], "example") == {"pyyaml": "6.0.3", "typing-extensions": "4.0"}
