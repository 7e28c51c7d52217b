"""The speed levers of worker/speed.py and worker/stepcache.py on the tiny SDXL model on the CPU, through the
real diffusers pipelines: each lever is shown applied (the modules it changes, the UNet passes it saves) and
its effect on the image bounded. Lossless levers keep the image within a level or two of the plain one;
for the lossy ones the deviation is measured and printed (`-s` shows it), and bounded loosely, since on
random tiny weights it says little about the real model: bench/gpu_sdxl.py measures it at full size."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
import numpy as np  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402

from dreamcore.job import make_request  # noqa: E402
from dreamcore.settings import load_settings  # noqa: E402
from tests.support import ROOT  # noqa: E402
from worker import memory, speed  # noqa: E402
from worker.img2img import vary  # noqa: E402
from worker.pipeline import DreamPipeline  # noqa: E402
from worker.weights import ModelLoadError  # noqa: E402

# 10 steps: 6 on the base, 4 on the refiner; guided (CFG 7); two images, so batches are exercised.
REQ = make_request(prompt="a lighthouse at dusk, oil painting", seed=11, steps=10, split=0.6, guidance=7.0, count=2)


def _load(tiny_model_dir, **levers) -> DreamPipeline:
    return DreamPipeline.load(str(tiny_model_dir / "base"), str(tiny_model_dir / "refiner"), "cpu",
                              levers=speed.Levers(**levers), batch_images=8)


def _px(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def rel_error(got, want) -> float:
    """‖got − want‖ / ‖want‖ over an image's pixels."""
    return float(np.linalg.norm(_px(got) - _px(want)) / np.linalg.norm(_px(want)))


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    pipe = _load(tiny_model_dir)
    return pipe, pipe.generate(REQ)


def _calls(module: torch.nn.Module) -> list[int]:
    """The batch size of every call `module` really computes (a forward hook on it), appended as they come."""
    seen: list[int] = []
    module.register_forward_hook(lambda m, args, kwargs, out: seen.append(
        (args[0] if args else kwargs["hidden_states"]).shape[0]), with_kwargs=True)
    return seen


# -- lossless ---------------------------------------------------------------------------------------------------


def test_fuse_qkv_frees_the_unfused_copies_and_keeps_the_image(tiny_model_dir, plain):
    pipe, want = plain
    fused = _load(tiny_model_dir, fuse_qkv=True)
    attns = [m for mod in speed.denoisers(fused).values() for m in mod.modules() if isinstance(m, Attention)]
    assert attns and all(a.fused_projections for a in attns)
    for a in attns:
        if a.is_cross_attention:  # FusedAttnProcessor2_0 reads to_q and to_kv
            assert hasattr(a, "to_q") and hasattr(a, "to_kv") and not hasattr(a, "to_k") and not hasattr(a, "to_v")
        else:  # and to_qkv alone
            assert hasattr(a, "to_qkv") and not any(hasattr(a, n) for n in ("to_q", "to_k", "to_v"))
    # What is freed is exactly what fusing added: the fused pipeline holds the plain one's bytes.
    before = sum(memory.module_bytes(pipe.modules_once()).values())
    after = sum(memory.module_bytes(fused.modules_once()).values())
    assert after == before and fused.speed.freed_bytes > 0
    got = fused.generate(REQ)
    for g, w in zip(got.images, want.images, strict=True):
        assert np.abs(_px(g) - _px(w)).max() <= 1


def test_fuse_qkv_frees_1_84_gib_of_the_full_size_pair():
    """On the full-size architecture (meta tensors: shapes only), the figure the issue asked for."""
    sys.path.insert(0, str(ROOT / "bench"))
    from sdxl_full import build_components, sdxl_pipelines

    base, refiner = sdxl_pipelines(build_components("meta", torch.bfloat16))
    pipe = DreamPipeline(base, refiner, torch.device("meta"))
    speed.before_placing(pipe, speed.Levers(fuse_qkv=True))
    assert round(pipe.speed.freed_bytes / memory.GIB, 2) == 1.84


