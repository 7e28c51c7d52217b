"""What the output classifier costs per image (worker/classifier.py), side by side with what making the image costs.

Two classifiers, both built offline and loaded back through `SafetyChecker.load` (the worker's own path):
the tiny ViT the tests use, and one with the default's architecture (`Falconsai/nsfw_image_detection` is a
ViT-base/16 at 224 px; here with random weights, since weights can't be downloaded, which costs the same).
Images are 1024x1024 RGB with real entropy, what SDXL makes; scored in batches of 1, 4 and 8 (a worker
scores a whole batch's images in one call). For scale, the same run times the tiny SDXL pair making one
64x64 image, and states the classifier's share of a real job from gpu figures where there are some.

    python bench/safety.py [--device cpu|cuda] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (paths, HF offline)
import numpy as np
import torch
from PIL import Image


def vit_base_like(out: Path) -> Path:
    """The default classifier's architecture and processor settings, random weights, saved like a hub model."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1})
    ViTForImageClassification(config).save_pretrained(out)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(out)
    return out


def images(n: int, side: int = 1024) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (side // 16, side // 16, 3), dtype=np.uint8)
    out = []
    for i in range(n):  # smooth structure plus noise, like a decoded image rather than pure noise
        big = Image.fromarray(np.roll(base, i, axis=0)).resize((side, side), Image.BICUBIC)
        arr = np.asarray(big, dtype=np.int16) + rng.integers(-12, 12, (side, side, 3))
        out.append(Image.fromarray(arr.clip(0, 255).astype(np.uint8)))
    return out


def per_image_ms(checker, batch: list[Image.Image], repeat: int) -> tuple[float, float]:
    """(median ms per image for the whole call, of which the image processor's resize and normalise)."""
    checker.scores(batch)  # warm-up
    total, prep = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        checker.processor(images=[im.convert("RGB") for im in batch], return_tensors="pt")
        t1 = time.perf_counter()
        checker.scores(batch)
        t2 = time.perf_counter()
        prep.append((t1 - t0) / len(batch))
        total.append((t2 - t1) / len(batch))
    return statistics.median(total) * 1000, statistics.median(prep) * 1000


def tiny_sdxl_ms_per_image(model_dir: Path, device: str, repeat: int) -> float:
    from dreamcore.job import make_request
    from worker.pipeline import DreamPipeline

    pipe = DreamPipeline.load(str(model_dir / "base"), str(model_dir / "refiner"), device)
    req = make_request(prompt="a lighthouse", aspect="1:1", steps=4, seed=1, count=1)
    pipe.generate(req)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        pipe.generate(req)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    from worker.classifier import SafetyChecker
    from worker.runner import quiet_model_libraries
    from worker.tiny import make_tiny_model

    quiet_model_libraries()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tmp = Path(tempfile.mkdtemp(prefix="dreambot-safety-bench-"))
    print(_common.machine())
    make_tiny_model(tmp / "tiny")
    models = {"tiny ViT (the tests')": tmp / "tiny" / "safety", "ViT-base/16 224px (the default's shape)":
              vit_base_like(tmp / "vit-base")}
    pics = images(8)
    print(f"images: 1024x1024 RGB; median of {args.repeat} calls; device {args.device}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'classifier':42} {'batch':>5} {'ms/image':>9} {'of which resize':>16}")
    base_ms = {}
    for name, folder in models.items():
        checker = SafetyChecker.load(str(folder), ["nsfw"], args.device)
        for b in (1, 4, 8):
            ms, prep = per_image_ms(checker, pics[:b], args.repeat)
            base_ms[(name, b)] = ms
            print(f"{name:42} {b:>5} {ms:>9.1f} {prep:>16.1f}")
    make = tiny_sdxl_ms_per_image(tmp / "tiny", args.device, args.repeat)
    tiny_cls = base_ms[("tiny ViT (the tests')", 1)]
    print(f"for scale: the tiny SDXL pair makes one 64x64 image (4 steps) in {make:.0f} ms; the tiny classifier "
          f"adds {tiny_cls:.1f} ms = {100 * tiny_cls / make:.1f}% of that (resize of a 1024 px image included)")
    vb = base_ms[("ViT-base/16 224px (the default's shape)", 4)]
    print(f"the default's shape on this {args.device}: {vb:.0f} ms per image in a batch of 4; against ~3.5 s of "
          f"GPU time per real 1024px SDXL image that would be {100 * vb / 3500:.1f}% even on this CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
