"""`trainer bench`: which mode runs (--make-data, --whole-run, or the four cases side by side),
and the side-by-side table with its ratios."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from trainer import files
from trainer.bench.cases import Case, case_loader, case_runner, case_synthetic
from trainer.bench.images import make_data_only, warm_page_cache
from trainer.bench.options import BenchOptions
from trainer.bench.report import header_lines, is_bench_json, settings_json, table_lines, write_json
from trainer.bench.setup import device_name, prepare, private_caches, versions
from trainer.bench.whole_run import run_whole


def bench(opts: BenchOptions) -> dict[str, Any]:
    """Run what `opts` asks for; returns (and with --json writes) the numbers."""
    if opts.make_data:
        return make_data_only(opts)
    if opts.data and not Path(opts.data).expanduser().is_dir():
        from trainer.data.layout import DataError

        raise DataError(f"--data: {opts.data!r} is not a folder")
    if opts.json:  # minutes of benchmarking must not end by overwriting a user's file
        files.check_replaceable(Path(opts.json), "--json", is_bench_json, "a trainer bench report")
    return run_whole(opts) if opts.whole_run else run_bench(opts)


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """(a)-(d) side by side; prints the table, returns (and with --json writes) the numbers."""
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp, private_caches(Path(tmp)):
        workdir = Path(tmp)
        s = prepare(opts, workdir, None, opts.phase)
        found = versions()
        header = header_lines(s, found)
        print("\n".join(header))
        warm_page_cache(s.root)
        cases: dict[str, Case] = {}
        print("(a) synthetic input ...", flush=True)
        cases["a"] = case_synthetic(s, opts.steps, opts.warmup)
        print("(c) plain ImageFolder + DataLoader ...", flush=True)
        cases["c"] = case_loader(s, opts.steps, opts.warmup, blog=False)
        print("(d) blog-script setting ...", flush=True)
        cases["d"] = case_loader(s, opts.steps, opts.warmup, blog=True)
        # The runner last: its Accelerator sets process-wide state the hand loops should not see.
        print(f"(b) trainer.train.run for {opts.epochs} epoch(s) ...", flush=True)
        cases["b"] = case_runner(s, opts.epochs, workdir)
    ordered = [cases[k] for k in "abcd"]
    b = cases["b"].images_per_second
    ratios = {f"b/{k}": b / cases[k].images_per_second for k in "acd"}
    print("\n" + "\n".join(header + [""] + table_lines(ordered, ratios)))
    result = {
        "device": device_name(s.device),
        "device_type": s.device.type,
        **found,
        "settings": settings_json(opts, s),
        "cases": {c.key: dataclasses.asdict(c) for c in ordered},
        "ratios": ratios,
    }
    write_json(opts, result)
    return result