def test_compile_runs_the_warmed_shapes_compiled_pads_to_their_bucket_and_the_rest_uncompiled(
        tiny_model_dir, plain, monkeypatch):
    """The dispatch around torch.compile, with torch.compile itself recorded (the real thing traced below)."""
    _pipe, want = plain
    compiled_calls: list[tuple[str, int]] = []

    def fake_compile(fn, **kwargs):
        assert kwargs == {"backend": "inductor", "mode": None, "dynamic": False}
        name = type(fn.__self__).__name__

        def run(*args, **kw):
            compiled_calls.append((name, (args[0] if args else kw["sample"]).shape[0]))
            return fn(*args, **kw)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert speed.buckets(8) == [1, 2, 4, 8]  # the default buckets of a worker of 8 images a call
    # Two of them here: each warmed bucket is a whole tiny-model step at 1024x1024 per UNet.
    pipe = _load(tiny_model_dir, compile=True, compile_aspects=("1:1",), compile_buckets=(1, 4))
    assert pipe.compiled.buckets == [1, 4]
    assert pipe.compiled.geometries == {(1024, 1024, 77)}
    # The warm-up ran every bucket through both UNets (CFG doubles the rows) and the decoder (one image a time).
    assert sorted({b for n, b in compiled_calls if n == "UNet2DConditionModel"}) == [2, 8]
    assert {b for n, b in compiled_calls if n == "Decoder"} == {1}
    compiled_calls.clear()

    three = make_request(prompt=REQ.prompt, seed=REQ.seed, steps=REQ.steps, split=REQ.split, guidance=7.0, count=3)
    got = pipe.generate(three)
    assert len(got.images) == 3  # the filler row is dropped before the decode
    unet_batches = {b for n, b in compiled_calls if n == "UNet2DConditionModel"}
    assert unet_batches == {8}  # 3 images run in the bucket of 4, guided
    assert sum(n == "Decoder" for n, _ in compiled_calls) == 3
    for g, w in zip(got.images[:2], want.images, strict=True):  # seeds 11 and 12: the same images as unpadded
        assert np.abs(_px(g) - _px(w)).max() <= 1

    compiled_calls.clear()
    wide = make_request(prompt="a wide shot", seed=1, steps=4, aspect="7:4")
    assert pipe.generate(wide).images[0].size == (1344, 768)
    assert compiled_calls == []  # not warmed up: uncompiled, unpadded


