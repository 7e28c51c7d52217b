"""What the tests share besides fixtures (tests/conftest.py): the Discord stand-in (standin/), the Hub stand-in
(hub_standin.py), fleets of real bot and worker processes (fleet.py), a Redis primary with a replica and
sentinels (ha.py), and earlier releases unpacked from git history (history.py). Imported as `tests.support.*`:
pytest puts the repository root on sys.path (tests/ is a package), and so does a bench script."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
