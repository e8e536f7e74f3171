"""The two helpers of the Makefile's lean CPU install (see deploy/requirements-torch-cpu.txt).

The Makefile installs torch and the CUDA libraries it links with ``pip install --no-deps``
from that file, then the project with ``--no-deps``: a plain ``pip install -e .`` would pull
torch's remaining requirements (triton, cuSOLVER, ...) back in. These two commands install
the rest and prove that nothing but those deliberate omissions is missing:

``python deploy/lean_install.py rest``
    prints the project's requirements and its ``dev`` extra, less torch, one a line, for
    ``pip install -r``;
``python deploy/lean_install.py check``
    runs ``pip check`` and fails on any problem other than a package of ``LEFT_OUT`` not
    installed (a torch pin that pyproject's range excludes, a CUDA wheel at a version torch
    does not ask for, a dependency of another package missing), then fails unless torch
    imports and multiplies two matrices on the CPU (a CUDA library left out that it links).

Only the standard library is used: ``rest`` runs before anything else is installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# What a CPU never loads, left out on purpose (sizes installed, torch 2.15 on Linux x86_64).
LEFT_OUT = frozenset(
    {
        "triton",  # GPU kernels of torch.compile, 1.0 GB
        "cuda-toolkit",  # metapackage; its extras bring cuSOLVER (0.26 GB) and NVTX
        "cuda-bindings",  # Python bindings of the CUDA driver, 30 MB
        "nvidia-cuda-cccl",  # C++ headers that nvshmem declares, 19 MB
    }
)

_NOT_INSTALLED = re.compile(r"^\S+ \S+ requires (\S+), which is not installed\.$")
_NAME = re.compile(r"^[A-Za-z0-9._-]+")
_TORCH_ON_CPU = "import torch; assert (torch.eye(8) @ torch.ones(8, 8)).sum().item() == 64.0"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_except_torch(pyproject: Path = PYPROJECT) -> list[str]:
    """The project's requirements and its ``dev`` extra, in pyproject's order, without torch."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    every = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return [line for line in every if _canonical(_NAME.findall(line)[0]) != "torch"]


def unexpected_problems(pip_check_output: str) -> list[str]:
    """The lines of ``pip check`` that are not a package of ``LEFT_OUT`` not installed."""
    problems = []
    for line in pip_check_output.splitlines():
        missing = _NOT_INSTALLED.match(line.strip())
        if missing and _canonical(missing.group(1)) in LEFT_OUT:
            continue
        if line.strip() and line.strip() != "No broken requirements found.":
            problems.append(line.strip())
    return problems


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False)


def _check() -> int:
    pip_check = _run("-m", "pip", "check")
    problems = unexpected_problems(pip_check.stdout + pip_check.stderr)
    torch_on_cpu = _run("-c", _TORCH_ON_CPU)
    if torch_on_cpu.returncode != 0:
        last_line = (torch_on_cpu.stderr.strip().splitlines() or ["no output"])[-1]
        problems.append(f"torch does not run on the CPU: {last_line}")
    for problem in problems:
        print(f"lean install: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    if argv == ["rest"]:
        print("\n".join(requirements_except_torch()))
        return 0
    if argv == ["check"]:
        return _check()
    print("usage: python deploy/lean_install.py rest|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