def test_compile_traces_every_lever_without_a_graph_break(tiny_model_dir, plain):
    """The real torch.compile (dynamo and AOTAutograd, with the aot_eager backend: exactly what inductor is given,
    without minutes of C++ generation) over every lever at once: one graph per warmed shape and no graph break,
    which would have split them; then a dream runs compiled with the same image as uncompiled."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    _pipe, want = plain
    # Dynamo treats modules as inputs: graphs another test compiled for a pipeline of the same structure (the
    # turbo tests compile one too) would be reused here and not counted. Counted from an empty cache.
    torch._dynamo.reset()
    breaks = sum(counters["graph_break"].values())
    old = speed.Compiled.BACKEND
    speed.Compiled.BACKEND = "aot_eager"
    try:
        pipe = _load(tiny_model_dir, fuse_qkv=True, channels_last=True, compile=True, compile_buckets=(2,),
                     step_cache=2, refiner_unguided_steps=1)
        # base: a full and a reusing step; refiner: guided and unguided; the decoder.
        assert pipe.speed.compile_error is None and pipe.speed.graphs == 5
        assert sum(counters["graph_break"].values()) == breaks
        graphs = speed._graphs()
        got = pipe.generate(REQ)
        assert speed._graphs() == graphs  # nothing compiled during the dream
    finally:
        speed.Compiled.BACKEND = old
    uncompiled = _load(tiny_model_dir, fuse_qkv=True, channels_last=True, step_cache=2, refiner_unguided_steps=1)
    for g, w in zip(got.images, uncompiled.generate(REQ).images, strict=True):
        assert np.abs(_px(g) - _px(w)).max() <= 2
    assert len(want.images) == len(got.images)


def test_a_compile_that_fails_at_the_warm_up_leaves_a_worker_that_runs_uncompiled(tiny_model_dir, plain, caplog):
    """A compiler that breaks on the first graph (a backend that raises, as a compiler bug would)."""
    from torch._dynamo import register_backend

    @register_backend(name="dreambot-test-broken")
    def broken(gm, example_inputs):
        raise RuntimeError("the compiler broke on this graph")

    _pipe, want = plain
    old = speed.Compiled.BACKEND
    speed.Compiled.BACKEND = "dreambot-test-broken"
    try:
        with caplog.at_level(logging.ERROR, logger="dreambot.worker"):
            pipe = _load(tiny_model_dir, compile=True, compile_buckets=(1,), compile_aspects=("9:7",))
    finally:
        speed.Compiled.BACKEND = old
    assert pipe.compiled is None and "the compiler broke on this graph" in pipe.speed.compile_error
    assert type(pipe.base.unet).forward.__get__(pipe.base.unet) == pipe.base.unet.forward  # its own again
    assert "compile failed at the warm-up: running uncompiled" in caplog.text
    got = pipe.generate(REQ)
    for g, w in zip(got.images, want.images, strict=True):
        assert np.abs(_px(g) - _px(w)).max() <= 1


def test_compiled_code_saved_by_one_process_is_loaded_by_the_next(tmp_path):
    """torch.compiler's cache artifacts through speed.save_code / load_code, across two real processes with
    inductor (on a small function: the UNets take minutes on a CPU), each with an empty inductor cache of its own:
    the second compiles nothing, it finds the first's kernels."""
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        import torch
        from torch._dynamo.utils import counters
        from worker import speed
        file = Path(sys.argv[2])
        said = speed.load_code(file) if sys.argv[1] == "second" else ""
        f = torch.compile(lambda x: torch.nn.functional.silu(x) * 2 + 1, dynamic=False)
        x = torch.randn(64, 64)
        assert torch.allclose(f(x), torch.nn.functional.silu(x) * 2 + 1)
        if sys.argv[1] == "first":
            speed.save_code(file)
        print(sys.argv[1], said, dict(counters["inductor"]))
    """)
    file = tmp_path / "cache" / "code.bin"
    out = {}
    for run in ("first", "second"):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{run}"), "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", script, run, str(file)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        out[run] = done.stdout
    assert "'fxgraph_cache_miss': 1" in out["first"] and file.is_file()
    assert f"second loaded {file}" in out["second"] and "'fxgraph_cache_hit': 1" in out["second"]
    assert "fxgraph_cache_miss" not in out["second"]
    assert speed.load_code(tmp_path / "none.bin") == f"none yet at {tmp_path / 'none.bin'}"
    (tmp_path / "junk.bin").write_bytes(b"not a cache")
    assert speed.load_code(tmp_path / "junk.bin").startswith("unreadable at")


def test_the_compile_cache_file_is_one_per_build_device_models_and_levers(tiny_model_dir):
    pipe = _load(tiny_model_dir)
    one = speed.cache_file(pipe, speed.Levers(compile=True, compile_cache="/v/cc"))
    assert one.parent == Path("/v/cc") and one.name.startswith("sdxl-")
    assert speed.cache_file(pipe, speed.Levers(compile=True, compile_cache="/elsewhere")).name == one.name
    assert speed.cache_file(pipe, speed.Levers(compile=True, compile_cache="/v/cc", step_cache=3)) != one
    assert speed.cache_file(pipe, speed.Levers(compile=True, compile_cache="")) is None


# -- lossy ------------------------------------------------------------------------------------------------------


def test_step_cache_runs_the_deep_blocks_every_nth_step_only(tiny_model_dir, plain):
    _pipe, want = plain
    pipe = _load(tiny_model_dir, step_cache=3)
    deep = _calls(pipe.base.unet.down_blocks[1].resnets[0])
    outer = _calls(pipe.base.unet.down_blocks[0].resnets[0])
    refiner_deep = _calls(pipe.refiner.unet.down_blocks[1].resnets[0])
    got = pipe.generate(REQ)
    # 6 base steps: whole at steps 0 and 3; the outermost blocks at every step. The refiner whole.
    assert (len(deep), len(outer), len(refiner_deep)) == (2, 6, 4)
    assert (pipe.step_cache.full_steps, pipe.step_cache.cached_steps) == (2, 4)
    errors = [rel_error(g, w) for g, w in zip(got.images, want.images, strict=True)]
    print(f"step cache every 3 steps, tiny model: image error {errors}")  # measured: ~0.0089
    assert 0 < max(errors) < 0.1
    # The same dream again: the same image (nothing kept from the last call).
    assert np.array_equal(_px(pipe.generate(REQ).images[0]), _px(got.images[0]))
    # Another use of the base UNet (a variation, through the img2img pipeline) runs whole at every step.
    deep.clear()
    vary(pipe, REQ, got.images[0], strength=0.5)
    assert len(deep) == len(outer) - 6 - 6 > 0


def test_refiner_unguided_steps_halve_the_refiners_last_passes(tiny_model_dir, plain):
    _pipe, want = plain
    pipe = _load(tiny_model_dir, refiner_unguided_steps=2)
    base, refiner = _calls(pipe.base.unet), _calls(pipe.refiner.unet)
    got = pipe.generate(REQ)
    assert base == [4] * 6  # two images, guided
    assert refiner == [4, 4, 2, 2]  # the last two steps: the prompt's rows alone
    errors = [rel_error(g, w) for g, w in zip(got.images, want.images, strict=True)]
    print(f"refiner's last 2 of 4 steps unguided, tiny model: image error {errors}")  # measured: ~0.0012
    assert 0 < max(errors) < 0.05
    # A dream without guidance has nothing to drop.
    refiner.clear()
    pipe.generate(make_request(prompt="x", seed=1, steps=10, split=0.6, guidance=1.0))
    assert refiner == [1, 1, 1, 1]
    # More unguided steps than the refiner runs: its first still guides (the switch comes after a step).
    most = _load(tiny_model_dir, refiner_unguided_steps=50)
    refiner = _calls(most.refiner.unet)
    most.generate(REQ)
    assert refiner == [4, 2, 2, 2]


def test_unguided_from():
    assert speed.unguided_from(8, 0) is None
    assert speed.unguided_from(8, 3) == 4  # after step 4, steps 5, 6, 7 run unguided
    assert speed.unguided_from(8, 50) == 0  # all but the first
    assert speed.unguided_from(1, 5) is None  # one step: it guides


def test_fp8_weights_quantizes_the_transformer_linears_and_reports_the_error(tiny_model_dir, plain, caplog):
    pytest.importorskip("torchao")
    from torchao.quantization import Float8Tensor

    _pipe, want = plain
    with caplog.at_level(logging.INFO, logger="dreambot.worker"):
        pipe = _load(tiny_model_dir, fuse_qkv=True, fp8="weights")
    for unet in (pipe.base.unet, pipe.refiner.unet):
        quantized = {n for n, m in unet.named_modules()
                     if isinstance(m, torch.nn.Linear) and isinstance(m.weight, Float8Tensor)}
        linears = {n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)}
        assert quantized == {n for n in linears if ".attentions." in f".{n}"}
        assert any(n.endswith("to_qkv") for n in quantized) and any(n.endswith("ff.net.2") for n in quantized)
        assert not any(n.startswith(("time_embedding", "add_embedding")) for n in quantized)
    errors = pipe.speed.fp8_error
    print(f"fp8 weights, tiny model: UNet output error {errors}")  # measured: ~0.018 and ~0.018
    assert set(errors) == {"base UNet", "refiner UNet"} and all(0 < e < 0.1 for e in errors.values())
    assert "fp8 applied" in caplog.text
    got = pipe.generate(REQ)
    image_errors = [rel_error(g, w) for g, w in zip(got.images, want.images, strict=True)]
    print(f"fp8 weights, tiny model: image error {image_errors}")  # measured: ~0.003
    assert 0 < max(image_errors) < 0.05


def test_fp8_that_this_machine_cannot_run_is_refused_naming_the_setting(tiny_model_dir, monkeypatch):
    pytest.importorskip("torchao")
    with pytest.raises(ModelLoadError, match=r"DREAMBOT_FP8=dynamic: needs fp8 matrix units .* this is a CPU"):
        _load(tiny_model_dir, fp8="dynamic")
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # as if the fp8 extra were not installed
    with pytest.raises(ModelLoadError, match=r"DREAMBOT_FP8=weights: needs torchao: install .*fp8"):
        _load(tiny_model_dir, fp8="weights", channels_last=True)


def test_the_settings_make_the_levers(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    s = load_settings()
    assert (s.compile, s.fp8, s.step_cache, s.refiner_unguided_steps) == ("auto", "off", 0, 0)
    assert speed.Levers.from_settings(s, gpu).compile and not speed.Levers.from_settings(s, cpu).compile
    assert speed.Levers.from_settings(s, cpu).lossy == []
    on = load_settings(compile="true", step_cache=4, refiner_unguided_steps=3, fp8="weights",
                       compile_aspects="1:1, 7:4 1:1", compile_cache="/models/cc")
    levers = speed.Levers.from_settings(on, cpu)
    assert levers.compile and levers.compile_aspects == ("1:1", "7:4") and levers.compile_cache == "/models/cc"
    assert levers.lossy == ["fp8=weights", "step_cache=4", "refiner_unguided_steps=3"]
    assert not speed.Levers.from_settings(load_settings(compile="0"), gpu).compile
    assert speed.buckets(8) == [1, 2, 4, 8] and speed.buckets(6) == [1, 2, 4, 6] and speed.buckets(1) == [1]
