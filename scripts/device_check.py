"""On whatever accelerator JAX finds: the bench at batch 64 and 512, the gradient checks
and the test suite, with every result written to one folder.

    python scripts/device_check.py --out DIR [--quick]

Runs from a checkout without installing it (PYTHONPATH is set to the checkout), so it
also works on a machine whose Python cannot install the project. Writes:

    device.json      backend, devices, jax version
    bench.json       svhn-jax bench --batch 64,512 (--modes scan_manual,scan_autodiff with --quick)
    scaling.json     with several devices: svhn-jax bench --devices all --modes none, the scan
                     modes on 1, 2, 4, ... and all devices, same batches (per-device throughput,
                     scaling efficiency); a device count that does not divide 64 measures
                     1 and all devices at global batches 64 and 512 per device instead
    gradcheck.json   svhn-jax gradcheck: every layer variant and model (and --devices all when there are several)
    pytest.txt       the test suite's output (tests that need a package the machine lacks skip
                     or fail there: read the summary line)
    summary.json     exit code and seconds of each part

Try it on the CPU first: `python scripts/device_check.py --out /tmp/dc --quick`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(name: str, cmd: list[str], out: Path, timeout: int) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, stdout, stderr = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        code, stdout, stderr = "timeout", e.stdout or "", e.stderr or ""
        stdout, stderr = (s.decode() if isinstance(s, bytes) else s for s in (stdout, stderr))
    (out / f"{name}.stderr.txt").write_text(stderr)
    (out / (f"{name}.json" if name != "pytest" else "pytest.txt")).write_text(stdout)
    return {"command": " ".join(cmd), "exit_code": code, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the results (created)")
    p.add_argument("--quick", action="store_true", help="two bench modes, 2 timed epochs, "
                   "the suite's fast tests only: for a first try on a CPU")
    p.add_argument("--timeout", type=int, default=540, help="seconds allowed per part")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import jax

    devices = jax.devices()
    (out / "device.json").write_text(json.dumps(
        {"backend": jax.default_backend(), "jax": jax.__version__, "count": len(devices),
         "devices": [str(d) for d in devices],
         "kind": getattr(devices[0], "device_kind", "")}, indent=2) + "\n")
    cli = [sys.executable, "-m", "svhn_jax.cli"]
    bench = cli + ["bench", "--json", "--quiet"] + (["--epochs", "2", "--n", "8192"] if args.quick else [])
    parts = [("bench", bench + ["--batch", "64,512"]
              + (["--modes", "scan_manual,scan_autodiff"] if args.quick else []))]
    gradcheck = cli + ["gradcheck", "--json"]
    if len(devices) > 1:
        d = len(devices)
        gradcheck += ["--devices", "all", "--batch", str(8 * d)]
        parts.append(("scaling", bench + ["--modes", "none"] + (
            ["--devices", "all", "--batch", "64,512"] if 64 % d == 0
            else ["--devices", f"1,{d}", "--batch", f"{64 * d},{512 * d}"])))
    tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if args.quick:
        tests += ["tests/test_layers.py", "tests/test_optim.py", "tests/test_gradcheck.py"]
    parts += [("gradcheck", gradcheck), ("pytest", tests)]
    summary = {name: _run(name, cmd, out, args.timeout) for name, cmd in parts}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if all(s["exit_code"] == 0 for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
