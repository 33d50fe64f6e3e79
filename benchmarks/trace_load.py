"""How long a large trace takes to load, and what it costs in memory and objects.

    python benchmarks/trace_load.py [--rows 5000000] [--dir /tmp] [--out results/bench]

Generates (once, cached in --dir) a ``--rows``-row Azure-2023-style CSV (datetime
timestamps), the same number of rows as a plain numeric CSV and as a BurstGPT CSV (text
columns, loaded with a model filter), and a
Mooncake JSONL of a fifth as many rows, then loads each through ``resolve_workload`` in a
fresh process and reports wall and CPU time (CPU time is the steadier figure on a
shared machine), rows/s, peak RSS and how many Python objects the
loaded workload left alive (the point of the column-wise readers: a few arrays, not
one object per row). Prints a table and writes ``trace_load.json`` to --out.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _make(kind: str, rows: int, path: Path) -> None:
    import numpy as np

    from scripts.make_traces import big_azure

    if kind == "azure":
        big_azure(rows, path)
        return
    if kind == "burstgpt":  # text columns: the split-and-convert path, plus a model filter
        rng = np.random.default_rng(2)
        with path.open("w") as f:
            f.write("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n")
            t = 0
            for i in range(0, rows, 500_000):
                m = min(500_000, rows - i)
                ts = t + np.cumsum(rng.integers(0, 2, m))
                t = int(ts[-1])
                model = rng.choice(["ChatGPT", "GPT-4"], m).tolist()
                p = rng.integers(1, 8000, m).tolist()
                o = rng.integers(1, 2000, m).tolist()
                f.write("".join(f"{a},{b},{c},{d},{c + d},Conversation log\n"
                                for a, b, c, d in zip(ts.tolist(), model, p, o)))
        return
    rng = np.random.default_rng(1)
    block = 500_000
    t0 = 0.0
    with path.open("w") as f:
        if kind == "csv":
            f.write("arrival,prompt_len,output_len\n")
        for i in range(0, rows, block):
            m = min(block, rows - i)
            t = t0 + np.cumsum(rng.exponential(0.05, m))
            t0 = float(t[-1])
            p = rng.integers(1, 8000, m).tolist()
            o = rng.integers(1, 2000, m).tolist()
            if kind == "csv":
                f.write("".join(f"{a:.6f},{b},{c}\n" for a, b, c in zip(t.tolist(), p, o)))
            else:
                f.write("".join(
                    f'{{"timestamp": {int(a * 1000)}, "input_length": {b}, "output_length": {c}, '
                    f'"hash_ids": [{b % 97}, {b % 89 + 100}]}}\n' for a, b, c in zip(t.tolist(), p, o)))


def _load(path: str, queue: mp.Queue) -> None:
    from streamserve.workload.resolve import resolve_workload

    config = {"model": "GPT-4"} if "burstgpt" in path else None
    gc.collect()
    objects0 = len(gc.get_objects())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    w = resolve_workload(path, config=config, warn=lambda m: None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.collect()
    queue.put({
        "rows": len(w), "load_s": round(wall, 3), "cpu_s": round(cpu, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(rss0 / 1024, 1),
        "python_objects_kept": len(gc.get_objects()) - objects0,
        "array_mb": round(sum(a.nbytes for a in (w.prompt_len, w.output_len, w.arrival, w.dataset)) / 2**20, 1),
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp"))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    ap.add_argument("--only", nargs="*", help="formats to load (azure csv burstgpt mooncake)")
    args = ap.parse_args()
    files = {
        "azure": args.dir / f"streamserve_azure_{args.rows}.csv",
        "csv": args.dir / f"streamserve_numeric_{args.rows}.csv",
        "burstgpt": args.dir / f"streamserve_burstgpt_{args.rows}.csv",
        "mooncake": args.dir / f"streamserve_mooncake_{args.rows // 5}.jsonl",
    }
    for kind, path in files.items():
        if not path.exists():
            t = time.perf_counter()
            _make(kind, args.rows if kind != "mooncake" else args.rows // 5, path)
            print(f"generated {path} in {time.perf_counter() - t:.1f}s")
    ctx = mp.get_context("spawn")
    results = []
    for kind, path in files.items():
        if args.only and kind not in args.only:
            continue
        q: mp.Queue = ctx.Queue()
        p = ctx.Process(target=_load, args=(str(path), q))
        p.start()
        row = q.get()
        p.join()
        file_rows = args.rows // 5 if kind == "mooncake" else args.rows
        row.update({"format": kind, "file": path.name, "file_mb": round(path.stat().st_size / 2**20, 1),
                    "file_rows": file_rows, "file_rows_per_s": round(file_rows / row["load_s"])})
        results.append(row)
        print(f"{kind:9s} {file_rows:>9,} rows ({row['rows']:,} kept)  {row['file_mb']:7.1f} MB  "
              f"load {row['load_s']:6.2f} s (cpu {row['cpu_s']:6.2f} s)  "
              f"{row['file_rows_per_s']:>10,} rows/s  peak RSS {row['peak_rss_mb']:7.1f} MB  "
              f"objects kept {row['python_objects_kept']:,}")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"python": sys.version.split()[0], "cpus": mp.cpu_count(), "loadavg_1m_after": os.getloadavg()[0]}
    (args.out / "trace_load.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out / 'trace_load.json'}")


if __name__ == "__main__":
    main()
