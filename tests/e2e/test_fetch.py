"""`dreambot fetch-models` against a local stand-in for the Hugging Face Hub (tests/support/hub_standin.py), the real
huggingface_hub client in a real `python -m dreambot` process: what it picks from repos laid out like SDXL
1.0's (fp32 and fp16 weights, .bin copies, a single-file checkpoint, ONNX), the bytes it prints first, a run
that breaks off and the next that finishes it, a gated repo, and the worker then loading from the cache
alone (HF_HUB_OFFLINE=1) on the fp16 files. The turbo adapter is one file of a repo laid out like
SDXL-Lightning's (LoRAs for other step counts and full UNets beside it): that file alone is fetched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.support import ROOT  # noqa: E402
from tests.support.hub_standin import HubStandIn  # noqa: E402
from worker.fetch import human, pick_files  # noqa: E402

BASE, REFINER, SAFETY = "acme/sdxl-base", "acme/sdxl-refiner", "acme/nsfw"
TURBO, TURBO_FILE = "acme/lightning", "sdxl_lightning_4step_lora.safetensors"


def _publish_like_sdxl(src: Path, dst: Path, cls) -> None:
    """The tiny pipeline at `src` as a hub repo the way SDXL 1.0 is published: the plain (fp32) files, the
    fp16 variant beside them, and the extras a worker never reads."""
    pipe = cls.from_pretrained(src)
    pipe.save_pretrained(dst)
    pipe.to(torch.float16).save_pretrained(dst, variant="fp16")
    (dst / "sd_xl_single_file_1.0.safetensors").write_bytes(b"\0" * 4096)  # the one-file checkpoint
    (dst / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\0" * 2048)
    (dst / "onnx" / "unet").mkdir(parents=True)
    (dst / "onnx" / "unet" / "model.onnx").write_bytes(b"\0" * 1024)
    (dst / "README.md").write_text("# a model card\n")


@pytest.fixture(scope="module")
def hub_root(tiny_model_dir, tmp_path_factory) -> Path:
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    root = tmp_path_factory.mktemp("hub")
    _publish_like_sdxl(tiny_model_dir / "base", root / BASE, StableDiffusionXLPipeline)
    _publish_like_sdxl(tiny_model_dir / "refiner", root / REFINER, StableDiffusionXLImg2ImgPipeline)
    shutil.copytree(tiny_model_dir / "safety", root / SAFETY)
    (root / SAFETY / "pytorch_model.bin").write_bytes(b"\0" * 2048)
    (root / TURBO).mkdir(parents=True)
    shutil.copy(tiny_model_dir / "turbo" / "pytorch_lora_weights.safetensors", root / TURBO / TURBO_FILE)
    for other in ("sdxl_lightning_8step_lora.safetensors", "sdxl_lightning_4step_unet.safetensors"):
        (root / TURBO / other).write_bytes(b"\0" * 4096)
    (root / TURBO / "README.md").write_text("# a model card\n")
    return root


@pytest.fixture
def hub(hub_root):
    standin = HubStandIn(hub_root).start()
    yield standin
    standin.stop()


def _env(hub: HubStandIn, hf_home: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1",
               DREAMBOT_BASE_MODEL=BASE, DREAMBOT_REFINER_MODEL=REFINER, DREAMBOT_SAFETY_MODEL=SAFETY,
               DREAMBOT_TURBO_ADAPTER=f"{TURBO}/{TURBO_FILE}", DREAMBOT_LOG_FORMAT="json",
               DREAMBOT_METRICS_PORT="0")
    env.update(extra)
    return env


def _fetch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dreambot", "fetch-models", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def _expected(hub_root: Path) -> dict[str, set[str]]:
    fp16 = {"unet/diffusion_pytorch_model.fp16.safetensors", "unet/config.json", "scheduler/scheduler_config.json",
            "model_index.json"}
    base = fp16 | {"text_encoder/model.fp16.safetensors", "text_encoder/config.json",
                   "text_encoder_2/model.fp16.safetensors", "text_encoder_2/config.json",
                   "vae/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
                   *(f"{t}/{f}" for t in ("tokenizer", "tokenizer_2")
                     for f in os.listdir(hub_root / BASE / t))}
    refiner = fp16 | {f"tokenizer_2/{f}" for f in os.listdir(hub_root / REFINER / "tokenizer_2")}
    safety = {f for f in os.listdir(hub_root / SAFETY) if f.endswith(".json")} | {"model.safetensors"}
    return {BASE: base, REFINER: refiner, SAFETY: safety, TURBO: {TURBO_FILE}}


def _snapshot(hf_home: Path, repo: str) -> Path:
    snaps = list((hf_home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
    assert len(snaps) == 1
    return snaps[0]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_pick_files_takes_the_fp16_weights_and_only_the_components_the_worker_loads(hub_root):
    import json

    for repo, skip in ((BASE, ()), (REFINER, ("text_encoder_2", "vae"))):
        listing = sorted(_files(hub_root / repo))
        index = json.loads((hub_root / repo / "model_index.json").read_text())
        assert set(pick_files(listing, index, skip)) == _expected(hub_root)[repo]
    # A repo without the fp16 variant: its plain safetensors, never the .bin beside them.
    plain = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.bin"]
    assert pick_files(plain, {"unet": ["diffusers", "UNet2DConditionModel"]}) == plain[:3]
    # Sharded fp16 weights come with their index; a .bin-only folder gives its .bin.
    sharded = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
               "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
               "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
               "unet/diffusion_pytorch_model.safetensors.index.json",
               "unet/diffusion_pytorch_model-00001-of-00002.safetensors"]
    assert pick_files(sharded, {"unet": ["diffusers", "UNet2DConditionModel"]}) == sorted(sharded[:5])
    assert pick_files(["config.json", "pytorch_model.bin"], None) == ["config.json", "pytorch_model.bin"]
    # The classifier loads with no variant (worker/classifier.py): its plain weights even beside fp16 ones.
    assert pick_files(["config.json", "model.fp16.safetensors", "model.safetensors"], None) == [
        "config.json", "model.safetensors"]


def test_fetch_models_prints_the_bytes_then_downloads_exactly_what_the_worker_loads(hub, hub_root, tmp_path,
                                                                                  tiny_model_dir):
    hf_home = tmp_path / "hf"
    expected = _expected(hub_root)
    want_bytes = sum((hub_root / repo / f).stat().st_size for repo, files in expected.items() for f in files)

    indexes = sum((hub_root / repo / "model_index.json").stat().st_size for repo in (BASE, REFINER))

    dry = _fetch(_env(hub, hf_home), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    # The two model_index.json (read to know the components) are in the cache by then: the rest is to come.
    missing = want_bytes - indexes
    assert f"total to download: {human(missing)} ({missing} bytes)" in dry.stdout, dry.stdout
    assert f"DREAMBOT_REFINER_MODEL={REFINER}: {len(expected[REFINER])} files" in dry.stdout
    assert not any(m == "GET" and "/resolve/" in p and "model_index" not in p for m, p, _ in hub.requests)

    run = _fetch(_env(hub, hf_home))
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert out.index("total to download: ") < out.index(": ready in /"), out
    assert "fetch-models: done" in out
    assert re.search(r"Fetching \d+ files: 100%", run.stderr), run.stderr[-2000:]  # huggingface_hub's bar
    for repo, files in expected.items():
        assert _files(_snapshot(hf_home, repo)) == files, repo
    # Nothing the worker doesn't read crossed the wire: no fp32 weights, .bin, single file or ONNX.
    # (The classifier publishes plain safetensors only, and those are what it loads.)
    fetched = [p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p
               and not p.startswith((f"/{SAFETY}/", f"/{TURBO}/"))]
    assert not [p for p in fetched if re.search(r"(?<!fp16)\.safetensors$|\.bin$|\.onnx$", p)], fetched
    # Of the adapter's repo, its one file.
    assert {p.rsplit("/", 1)[-1] for m, p, _ in hub.requests
            if m == "GET" and p.startswith(f"/{TURBO}/resolve/")} == {TURBO_FILE}
    assert f"DREAMBOT_TURBO_ADAPTER={TURBO}/{TURBO_FILE}: 1 files" in out

    # Again: everything is cached, nothing to download.
    again = _fetch(_env(hub, hf_home), "--dry-run")
    assert "total to download: 0 B (0 bytes)" in again.stdout, again.stdout

    # The worker's own loading path (runner.load_pipeline, load_checker), from the cache alone, takes the
    # fp16 files (every weight it holds, in fp32 on this CPU, is a 16-bit value) and makes an image.
    check = """
