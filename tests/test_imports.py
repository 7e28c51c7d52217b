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
    "import dreamcore, dreamcore.job, dreamcore.queue, dreamcore.results, dreamcore.settings, dreamcore.limits",
    "import dreamcore.cli, dreamcore.present, dreamcore.logs, dreamcore.localredis",
    "import bot.main, bot.client, bot.commands, bot.relay, bot.backend",
])
def test_bot_and_core_never_import_torch(imports):
    loaded = _modules_after(imports)
    assert "torch" not in loaded
    assert "diffusers" not in loaded
    assert "transformers" not in loaded


def test_worker_never_imports_discord():
    loaded = _modules_after("import worker.runner, worker.tasks, worker.demo, worker.pipeline")
    assert "discord" not in loaded
    assert "discord.gateway" not in loaded
