"""Will the carried wheels run on the GPU machine? Every requirement of every wheel in bench/device_wheels.txt,
read from the wheel itself (METADATA's Requires-Dist, markers evaluated for the target Python), must be met by
another carried wheel or by the machine's own packages, at a version the requirement admits.

    python3 bench/device_deps.py --against listed      # the machine as bench/device_packages.txt describes it
                                                       # (Python 3.12.3): here, before any device time is spent
    python3 bench/device_deps.py --against installed   # what this interpreter really has (the carried wheels on
                                                       # PYTHONPATH first): on the machine, and in the rehearsal

A requirement on a listed package whose version the list does not know is said as "assumed"; --against
installed then checks it for real. Exit status 1 when anything is unmet or a listed wheel is missing.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> dict[str, str | None]:
    """name -> version (None where unknown) from a `name` or `name==version` per line file."""
    out: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[norm(name)] = version or None
    return out


def wheel_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", choices=("listed", "installed"), required=True)
    ap.add_argument("--wheels", default=None, help="the folder of wheels (default .whl/cp312, or this "
                    "interpreter's with --against installed)")
    ap.add_argument("--list", default=str(ROOT / "bench" / "device_wheels.txt"), help="the carried wheels' list")
    args = ap.parse_args()
    installed = args.against == "installed"
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}" if installed else "cp312"
    folder = Path(args.wheels or ROOT / ".whl" / tag)
    # The markers of the target: this interpreter, or the machine's Python 3.12.3 on Linux.
    env = None if installed else {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                                  "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                                  "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    carried = listed(Path(args.list))
    machine = listed(ROOT / "bench" / "device_packages.txt")
    wheels = {norm(w.name.split("-")[0]): w for w in folder.glob("*.whl")}
    problems, assumed, checked = [], [], 0

    def have(name: str) -> tuple[str | None, str]:
        """(version, where) of a package the target has; (None, "") when it has none."""
        if installed:
            from importlib.metadata import PackageNotFoundError, version

            try:
                return version(name), "installed"
            except PackageNotFoundError:
                return None, ""
        if name in carried:
            return carried[name], "carried"
        if name in machine:
            return machine[name] or "?", "on the machine"
        return None, ""

    for name, pinned in carried.items():
        wheel = wheels.get(name)
        if wheel is None:
            problems.append(f"{name}=={pinned}: no wheel in {folder} (run bench/device_fetch.sh)")
            continue
        if installed:  # the carried version is the one this interpreter imports, nothing shadows it
            got, _ = have(name)
            if got != pinned:
                problems.append(f"{name}: {got or 'nothing'} is what imports, not the carried {pinned}")
        for raw in wheel_requires(wheel):
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({**(env or {}), "extra": ""}):
                continue  # an extra's requirement, or one for another Python
            checked += 1
            dep = norm(req.name)
            got, where = have(dep)
            if got is None:
                problems.append(f"{name} needs {req}: neither carried nor on the machine")
            elif got == "?":
                if req.specifier:
                    assumed.append(f"{name} needs {req} ({dep} is on the machine, its version unknown)")
            elif req.specifier and not req.specifier.contains(Version(got), prereleases=True):
                problems.append(f"{name} needs {req}: {where} is {got}")
    print(f"{len(carried)} carried wheels ({folder}), {checked} requirements checked against "
          f"{'this interpreter' if installed else 'the carried wheels and bench/device_packages.txt (Python 3.12.3)'}")
    for line in assumed:
        print(f"  assumed: {line}")
    for line in problems:
        print(f"  UNMET: {line}")
    print("requirements: all met" if not problems else f"requirements: {len(problems)} unmet")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