import torch
from dreamcore.job import make_request
from dreamcore.settings import load_settings
from worker.runner import load_pipeline
from worker.classifier import load_checker
settings = load_settings()
pipe = load_pipeline(settings)
checker = load_checker(settings, pipe.device)
ps = [p for m in (pipe.base.unet, pipe.base.text_encoder, pipe.refiner.unet) for n, p in m.named_parameters()
      if ".lora_" not in n]  # the model's own weights (the turbo LoRA's file is fp32)
gen = pipe.generate(make_request(prompt="a lighthouse", seed=5, steps=3))
turbo = pipe.generate(make_request(prompt="a lighthouse", seed=5, mode="turbo"))
print(all(torch.equal(p, p.half().float()) for p in ps), gen.images[0].size, checker is not None,
      sorted(pipe.adapters), turbo.base_steps)
"""
    loaded = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=180,
                            env=_env(hub, hf_home, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9",
                                     DREAMBOT_DEVICE="cpu"))
    assert loaded.stdout.split() == ["True", "(1024,", "1024)", "True", "['turbo']", "4"], \
        loaded.stdout + loaded.stderr[-2000:]


def test_an_interrupted_fetch_is_finished_by_the_next_run_without_fetching_twice(hub, hub_root, tmp_path):
    hf_home = tmp_path / "hf"
    # The refiner's UNet never arrives: huggingface_hub retries it (five times, a second apart), then gives up.
    hub.cut_after(f"{REFINER}/unet/diffusion_pytorch_model.fp16.safetensors", 0, times=6)
    first = _fetch(_env(hub, hf_home))
    assert first.returncode == 1, first.stdout + first.stderr
    assert f"fetch-models: DREAMBOT_REFINER_MODEL={REFINER}: " in first.stdout
    assert "run fetch-models again (complete files are kept)" in first.stdout
    got_first = {p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p}
    assert any(p.startswith(f"/{BASE}/") for p in got_first)
    hub.requests.clear()

    second = _fetch(_env(hub, hf_home))
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.search(rf"DREAMBOT_BASE_MODEL={BASE}: \d+ files, 0 B to download \(.* already in the cache\)",
                     second.stdout), second.stdout
    again = [p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p]
    assert f"/{REFINER}/resolve/" in " ".join(again)
    assert not [p for p in again if p.startswith(f"/{BASE}/")], again  # the base was complete: not fetched again
    assert _files(_snapshot(hf_home, REFINER)) == _expected(hub_root)[REFINER]


def test_a_gated_repo_asks_for_hf_token_and_is_fetched_with_it(hub, tmp_path):
    hub.require_token = "hf_test_token_123"
    refused = _fetch(_env(hub, tmp_path / "hf"), "--dry-run")
    assert refused.returncode == 2
    assert f"DREAMBOT_BASE_MODEL={BASE}: the hub wants a token for it" in refused.stdout and "HF_TOKEN" in refused.stdout
    ok = _fetch(_env(hub, tmp_path / "hf", HF_TOKEN="hf_test_token_123"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "hf_test_token_123" not in ok.stdout + ok.stderr  # never printed
    assert all(h.get("Authorization") == "Bearer hf_test_token_123" for _, _, h in hub.requests[-5:])


def test_bad_sources_are_named(hub, tmp_path):
    missing = _fetch(_env(hub, tmp_path / "hf", DREAMBOT_BASE_MODEL="acme/nope"), "--dry-run")
    assert missing.returncode == 2 and "DREAMBOT_BASE_MODEL=acme/nope: the hub has no such repo" in missing.stdout
    offline = _fetch(_env(hub, tmp_path / "hf", HF_HUB_OFFLINE="1"))
    assert offline.returncode == 2 and "HF_HUB_OFFLINE is set" in offline.stdout
    odd = _fetch(_env(hub, tmp_path / "hf", DREAMBOT_REFINER_MODEL="./not/here"), "--dry-run")
    assert odd.returncode == 2 and "DREAMBOT_REFINER_MODEL=./not/here: no model found there" in odd.stdout
    no_file = _fetch(_env(hub, tmp_path / "hf", DREAMBOT_TURBO_ADAPTER=f"{TURBO}/nope.safetensors"), "--dry-run")
    assert no_file.returncode == 2
    assert f"DREAMBOT_TURBO_ADAPTER={TURBO}/nope.safetensors: the repo {TURBO} has no file nope.safetensors" in \
        no_file.stdout, no_file.stdout
    off = _fetch(_env(hub, tmp_path / "hf", DREAMBOT_TURBO_ADAPTER="off"), "--dry-run")
    assert off.returncode == 0 and "DREAMBOT_TURBO_ADAPTER" not in off.stdout, off.stdout
