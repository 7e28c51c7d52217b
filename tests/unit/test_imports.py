"""The bot and the shared core never pull in torch or diffusers; the worker never needs the gateway client."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT


def _modules_after(imports: str) -> set[str]:
    code = f"import sys; {imports}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("imports", [
    "import dreamcore, dreamcore.job, dreamcore.queue.rq_queues, dreamcore.results, dreamcore.settings, dreamcore.limits.limiter, dreamcore.limits.stored",
    "import dreambot.cli, dreamcore.present, dreamcore.logs, dreamcore.localredis",
    "import bot.main, bot.client, bot.commands, bot.relay, bot.backend",
    "import worker.fetch, worker.sources",  # `dreambot fetch-models` starts without loading torch
])
def test_bot_and_core_never_import_torch(imports):
    loaded = _modules_after(imports)
    assert "torch" not in loaded
    assert "diffusers" not in loaded
    assert "transformers" not in loaded


def test_worker_never_imports_discord():
    loaded = _modules_after("import worker.runner, worker.tasks, worker.demo, worker.pipeline, worker.fetch")
    assert "discord" not in loaded
    assert "discord.gateway" not in loaded


def test_the_core_never_reaches_up_into_the_rooms_that_use_it():
    """dreamcore is shared by both sides: it imports neither of them, nor the `dreambot` command above them."""
    import ast

    outer = {"bot", "worker", "dreambot"}
    found = []
    for path in sorted((ROOT / "dreamcore").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in outer]
    assert found == []


def test_the_bot_needs_nothing_its_install_leaves_out():
    """The bot's image installs `.[bot]` alone: every third-party module the bot's and the core's code import
    must come from a distribution the core dependencies and the bot extra bring in (with theirs)."""
    import ast
    import re
    from importlib import metadata

    import tomllib
    from packaging.requirements import Requirement

    root = ROOT
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]

    def name(req: str) -> str:
        return re.split(r"[ <>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-")

    wanted, todo = set(), [name(r) for r in project["dependencies"] + project["optional-dependencies"]["bot"]]
    while todo:  # the closure: what those distributions require in turn (extras and other Pythons' left out)
        dist = todo.pop()
        if dist in wanted:
            continue
        wanted.add(dist)
        try:
            reqs = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        for raw in reqs:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(name(req.name))
    imported: dict[str, str] = {}
    for path in [*(root / "bot").rglob("*.py"), *(root / "dreamcore").rglob("*.py")]:  # subpackages too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                imported.setdefault(n.split(".")[0], path.relative_to(root).as_posix())
    provided = metadata.packages_distributions()
    ours = {"bot", "dreamcore", "dreambot", "worker"}
    missing = {f"{m} ({where})": provided.get(m) for m, where in imported.items()
               if m not in ours and m not in sys.stdlib_module_names
               and not {d.lower().replace("_", "-") for d in provided.get(m, [])} & wanted}
    assert not missing, f"imported by the bot's code, not installed by .[bot]: {missing}"
