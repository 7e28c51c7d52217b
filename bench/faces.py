"""The face pass (worker/faces.py): what its detector finds and costs, and what a redrawn face costs against a
dream, side by side in one run.

1. The detector, on scikit-image's `astronaut` (a public-domain NASA portrait) scaled so its face is 30 to
   160 px wide and set into 1024x1024 frames of three faceless sample photographs, three places each: how
   many faces it finds with their box at IoU >= 0.5 against the true one, false faces (on those frames and
   on four faceless photographs), and milliseconds per image; at the shipped settings and at the
   alternatives measured for the choice (the image at full size, or scaled to 512; a coarser pyramid step).
2. A face at full size: SDXL's refiner in img2img at the pass's strength on a 1024x1024 crop, counted by
   FlopCounterMode on meta tensors (bench/edits.py), against a dream of 40 steps, split 0.8; and what a
   member is charged (dreamcore.cost).
3. Seconds on this CPU with the tiny model through faces.redraw: one face, four faces of four images in one
   call, and the same four one call each, against a dream of the same steps (median of 3 after a warm-up;
   the ratio only, since the tiny model's stages weigh differently from SDXL's).

    python bench/faces.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import cv2  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402
from test_faces import framed, iou  # noqa: E402  (the tests' frames and overlap: one definition of both)

from dreamcore import cost  # noqa: E402
from dreamcore.job import FACE_STRENGTH, FacePass, make_request  # noqa: E402
from worker import faces  # noqa: E402

SIZES = (160, 120, 80, 60, 45, 36, 30)
PLACES = (("coffee", (100, 560)), ("rocket", (600, 150)), ("hubble_deep_field", (350, 420)))
FACELESS = ("coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
STEPS, SPLIT = 40, 0.8


def detector_rows(repeats: int) -> list[tuple[str, int, int, int, float, dict[int, int]]]:
    """(setting, found, of, false faces, ms per image, found by face width) for the shipped detector and the alternatives."""
    frames = [(size, *framed(size, at, backdrop=bg)) for size in SIZES for bg, at in PLACES]
    plain = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB").resize((1024, 1024)) for n in FACELESS]
    settings = [(f"shipped: long side {faces.DETECT_SIDE}, step {faces.SCALE_STEP}", faces.DETECT_SIDE, faces.SCALE_STEP),
                (f"full size 1024, step {faces.SCALE_STEP}", 1024, faces.SCALE_STEP),
                (f"long side 512, step {faces.SCALE_STEP}", 512, faces.SCALE_STEP),
                (f"long side {faces.DETECT_SIDE}, step 1.1", faces.DETECT_SIDE, 1.1)]
    shipped = (faces.DETECT_SIDE, faces.SCALE_STEP)
    rows = []
    for name, side, step in settings:
        faces.DETECT_SIDE, faces.SCALE_STEP = side, step
        try:
            found = wrong = 0
            per_size: dict[int, int] = {}
            for size, frame, truth in frames:
                boxes = faces.find_faces(frame)
                hit = any(iou(b, truth) >= 0.5 for b in boxes)
                found += hit
                per_size[size] = per_size.get(size, 0) + hit
                wrong += sum(iou(b, truth) < 0.5 for b in boxes)
            wrong += sum(len(faces.find_faces(im)) for im in plain)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                faces.find_faces(frames[0][1])
                times.append(time.perf_counter() - t)
            rows.append((name, found, len(frames), wrong, statistics.median(times) * 1000, per_size))
        finally:
            faces.DETECT_SIDE, faces.SCALE_STEP = shipped
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one timed run each, 6 steps")
    args = ap.parse_args()
    repeats = 1 if args.quick else 3

    # 1. The detector.
    print(f"1. detector: {faces.CASCADE} (OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads), astronaut's face "
          f"{'/'.join(map(str, SIZES))} px in 1024x1024 frames ({len(SIZES) * len(PLACES)}), + {len(FACELESS)} faceless photos")
    print(f"{'setting':34} {'found':>7} {'false':>6} {'ms/image':>9}  found by face width (of {len(PLACES)})")
    for name, found, of, wrong, ms, per in detector_rows(repeats):
        sizes = " ".join(f"{s}:{n}" for s, n in per.items())
        print(f"{name:34} {found:>3}/{of:<3} {wrong:>6} {ms:9.0f}  {sizes}")
    cv2.setNumThreads(1)
    frame = framed(60, (500, 500))[0]
    t = time.perf_counter()
    for _ in range(repeats):
        faces.find_faces(frame)
    one = (time.perf_counter() - t) / repeats * 1000
    cv2.setNumThreads(-1)
    big = frame.resize((2048, 2048))
    t = time.perf_counter()
    for _ in range(repeats):
        faces.find_faces(big)
    print(f"shipped, one thread: {one:.0f} ms per 1024x1024 image; a 2048x2048 upscale: "
          f"{(time.perf_counter() - t) / repeats * 1000:.0f} ms (scaled to the same long side first)")

    # 2. A face at full size, against a dream.
    from edits import full_size_flops

    f = full_size_flops()
    run = cost.img2img_steps(STEPS, FACE_STRENGTH)[1]
    base = round(STEPS * SPLIT)
    dream = base * f["base unet"] + (STEPS - base) * f["refiner unet"] + f["vae decode"]
    face = run * f["refiner unet"] + f["vae encode"] + f["vae decode"]
    d_units = cost.dream_units(1024, 1024, STEPS, 1, 7.0)
    f_units = cost.face_units(STEPS, FACE_STRENGTH, 1, 7.0)
    print(f"\n2. full size: a dream 1024x1024, {base} base + {STEPS - base} refiner steps: {dream / 1e12:.1f} TFLOP; "
          f"a face ({run} refiner steps of img2img at strength {FACE_STRENGTH:g}, VAE encode + decode of its "
          f"1024x1024 crop): {face / 1e12:.1f} TFLOP = {face / dream:.2f}x a dream; charged {f_units:.2f} units "
          f"against {d_units:.2f} ({f_units / d_units:.2f}x)")

    # 3. Seconds on this CPU, the tiny model.
    from worker.pipeline import DreamPipeline
    from worker.tiny import make_tiny_model

    steps = 6 if args.quick else 10
    tmp = Path(tempfile.mkdtemp(prefix="dreambot-faces-"))
    make_tiny_model(tmp)
    pipe = DreamPipeline.load(str(tmp / "base"), str(tmp / "refiner"), "cpu")
    shots = [framed(60, (100 + 200 * k, 500))[0] for k in range(4)]

    def target(k: int, image: Image.Image, seed: int) -> faces.Target:
        req = make_request(prompt="an astronaut, portrait", steps=steps, split=SPLIT, seed=seed)
        return faces.Target(k, req, image, seed, FacePass("on", FACE_STRENGTH))

    def timed(fn) -> float:
        fn(0)  # warm-up
        times = []
        for k in range(repeats):
            t = time.perf_counter()
            fn(k + 1)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    dream_s = timed(lambda s: pipe.generate(make_request(prompt="an astronaut", steps=steps, split=SPLIT, seed=s)))
    one_s = timed(lambda s: faces.redraw(pipe, [target(0, shots[0], s)]))
    four_s = timed(lambda s: faces.redraw(pipe, [target(k, im, s) for k, im in enumerate(shots)]))
    apart_s = timed(lambda s: [faces.redraw(pipe, [target(0, im, s)]) for im in shots])
    detect_s = timed(lambda s: faces.detect_all(shots))
    print(f"\n3. this CPU, tiny model, {steps} steps, median of {repeats}: dream (1 image) {dream_s:.2f} s")
    print(f"{'face pass':34} {'s':>6} {'x dream':>8} {'s/face':>7}")
    for name, s, n in (("1 face", one_s, 1), ("4 faces of 4 images, one call", four_s, 4),
                       ("the same 4, one call each", apart_s, 4), ("detection alone, 4 images", detect_s, 4)):
        print(f"{name:34} {s:6.2f} {s / dream_s:7.2f}x {s / n:7.2f}")


if __name__ == "__main__":
    main()
