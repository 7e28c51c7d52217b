"""The bot and the shared core never pull in torch or diffusers; the worker never needs the gateway client."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after(imports: str) -> set[str]:
    code = f"import sys; {imports}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("imports", [
    "import dreamcore, dreamcore.job, dreamcore.queue, dreamcore.results, dreamcore.settings, dreamcore.limiter, dreamcore.limit_store",
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
    from pathlib import Path

    outer = {"bot", "worker", "dreambot"}
    found = []
    for path in sorted((Path(__file__).resolve().parent.parent / "dreamcore").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in outer]
    assert found == []
