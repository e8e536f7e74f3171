"""The Makefile's lean CPU install: what it installs besides torch, and what its check lets pass."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from deploy.lean_install import LEFT_OUT, requirements_except_torch, unexpected_problems

REPO = Path(__file__).resolve().parents[2]


def test_rest_is_every_requirement_and_dev_extra_but_torch() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    rest = requirements_except_torch()
    assert not [line for line in rest if re.match(r"torch\b", line)]
    expected = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    assert rest == [line for line in expected if not line.startswith("torch")]
    assert "faust-streaming>=0.11.3,<0.16" in rest and "pytest>=8,<10" in rest


def test_rest_keeps_packages_whose_name_only_starts_with_torch(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\ndependencies = ["Torch>=2.4", "torchvision>=0.1", "numpy"]\n'
        '[project.optional-dependencies]\ndev = ["torch_geometric"]\n'
    )
    assert requirements_except_torch(pyproject) == ["torchvision>=0.1", "numpy", "torch_geometric"]


def test_check_lets_only_the_deliberate_omissions_pass() -> None:
    output = "\n".join(
        [
            "torch 2.15.0 requires triton, which is not installed.",
            "torch 2.15.0 requires cuda-toolkit, which is not installed.",
            "torch 2.15.0 requires cuda_bindings, which is not installed.",
            "nvidia-nvshmem-cu13 3.7.2 requires nvidia-cuda-cccl, which is not installed.",
        ]
    )
    assert unexpected_problems(output) == []
    assert unexpected_problems("No broken requirements found.") == []
    broken = [
        "torch 2.15.0 requires nvidia-cudnn-cu13, which is not installed.",
        "rum-stream 0.1.0 has requirement torch<3,>=2.4, but you have torch 3.0.0.",
        "sympy 1.14.0 has requirement mpmath<1.4,>=1.1.0, but you have mpmath 1.4.1.",
    ]
    assert unexpected_problems("\n".join([output, *broken])) == broken


def test_requirements_file_leaves_out_exactly_what_the_check_forgives() -> None:
    lines = (REPO / "deploy" / "requirements-torch-cpu.txt").read_text().splitlines()
    names = {re.split(r"[=<>;\s]", line, maxsplit=1)[0] for line in lines if line[:1].isalpha()}
    assert "torch" in names and "nvidia-cudnn-cu13" in names
    assert not names & LEFT_OUT


def test_pinned_torch_is_in_pyproject_range() -> None:
    pins = (REPO / "deploy" / "requirements-torch-cpu.txt").read_text()
    pinned = re.search(r"^torch==(\S+)$", pins, re.M)
    assert pinned is not None
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [Requirement(d) for d in dependencies if Requirement(d).name == "torch"]
    assert torch.specifier.contains(pinned.group(1)), (pinned.group(1), str(torch.specifier))
