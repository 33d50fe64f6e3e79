"""vLLM's ExampleConnector (KV through a shared folder, the CPU build's connector) with
a folder that does not grow without bound.

ExampleConnector writes each prefilled prompt's KV to ``<shared_storage_path>/<hash of
the prompt's whole blocks>/`` and never removes it (860 MB after ~190 requests of the
tiny model). This subclass, loaded by every engine through ``kv_connector_module_path``,
removes

* a folder as soon as the request that loaded it from there finishes on the decode
  engine (the KV is in the decode engine's cache by then), and
* any folder older than ``max_age_s`` (``kv_connector_extra_config``, default 30 s,
  vLLM's KV lease: a prefill no decode engine claimed in that time is abandoned, as
  NIXL frees a prefill's blocks after the lease), checked at most once a second.

Both run in the engine's scheduler between steps (``request_finished`` is called from
``update_from_output``), never while a load this engine scheduled is under way: a
folder a request matched in ``schedule()`` is loaded in that same step. The one race
left is another engine aging out a folder in the instant a decode engine loads it,
which needs a KV pulled after ``max_age_s``, when the front end's scheduler has already
given up on it (``max_hold_s`` below the lease).
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.example_connector import ExampleConnector, align_to_block_size

SWEEP_EVERY_S = 1.0


class BoundedExampleConnector(ExampleConnector):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_age_s = float(self._kv_transfer_config.get_from_extra_config("max_age_s", 30.0))
        self._loaded: dict[str, str] = {}  # request id -> the folder its KV came from
        self._next_sweep = 0.0

    def _folder_of(self, request: Any) -> str:
        ids = list(request.prompt_token_ids or [])
        whole = align_to_block_size(len(ids) - 1, self._block_size)
        return self._generate_foldername_debug(torch.tensor(ids)[:whole],
                                               [f.identifier for f in request.mm_features], create_folder=False)

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        super().update_state_after_alloc(request, blocks, num_external_tokens)
        if num_external_tokens > 0:
            self._loaded[request.request_id] = self._folder_of(request)

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        folder = self._loaded.pop(request.request_id, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        self._sweep()
        return super().request_finished(request, block_ids)

    def _sweep(self) -> None:
        now = time.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        keep = set(self._loaded.values())  # requests still decoding may be re-read after a preemption
        try:
            entries = list(os.scandir(self._storage_path))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_dir() and entry.path not in keep and now - entry.stat().st_mtime > self._max_age_s:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                continue
