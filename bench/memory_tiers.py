"""What SDXL 1.0 base + refiner cost an operator: the bytes `dreambot fetch-models` downloads in fp16 and in
fp32, and the device memory each DREAMBOT_OFFLOAD tier needs per dtype, from the worker's own accounting.

No weights here: the full-size modules are built from SDXL 1.0's published configs on the meta device (shapes,
no storage; bench/sdxl_full.py holds the configs, and bench/fullsize.py checks their parameter counts against
the published ones), given the worker's speed options exactly as DreamPipeline.load gives them
(fuse_qkv's fused projections counted, the unfused ones it frees not), and sized with worker/memory.py's module_bytes, working_bytes
and needs, the numbers `memory.plan` compares with the free memory of the device.

  download   per repo, the weight files fetch-models picks (worker/fetch.py: the base's two text encoders,
             UNet and VAE; the refiner's UNet alone, since it takes text_encoder_2 and the VAE from the
             base), at 2 bytes a parameter for the fp16 variant and 4 for the plain files. The configs and
             tokenizers beside them add about 4 MB. A plain snapshot_download of both repos (every format
             they publish) is many times that, for files the worker never reads.
  tiers      device memory for `none` (every model resident) and `model` (diffusers' model CPU offload: the
             largest model at a time), each plus the working memory of a 1024 px call at batch 1 and at the
             shipped DREAMBOT_BATCH_IMAGES=8, with fuse_qkv on (shipped) and off.

    python bench/memory_tiers.py
"""

from __future__ import annotations

import _common  # noqa: F401  (paths)
import torch
from diffusers.utils import logging as dlog
from sdxl_full import PUBLISHED_PARAMS, build_components, sdxl_pipelines

from worker import memory, speed
from worker.pipeline import DreamPipeline

GIB = memory.GIB
FETCHED = {"base": ["text_encoder", "text_encoder_2", "base unet", "vae"], "refiner": ["refiner unet"]}


def _pipeline(dtype: torch.dtype, fuse: bool) -> DreamPipeline:
    base, refiner = sdxl_pipelines(build_components("meta", dtype))
    pipe = DreamPipeline(base, refiner, torch.device("meta"))
    speed.before_placing(pipe, speed.Levers(fuse_qkv=fuse, channels_last=True))
    return pipe


def main() -> int:
    dlog.set_verbosity_error()  # its "modules that should be kept in float32: []" note, once per module
    print("download (weights; `dreambot fetch-models`, SDXL 1.0 base + refiner):")
    totals = {}
    for variant, itemsize in (("fp16", 2), ("fp32", 4)):
        per_repo = {repo: sum(PUBLISHED_PARAMS[c] for c in comps) * itemsize for repo, comps in FETCHED.items()}
        totals[variant] = sum(per_repo.values())
        print(f"  {variant}: base {per_repo['base'] / 1e9:.2f} GB + refiner {per_repo['refiner'] / 1e9:.2f} GB"
              f" = {totals[variant] / 1e9:.2f} GB ({totals[variant] / GIB:.2f} GiB)")
    print(f"  fp16 is {totals['fp16'] / totals['fp32']:.2f}x the bytes of fp32")

    print("device memory per tier (weights + working memory of a 1024 px call; GiB):")
    print(f"  {'dtype':<6} {'fuse_qkv':<9} {'weights':>8} {'largest model':>22} "
          f"{'none, b=1':>10} {'none, b=8':>10} {'model, b=1':>11} {'model, b=8':>11}")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for fuse in (True, False):
            pipe = _pipeline(dtype, fuse)
            sizes = memory.module_bytes(pipe.modules_once())
            largest = max(sizes, key=sizes.__getitem__)
            row = {b: memory.needs(sizes, memory.working_bytes(pipe.base.unet, b)) for b in (1, 8)}
            name = str(dtype).removeprefix("torch.")
            print(f"  {name:<6} {'on' if fuse else 'off':<9} {sum(sizes.values()) / GIB:>8.2f} "
                  f"{largest + ' ' + format(sizes[largest] / GIB, '.2f'):>22} "
                  f"{row[1]['none'] / GIB:>10.2f} {row[8]['none'] / GIB:>10.2f} "
                  f"{row[1]['model'] / GIB:>11.2f} {row[8]['model'] / GIB:>11.2f}")
    print("what DREAMBOT_OFFLOAD=auto chooses (shipped settings: fuse_qkv on, DREAMBOT_BATCH_IMAGES=8; free memory "
          "as a card of that size typically reports it):")
    pipe = _pipeline(torch.bfloat16, True)
    sizes = memory.module_bytes(pipe.modules_once())
    for card, free_gib in (("80 GB (A100, H100)", 79.0), ("24 GB (RTX 4090, A10, L4)", 23.2),
                           ("20 GB (RTX 4000 Ada)", 19.5), ("16 GB (T4, RTX 4080)", 15.5),
                           ("12 GB (RTX 3060, 4070)", 11.2), ("8 GB (RTX 4060)", 7.5)):
        try:
            p = memory.plan("auto", torch.device("cuda"), sizes, lambda n: memory.working_bytes(pipe.base.unet, n),
                            8, int(free_gib * GIB))
            said = f"offload {p.offload}, batches of up to {p.batch_images}, needs {p.resident_bytes / GIB:.2f} GiB"
        except memory.ModelLoadError as err:
            said = "refuses to start: " + str(err).split("; ", 1)[1]
        print(f"  {card:<26} {free_gib:>5.1f} GiB free: {said}")
    print("working memory is memory.working_bytes' estimate (3 GiB at batch 1 + 0.75 GiB a further image, "
          "16-bit; twice that in fp32); bench/gpu_sdxl.py measures the real peak on a GPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
