"""ShareGPT conversations (a JSON array), as ``vllm bench`` uses them.

Each conversation gives one request: its first user turn is the prompt and the model's
reply to it fixes the output length. Conversations without such a pair are skipped,
with a count in a warning.

Token counts come from a Hugging Face tokenizer when ``workload.tokenizer`` names one
(``transformers`` must be installed; it is not a dependency). Otherwise they are
estimated as ``ceil(characters / chars_per_token)`` with 4 characters per token by
default, OpenAI's rule of thumb for English text with BPE tokenizers ("a token is about
4 characters"); code and non-English text have fewer characters per token, so set
``chars_per_token`` or give a tokenizer for them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streamserve.workload.errors import Warn, WorkloadError, fail
from streamserve.workload.formats.trace import Trace
from streamserve.workload.spec import WorkloadConfig

USER_ROLES = {"human", "user"}
MODEL_ROLES = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}


def _counter(cfg: WorkloadConfig, path: Path) -> Callable[[str], int]:
    if cfg.tokenizer is None:
        cpt = cfg.chars_per_token
        return lambda text: max(1, math.ceil(len(text) / cpt))
    try:
        from transformers import AutoTokenizer  # type: ignore[import-not-found]
    except ImportError:
        raise WorkloadError(f"{path}: workload.tokenizer: {cfg.tokenizer!r} needs the 'transformers' package "
                            "(pip install transformers), or leave it out to estimate tokens from characters") from None
    try:
        tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
    except Exception as e:  # noqa: BLE001 - any load failure is the user's setting
        raise WorkloadError(f"workload.tokenizer: cannot load {cfg.tokenizer!r}: {e}") from None
    return lambda text: max(1, len(tok(text, add_special_tokens=False).input_ids))


def _items(text: str, path: Path):
    """Yield (line, item) for each element of a top-level JSON array, with its line."""
    dec = json.JSONDecoder()
    n = len(text)
    i = 0
    line = 1

    def skip_ws(j: int) -> int:
        while j < n and text[j] in " \t\r\n":
            j += 1
        return j

    def line_at(j: int) -> int:
        nonlocal i, line
        line += text.count("\n", i, j)
        i = j
        return line

    j = skip_ws(0)
    if j >= n:
        raise WorkloadError(f"{path}: empty file (expected a JSON array of conversations)")
    if text[j] != "[":
        raise fail(path, line_at(j), None, "expected a JSON array of conversations ('[' ...)")
    j = skip_ws(j + 1)
    if j < n and text[j] == "]":
        return
    while True:
        if j >= n:
            raise fail(path, line_at(j), None, "invalid JSON: the file ends inside the array (truncated?)")
        try:
            obj, end = dec.raw_decode(text, j)
        except json.JSONDecodeError as e:
            raise fail(path, line_at(e.pos), None, f"invalid JSON ({e.msg}; truncated file?)") from None
        yield line_at(j), obj
        j = skip_ws(end)
        if j < n and text[j] == ",":
            j = skip_ws(j + 1)
        elif j < n and text[j] == "]":
            return
        else:
            raise fail(path, line_at(j), None, "invalid JSON: expected ',' or ']' between conversations (truncated?)")


def _turn(turn: Any, path: Path, line: int) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise fail(path, line, "conversations", "each turn must be an object with 'from' and 'value'")
    role = turn.get("from", turn.get("role"))
    value = turn.get("value", turn.get("content"))
    if not isinstance(role, str):
        raise fail(path, line, "conversations.from", "missing or not a string")
    if not isinstance(value, str):
        raise fail(path, line, "conversations.value", "missing or not a string")
    return role.lower(), value


def read_sharegpt(path: Path, cfg: WorkloadConfig, strict: bool, warn: Warn) -> Trace:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise WorkloadError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    count = _counter(cfg, path)
    prompts: list[str] = []
    p: list[int] = []
    o: list[int] = []
    skipped = 0
    for line, item in _items(text, path):
        if not isinstance(item, dict):
            raise fail(path, line, None, "each conversation must be a JSON object")
        conv = item.get("conversations", item.get("conversation", item.get("messages")))
        if not isinstance(conv, list):
            raise fail(path, line, "conversations", "missing, or not a list of turns")
        turns = [_turn(t, path, line) for t in conv]
        pair = next(((turns[k][1], turns[k + 1][1]) for k in range(len(turns) - 1)
                     if turns[k][0] in USER_ROLES and turns[k + 1][0] in MODEL_ROLES), None)
        if pair is None or not pair[0].strip() or not pair[1].strip():
            skipped += 1
            continue
        prompts.append(pair[0])
        p.append(count(pair[0]))
        o.append(count(pair[1]))
    if skipped:
        warn(f"{path}: conversations: {skipped} conversation(s) without a user turn answered by the model skipped")
    if not p:
        raise WorkloadError(f"{path}: no usable conversations (each needs a user turn followed by a model turn)")
    return Trace(source=str(path), prompt_len=np.asarray(p, dtype=np.int64),
                 output_len=np.asarray(o, dtype=np.int64), prompts=prompts)
