"""How long a gateway takes to read profile files, and what they cost in memory.

Writes ``--files`` user profile files (default 100) into a scratch folder beside a gateway
config, each a meter of ``--points`` points (float32 measurements, counters, a status word of
bits with labels, a serial-number string; every fifth file extends a shipped profile instead),
then measures, in this process:

* the shipped profiles (devices/*.yaml) read once;
* ``edge check``'s whole load of the config with the folder (``load_config``: every file read,
  checked, its profile built; one device per file, each with its read plan), best of
  ``--repeat`` runs;
* the memory the loaded profiles hold (tracemalloc, after the load, and the peak during it)
  and their size pickled (what ``edge run``'s checking child sends the gateway).

    python bench/profile_load.py --files 100 --points 40

Last line: RESULT files=<n> points_per_file=<n> shipped_ms=<n> load_ms=<n> ms_per_file=<n>
held_kb=<n> peak_kb=<n> pickled_kb=<n>
"""

from __future__ import annotations

import argparse
import gc
import pickle
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.config import load_config, runtime_view  # noqa: E402
from edge.profiles import shipped_profiles  # noqa: E402


def profile_text(i: int, points: int) -> str:
    if i % 5 == 4:  # a clone of a shipped meter, its limits and one point changed
        return (
            f"name: bench_clone_{i}\nextends: eastron_sdm630\nmodel: clone {i}\n"
            "source: bench/profile_load.py\nmax_registers_per_request: 40\n"
            "remove_points: [voltage_thd_l1, voltage_thd_l2]\n"
            "points:\n  - {name: frequency, address: 0x0046, data_type: float32, unit: Hz}\n"
        )
    lines = [
        f"name: bench_meter_{i}",
        "vendor: Bench",
        f"model: M{i}",
        f"source: bench/profile_load.py, meter {i} of a generated library",
        "max_registers_per_request: 100",
        "readable_ranges: {input: [[0, 2000]]}",
        "defaults: {table: input, data_type: float32}",
        "points:",
        "  - {name: serial_number, address: 0x1000, table: holding, data_type: string, length: 8}",
        "  - {name: alarm, address: 0x1008, table: holding, data_type: bool, bits: 0}",
        "  - {name: mode, address: 0x1008, table: holding, data_type: uint16, bits: [4, 6],",
        "     labels: {0: stopped, 1: running, 2: fault}}",
    ]
    for k in range(points - 3):
        if k % 4 == 3:
            lines.append(
                f"  - {{name: energy_{k}, address: {2 * k}, data_type: uint32, unit: kWh, "
                "scale: 0.01, kind: counter, wrap: 42949672.96}"
            )
        else:
            lines.append(f"  - {{name: value_{k}, address: {2 * k}, unit: V, description: v{k}}}")
    return "\n".join(lines) + "\n"


def write_library(folder: Path, files: int, points: int) -> Path:
    (folder / "profiles").mkdir()
    devices = []
    for i in range(files):
        (folder / "profiles" / f"bench_{i:03d}.yaml").write_text(profile_text(i, points))
        name = f"bench_clone_{i}" if i % 5 == 4 else f"bench_meter_{i}"
        devices.append(
            f"  - {{id: d{i}, profile: {name}, transport: {{type: modbus_tcp, host: 127.0.0.1, "
            f"port: {5020 + i // 200}, unit: {i % 200 + 1}}}}}\n"
        )
    cfg = folder / "gateway.yaml"
    cfg.write_text(
        f"gateway: {{id: bench}}\nbuffer: {{path: {folder / 'b.sqlite'}}}\ndevices:\n"
        + "".join(devices)
    )
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--points", type=int, default=40, help="points per generated meter")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    t0 = time.perf_counter()
    shipped_profiles()
    shipped_ms = (time.perf_counter() - t0) * 1000
    with tempfile.TemporaryDirectory(prefix="edge-profile-bench-") as tmp:
        cfg = write_library(Path(tmp), args.files, args.points)
        best = float("inf")
        for _ in range(args.repeat):
            gc.collect()
            t0 = time.perf_counter()
            loaded = load_config(cfg, check_storage=False)
            best = min(best, time.perf_counter() - t0)
        assert len(loaded.profile_files) == args.files
        del loaded
        gc.collect()
        tracemalloc.start()
        loaded = load_config(cfg, check_storage=False)
        gc.collect()
        plain = runtime_view(loaded)
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        profiles = {d: p for d, p in plain.profiles.items()}
        pickled = len(pickle.dumps((profiles, plain.plans), protocol=pickle.HIGHEST_PROTOCOL))
        n_points = sum(len(p.points) for p in profiles.values())
    print(
        f"{args.files} profile files ({n_points} points): shipped profiles read in "
        f"{shipped_ms:.0f} ms; the config with them loaded in {best * 1000:.0f} ms "
        f"({best * 1000 / args.files:.2f} ms a file, best of {args.repeat}); the loaded config "
        f"holds {held / 1024:.0f} KiB (peak {peak / 1024:.0f} KiB while reading); profiles and "
        f"plans pickled for the gateway: {pickled / 1024:.0f} KiB"
    )
    print(
        f"RESULT files={args.files} points_per_file={args.points} shipped_ms={shipped_ms:.1f} "
        f"load_ms={best * 1000:.1f} ms_per_file={best * 1000 / args.files:.2f} "
        f"held_kb={held / 1024:.0f} peak_kb={peak / 1024:.0f} pickled_kb={pickled / 1024:.0f}"
    )


if __name__ == "__main__":
    main()
