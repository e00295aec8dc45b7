"""How fast a cycle runs against what this machine can do.

    python -m benchmarks.throughput [--threads 1,2] [--n 20] [--parts peak,precision,step,cycle]
        [--workers auto] [--json FILE]

Four parts, in one run:

1. **Peak.** The matmul throughput torch reaches here, float32 and bfloat16, at each thread
   count: the median of repeated products shaped like training's (tokens x 576 x 1536) and one
   large square product; the best of those is the peak.
2. **One training step, profiled.** A batch shaped like a cycle's (``train.batch_size`` examples
   of 15-40 prompt and 3-20 answer tokens, random tokens: only shapes matter for speed, bucketed
   by length as training buckets them) trained in float32 and in bfloat16 (training's scheme),
   each with the SDPA and the eager attention kernel, at each thread count. Its FLOPs are
   counted by ``torch.utils.flop_counter`` (every matmul, forward and backward, as executed,
   padding included); its time is split by the loop's own labels (body, LM head, loss, backward,
   optimiser) and by operator kind (matmul, attention, element-wise, copies and casts, other),
   plus what no operator accounts for (Python and dispatch). Model FLOP utilisation (MFU) =
   counted FLOPs / step time / peak at the step's precision and thread count.
3. **What bfloat16 does to the student.** A LoRA student with a small random adapter, on the
   same batch: how far its next-token distribution moves from float32's (KL per position) under
   autocast, under training's scheme (only the frozen projections multiply in bfloat16; see
   ``consolidator/precision.py``) and, to split the latter's error, with only the projections'
   inputs or only their weights rounded; and whether the adapter's effect keeps its direction.
4. **A cycle through the command users run.** ``--n`` fictional_dev experiences (with their
   held-out questions as probes) are logged into a fresh data dir, the per-base-model caches are
   filled (a deployed daemon pays that once), then ``reverie consolidate --once --json`` runs in a
   subprocess at each thread count (and each ``--workers`` value: ``train.workers``, how many
   processes the cycle splits into), trained as the settings say (``REVERIE_TRAIN__PRECISION``,
   ``REVERIE_MODEL__ATTENTION`` from the environment reach it). Reported: the subprocess's wall
   time, each stage's seconds, training tokens/s, training MFU (the step's FLOPs per token x the
   cycle's tokens / training seconds / peak) and the cycle's own efficacy/ceiling and locality.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reverie.benchmarks.common import REPO, environment, print_table, write_report

logger = logging.getLogger(__name__)

# (precision, attention) of each profiled step: the default first
STEP_RECIPES = [
    ("float32", "sdpa"),
    ("float32", "eager"),
    ("bfloat16", "eager"),
    ("bfloat16", "sdpa"),
]
SHAPES = [(256, 576, 1536), (512, 576, 1536), (512, 1536, 576), (2048, 2048, 2048)]
LABELS = ("body", "lm_head", "loss", "backward", "optimizer")


# -- 1. peak -----------------------------------------------------------------------------------
def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.6) -> float:
    """Median GFLOP/s of ``[m, k] @ [k, n]`` over a few timed rounds."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    reps = max(2, int(seconds * 1e11 / (2 * m * k * n)))
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        rates.append(2 * m * k * n * reps / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def peaks(threads: list[int]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in threads:
        torch.set_num_threads(t)
        for dtype in (torch.float32, torch.bfloat16):
            shapes = {f"{m}x{k}x{n}": round(matmul_gflops(m, k, n, dtype), 1) for m, k, n in SHAPES}
            out[f"{str(dtype).split('.')[1]}/{t}"] = {"peak": max(shapes.values()), **shapes}
    return out


# -- 2. one training step ----------------------------------------------------------------------
def _batch(seed: int, batch_size: int = 8) -> list[Any]:
    """The first batch training would run on 64 examples shaped like a cycle's (bucketed by
    length as training buckets them, so it pads as little as a real batch)."""
    from reverie.consolidator.distill import TeacherTargets
    from reverie.consolidator.train import Example, batches

    rng = random.Random(seed)
    examples = []
    for _ in range(8 * batch_size):
        prompt = [rng.randrange(1000, 40000) for _ in range(rng.randint(15, 40))]
        answer = [rng.randrange(1000, 40000) for _ in range(rng.randint(3, 20))]
        ids = torch.randint(0, 49152, (len(answer), 128), dtype=torch.int32)
        logp = torch.log_softmax(torch.randn(len(answer), 128), -1).half()
        examples.append(Example(prompt, answer, TeacherTargets(ids, logp)))
    plan = batches([len(e) for e in examples], batch_size, 1, seed)
    return [examples[i] for i in plan[0]]


def _kind(op: str) -> str:
    name = op.removeprefix("aten::")
    if name in ("mm", "addmm", "bmm", "matmul", "linear", "baddbmm"):
        return "matmul"
    if "attention" in name or "softmax" in name:
        return "attention"
    if name in ("copy_", "_to_copy", "to", "contiguous", "clone", "cat", "index", "fill_"):
        return "copies"
    if name in ("mul", "mul_", "add", "add_", "div", "sub", "silu", "pow", "rsqrt", "mean", "sum",
                "neg", "exp", "sqrt", "addcmul_", "addcdiv_", "lerp_", "silu_backward",
                "where", "masked_fill", "clamp"):  # fmt: skip
        return "elementwise"
    return "other"


def profile_step(
    base: Any, threads: int, precision: str, attention: str = "sdpa", steps: int = 4
) -> dict[str, Any]:
    """Time and FLOPs of a training step, and where its time goes."""
    from torch.profiler import ProfilerActivity, profile, record_function
    from torch.utils.flop_counter import FlopCounterMode

    from reverie.consolidator.config import TrainSettings
    from reverie.consolidator.precision import matmul_dtype
    from reverie.consolidator.train import batch_loss, student_model, training_kernels

    torch.set_num_threads(threads)
    loaded = base.model.config._attn_implementation
    base.model.set_attn_implementation(attention)
    settings = TrainSettings(precision=precision, adapter="lora")  # type: ignore[arg-type]
    model = student_model(base, None, settings)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)  # as training makes it
    batch = _batch(0, settings.batch_size)

    def step() -> int:
        loss, _, tokens = batch_loss(model, batch, settings, pad_id=base.pad_id)
        optimizer.zero_grad(set_to_none=True)
        with record_function("backward"):  # the training loop's own labels
            loss.backward()
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        return tokens

    dtype = matmul_dtype(precision, torch.device("cpu"))
    model.train()
    try:
        with training_kernels(model, dtype):
            for _ in range(2):
                step()
            counter = FlopCounterMode(display=False)
            with counter:
                tokens = step()
            flops = counter.get_total_flops()
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                step()
                profiled = time.perf_counter() - start
    finally:
        model.unload()
        base.model.set_attn_implementation(loaded)
    seconds = statistics.median(times)
    by_label: dict[str, float] = {}
    by_kind: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key in LABELS:
            by_label[event.key] = event.cpu_time_total / 1e6
        elif event.key.startswith("aten::"):
            kind = _kind(event.key)
            by_kind[kind] = by_kind.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    # shares of the profiled step's wall time; what no operator accounts for is Python, autograd
    # bookkeeping and dispatch
    shares = {k: v / profiled for k, v in by_kind.items()}
    shares["python_and_dispatch"] = max(0.0, 1 - sum(shares.values()))
    positions = len(batch) * max(len(e) for e in batch)
    return {
        "threads": threads,
        "precision": "bfloat16" if dtype is torch.bfloat16 else "float32",
        "attention": attention,
        "tokens": tokens,
        "padding_share": round(1 - tokens / positions, 3),
        "step_seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "gflop_per_token": round(flops / tokens / 1e9, 3),
        "achieved_gflops": round(flops / seconds / 1e9, 1),
        "label_shares": {k: round(v / profiled, 3) for k, v in by_label.items()},
        "kind_shares": {k: round(v, 3) for k, v in sorted(shares.items())},
    }


# -- 2b. what bfloat16 does to the student's distribution ----------------------------------------
PRECISION_SCHEMES = ("autocast", "frozen", "inputs_only", "weights_only")


def precision_drift(base: Any, adapter_scale: float = 2e-3) -> dict[str, dict[str, float]]:
    """How far each bfloat16 scheme moves a LoRA student from float32, on a cycle-shaped batch.

    The adapter's B matrices are drawn at ``adapter_scale`` (a small trained adapter's order).
    Schemes: ``autocast`` (torch.autocast over the body), ``frozen`` (training's: only the
    frozen projections multiply in bfloat16), and, to split ``frozen``'s error, its inputs
    rounded to bfloat16 alone and its weights alone (products in float32). Per scheme: the mean
    KL(float32 || scheme) of the next-token distribution over the batch's positions, and the
    cosine between the adapter's effect (logits with it minus without it) and float32's.
    """
    import contextlib
    import types

    import torch.nn.functional as F

    from reverie.consolidator.config import TrainSettings
    from reverie.consolidator.distill import right_padded
    from reverie.consolidator.precision import frozen_in
    from reverie.consolidator.train import student_model
    from reverie.model.base import lm_parts

    model = student_model(base, None, TrainSettings(adapter="lora"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, adapter_scale, generator=generator)
    body, head = lm_parts(model)
    batch = _batch(0)
    ids, mask = right_padded([e.prompt_ids + e.answer_ids for e in batch], base.pad_id)

    @contextlib.contextmanager
    def rounded(inputs: bool, weights: bool) -> Any:
        def forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
            w = self.weight.to(torch.bfloat16).float() if weights else self.weight
            return F.linear(x.to(torch.bfloat16).float() if inputs else x, w)

        frozen = [
            m
            for m in body.modules()
            if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad
        ]
        for m in frozen:
            m.forward = types.MethodType(forward, m)  # type: ignore[method-assign]
        try:
            yield
        finally:
            for m in frozen:
                del m.forward

    schemes: dict[str, Callable[[], Any]] = {
        "float32": contextlib.nullcontext,
        "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        "frozen": lambda: frozen_in(body, torch.bfloat16),
        "inputs_only": lambda: rounded(True, False),
        "weights_only": lambda: rounded(False, True),
    }

    def logits(scheme: str, adapter: bool) -> torch.Tensor:
        off = contextlib.nullcontext() if adapter else model.disable_adapter()
        with torch.no_grad(), off, schemes[scheme]():
            hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return head(hidden.float())[mask.bool()].float()

    try:
        reference = logits("float32", True)
        effect = reference - logits("float32", False)
        out = {}
        for scheme in PRECISION_SCHEMES:
            on = logits(scheme, True)
            ref_logp, logp = reference.log_softmax(-1), on.log_softmax(-1)
            kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()
            moved = (on - logits(scheme, False)).flatten().double()
            cosine = F.cosine_similarity(moved, effect.flatten().double(), 0)
            out[scheme] = {
                "kl": round(float(kl), 5),
                "adapter_effect_cosine": round(float(cosine), 3),
            }
    finally:
        model.unload()
    return out


# -- 3. a cycle through `reverie consolidate --once` -------------------------------------------
def cycle(n: int, threads: int, root: Path, workers: str = "auto") -> dict[str, Any]:
    from reverie.agent import MemoryClient
    from reverie.benchmarks.methods import shared_models_dir
    from reverie.consolidator.cycle import Consolidator
    from reverie.settings import load_settings

    path = REPO / "benchmarks" / "data" / "fictional_dev.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:n]
    root.mkdir(parents=True)
    (root / "models").symlink_to(shared_models_dir())  # converted once, caches kept
    settings = load_settings(data_dir=root)
    with MemoryClient(settings) as client:
        client.log_many(
            [{"id": r["id"], "text": r["text"], "metadata": {"probes": r["probes"]}} for r in rows],
            tenant="bench",
        )
        warm = Consolidator(settings, buffer=client.buffer, embedder=client.embedder).warm_up()
    env = {
        **os.environ,
        "REVERIE_DATA_DIR": str(root),
        "OMP_NUM_THREADS": str(threads),
        "REVERIE_TRAIN__WORKERS": workers,
        "PYTHONPATH": str(REPO),  # this checkout's code, wherever the package is installed
    }
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "reverie", "consolidate", "--once", "--json"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"reverie consolidate failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)[0]
    probes = result["probes"]
    return {
        "threads": threads,
        "workers": result["train"].get("workers", 1),  # processes that trained
        "experiences": n,
        "outcome": result["outcome"],
        "wall_seconds": round(wall, 1),
        "warmup_seconds": round(warm, 1),
        "stage_seconds": result["timings"],
        "train": result["train"],
        "efficacy_over_ceiling": probes["efficacy"]["ratio"],
        "locality": probes["locality"]["ratio"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="thread counts to measure")
    parser.add_argument("--n", type=int, default=20, help="experiences in the timed cycle")
    parser.add_argument(
        "--parts",
        default="peak,precision,step,cycle",
        help="which parts to run (peak,precision,step,cycle)",
    )
    parser.add_argument(
        "--workers",
        default="auto",
        help="train.workers values to run the cycle with at each thread count (e.g. 1,auto)",
    )
    parser.add_argument("--json", help="also write the JSON report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    threads = [int(t) for t in args.threads.split(",")]
    from reverie.model.base import load_base
    from reverie.model.config import ModelSettings

    parts = set(args.parts.split(","))
    report: dict[str, Any] = {"environment": environment()}
    if parts & {"peak", "precision", "step", "cycle"} != parts:
        parser.error("--parts takes peak, precision, step and cycle")
    report["peak_gflops"] = peaks(threads)  # MFU needs the peak, whatever the parts
    with tempfile.TemporaryDirectory(prefix="reverie-speed-") as tmp:
        from reverie.benchmarks.methods import shared_models_dir

        (Path(tmp) / "models").symlink_to(shared_models_dir())
        base = load_base(ModelSettings(), Path(tmp))
        cycle_recipe = _cycle_recipe()
        if "precision" in parts:
            report["precision"] = precision_drift(base)
        steps = [(t, p, a) for t in threads for p, a in STEP_RECIPES] if "step" in parts else []
        steps += [(t, *cycle_recipe) for t in threads if (t, *cycle_recipe) not in steps]
        report["step"] = [profile_step(base, t, p, a) for t, p, a in steps]
        for s in report["step"]:
            s["mfu"] = round(s["achieved_gflops"] / _peak(report, s["precision"], s["threads"]), 3)
        if "cycle" in parts:
            report["cycle"] = []
            for t, w in ((t, w) for t in threads for w in args.workers.split(",")):
                run = cycle(args.n, t, Path(tmp) / f"cycle-{t}-{w}", w)
                step = next(
                    s
                    for s in report["step"]
                    if s["threads"] == t and (s["precision"], s["attention"]) == cycle_recipe
                )
                train = run["train"]
                achieved = step["gflop_per_token"] * train["tokens"] / train["seconds"]
                run["train_mfu"] = round(achieved / _peak(report, step["precision"], t), 3)
                report["cycle"].append(run)
    write_report(report, args.json)
    _tables(report)
    return 0


def _cycle_recipe() -> tuple[str, str]:
    """The precision and attention kernel the cycle trains with: the settings' (environment and
    config file included)."""
    from reverie.consolidator.precision import matmul_dtype
    from reverie.settings import load_settings

    settings = load_settings()
    dtype = matmul_dtype(settings.train.precision, torch.device("cpu"))
    return ("bfloat16" if dtype is torch.bfloat16 else "float32"), settings.model.attention


def _peak(report: dict[str, Any], precision: str, threads: int) -> float:
    return float(report["peak_gflops"][f"{precision}/{threads}"]["peak"])


def _step_row(s: dict[str, Any]) -> list[Any]:
    head = [
        s["threads"],
        s["precision"],
        s["attention"],
        s["tokens_per_s"],
        s["achieved_gflops"],
        s["mfu"],
    ]
    return [*head, s["padding_share"], *(s["kind_shares"].get(k) for k in KINDS)]


def _cycle_row(c: dict[str, Any]) -> list[Any]:
    stages = [c["stage_seconds"].get(s) for s in STAGES]
    tail = [c["train"]["tokens_per_s"], c["train_mfu"], c["efficacy_over_ceiling"], c["locality"]]
    return [c["threads"], c.get("workers", 1), c["wall_seconds"], *stages, *tail]


def _tables(report: dict[str, Any]) -> None:
    print()
    peak_rows = [[k, v["peak"]] for k, v in report["peak_gflops"].items()]
    print_table(peak_rows, ["dtype/threads", "GFLOP/s"])
    if report.get("precision"):
        print()
        rows = [[k, v["kl"], v["adapter_effect_cosine"]] for k, v in report["precision"].items()]
        print_table(rows, ["bfloat16 scheme", "KL from float32", "adapter effect cosine"])
    print()
    header = ["threads", "precision", "attention", "tokens/s", "GFLOP/s", "MFU", "padding", *KINDS]
    print_table([_step_row(s) for s in report["step"]], header)
    if report.get("cycle"):
        print()
        header = ["threads", "processes", "wall s", *STAGES, "train tok/s", "train MFU"]
        header += ["eff/ceil", "locality"]
        print_table([_cycle_row(c) for c in report["cycle"]], header)


KINDS = ("matmul", "attention", "elementwise", "copies", "other", "python_and_dispatch")
STAGES = ("transfer", "teacher", "train", "probe")

if __name__ == "__main__":
    sys.exit(main())
