"""Can a small Transformer learn the multi-hop levels (``tasks/multihop.py``), and in how many steps?

This decides whether a teacher can master multi-hop retrieval (issue 31): a softmax-attention model of a given
depth and width trains on a mix of recall levels (the product's `RecallSuite`: rows drawn uniformly from the
levels, held-out examples on odd seeds) and is scored per level every ``--eval-every`` steps. Reported per run:
the learning curve of every level, the first step each level reaches ``--solved`` (default 0.9) and 0.99, the
final accuracies, the wall time and the machine. Seeds vary the initialisation and the rows.

The model is hyla's own (`HylaLM` of an all-attention `Layout`), with the recall probe's optional helps:
a previous-token embedding (``--prev-token``) and zero-initialised residual outputs (``--zero-init all``),
width-scaled init std ``0.02 * sqrt(1024 / width)``. AdamW, warm-up then flat, cosine decay over the last 20 %.

    python benchmarks/bench_multihop.py --device cpu --depth 2 --width 64 --hops 1 --steps 1500 --seeds 0 1 \
        --out benchmarks/results/multihop_cpu/d2_w64_hop1.json
    python benchmarks/bench_multihop.py --device cpu --depth 4 --width 64 --hops 1 2 --steps 3000
    python benchmarks/bench_multihop.py --level-set retrofit-tiny --depth 4 --width 64   # a whole level set
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, log, machine_info, main_guard, write_json

NAME = "bench_multihop"


def build_suite(args: argparse.Namespace, vocab: int) -> Any:
    from hyla.proxy_train.tasks.suite import SUITE_LEVELS, RecallSuite, RecallTaskSpec

    if args.level_set:
        return RecallSuite.named(args.level_set, vocab)
    specs = [RecallTaskSpec("hop", args.seq_len, {"num_hops": k, "num_chains": args.chains,
                                                  "task_vocab": args.task_vocab, "order": args.order})
             for k in args.hops]
    assert "hop" not in SUITE_LEVELS  # level sets are named presets; these are ad-hoc levels
    return RecallSuite.from_specs(specs, vocab)


def train_levels(args: argparse.Namespace, seed: int, dev: Any) -> dict[str, Any]:
    """One seed: train on the levels' mix, score every level every ``eval_every`` steps."""
    import torch
    import torch.nn.functional as F
    from hyla.proxy_train.train.schedule import wsd_lr
    from hyla.proxy_train.model.lm import HylaLM
    from hyla.proxy_train.probe.build import PrevTokenEmbedding, zero_residual_outputs
    from hyla.space.layout import Layout

    layout = Layout(layers=("attn",) * args.depth, d_model=args.width, vocab_size=args.vocab,
                    mlp_hidden=2 * args.width, num_heads=args.heads, name=f"transformer-{args.depth}x{args.width}")
    suite = build_suite(args, args.vocab)
    torch.manual_seed(seed)
    model = HylaLM(layout)
    std = 0.02 * (1024 / args.width) ** 0.5
    model.reset_parameters(std)
    zero_residual_outputs(model, args.zero_init)
    if args.prev_token:
        prev = PrevTokenEmbedding(args.vocab, args.width, std)
        model.add_module("prev_token_embedding", prev)
        model.embeddings.register_forward_hook(prev.hook)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(dev))[0]

    curve: list[dict[str, Any]] = []
    first: dict[str, dict[str, int | None]] = {lv: {"solved": None, "0.99": None} for lv in suite.levels}
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            acc = suite.evaluate(logits_fn, n_examples=args.eval_examples, batch_size=64)
            model.train()
            curve.append({"step": step, **acc})
            for lv in suite.levels:
                for key, thr in (("solved", args.solved), ("0.99", 0.99)):
                    if first[lv][key] is None and acc[lv] >= thr:
                        first[lv][key] = step
            log(f"seed {seed} step {step}: " + " ".join(f"{lv} {acc[lv]:.3f}" for lv in suite.levels)
                + f" ({time.perf_counter() - t0:.0f} s)")
            if all(acc[lv] >= args.stop_at for lv in suite.levels) or step == args.steps:
                break
        x, y = suite.train_batch(args.batch_size, step, seed)
        for group in opt.param_groups:
            group["lr"] = wsd_lr(step, args.steps, args.lr, args.warmup, 0.2, 0.1)
        x, y = x.to(dev), y.to(dev)
        scored = y != -100  # the head only where a target is scored: most positions have none
        logits = model.logits(model.hidden(x)[0][scored])
        loss = F.cross_entropy(logits.float(), y[scored])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return {"seed": seed, "layout": layout.to_dict(), "levels": list(suite.levels), "curve": curve,
            "first_step": first, "final": curve[-1], "steps_run": curve[-1]["step"],
            "wall_s": time.perf_counter() - t0, "s_per_step": (time.perf_counter() - t0) / max(1, curve[-1]["step"])}


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, NAME)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--level-set", default="", help="a named level set (tasks.suite.SUITE_LEVELS), else --hops")
    ap.add_argument("--hops", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--task-vocab", type=int, default=32)
    ap.add_argument("--order", default="random", choices=("random", "chain"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--prev-token", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--zero-init", default="all", choices=("none", "linear", "all"))
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-examples", type=int, default=256)
    ap.add_argument("--solved", type=float, default=0.9, help="accuracy that counts as learned")
    ap.add_argument("--stop-at", type=float, default=0.99, help="stop once every level reaches this")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dev = torch.device(args.device)
    runs = []
    for seed in args.seeds:
        runs.append(train_levels(args, seed, dev))
        write_json(args.out, {"benchmark": NAME, "machine": machine_info(args.device),
                              "args": {k: v for k, v in vars(args).items() if k != "sets"}, "runs": runs})
    for r in runs:
        log(f"seed {r['seed']}: first step >= {args.solved} / 0.99 per level {r['first_step']}, "
            f"{r['steps_run']} steps in {r['wall_s']:.0f} s")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    main_guard(main)
