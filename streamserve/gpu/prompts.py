"""Prompt text for workloads that carry only lengths (generated workloads, most traces).

A live engine needs text, and what the text looks like decides how often speculation
is accepted: a summary re-uses phrases of its source, code edits re-use most of the
code. Requests whose dataset is code-like get a "rewrite this code" prompt over real
Python source; the others get a "summarise this" prompt over real English prose. Both
come from the Python standard library's own sources and docstrings, so they are
always present and never downloaded.
"""
from __future__ import annotations

import ast
import sysconfig
from functools import lru_cache
from pathlib import Path

import numpy as np

from streamserve.workload.base import Workload

CODE_DATASETS = frozenset({"code", "humaneval", "mbpp", "codegen", "coding"})
CHARS_PER_TOKEN = 4.0  # typical for BPE tokenizers on English and code
PROSE_MODULES = ("argparse", "textwrap", "difflib", "functools", "json/__init__", "collections/__init__",
                 "string", "inspect", "logging/__init__", "pathlib", "dataclasses", "typing", "heapq",
                 "bisect", "contextlib", "fractions", "statistics", "random", "shutil", "zipfile")
CODE_MODULES = ("textwrap", "heapq", "bisect", "fractions", "statistics", "colorsys", "glob", "fnmatch",
                "shlex", "calendar")


def _stdlib(rel: str) -> Path:
    return Path(sysconfig.get_paths()["stdlib"]) / f"{rel}.py"


@lru_cache(maxsize=1)
def prose_corpus() -> str:
    parts = []
    for rel in PROSE_MODULES:
        p = _stdlib(rel)
        if not p.is_file():
            continue
        tree = ast.parse(p.read_text(errors="replace"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    parts.append(" ".join(doc.split()))
    return "\n\n".join(parts)


@lru_cache(maxsize=1)
def code_corpus() -> str:
    return "\n\n".join(_stdlib(rel).read_text(errors="replace") for rel in CODE_MODULES if _stdlib(rel).is_file())


def _slice(corpus: str, chars: int, rng: np.random.Generator) -> str:
    if len(corpus) <= chars:
        return corpus
    start = int(rng.integers(0, len(corpus) - chars))
    nl = corpus.find("\n", start, start + 200)  # start at a line boundary when one is near
    if nl >= 0:
        start = nl + 1
    return corpus[start:start + chars]


def prompt_text(dataset: str, tokens: int, rng: np.random.Generator) -> str:
    """A prompt of about ``tokens`` tokens of the kind ``dataset`` names."""
    chars = max(16, int(tokens * CHARS_PER_TOKEN))
    if dataset.lower() in CODE_DATASETS:
        body = _slice(code_corpus(), chars, rng)
        return f"Rewrite the following Python code with the same behaviour, keeping names and comments:\n\n{body}\n\nRewritten code:\n"
    body = _slice(prose_corpus(), chars, rng)
    return f"Summarize the following documentation, reusing its wording where you can:\n\n{body}\n\nSummary:"


def fill_prompts(workload: Workload, seed: int) -> list[str]:
    """The workload's own prompts, or generated ones matching its lengths and datasets."""
    if workload.prompts is not None:
        return list(workload.prompts)
    rng = np.random.default_rng(seed)
    return [prompt_text(workload.datasets[int(workload.dataset[i])], int(workload.prompt_len[i]), rng)
            for i in range(len(workload))]
