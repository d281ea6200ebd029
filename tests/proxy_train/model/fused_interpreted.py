"""Child process of `test_fast_paths.test_fused_kernels_match_torch_under_the_triton_interpreter`.

Run with ``TRITON_INTERPRET=1``: Triton then executes fla's kernels on the CPU (numpy), so the fused paths of
`HylaForCausalLM` (fla's RMSNorm with the residual add, fused SwiGLU + down projection, fused linear
cross-entropy) run their real kernels here. Prints one JSON line: per option, the loss and the largest gradient
difference from the plain torch model with the same weights.

Triton's autotuner times each configuration on a GPU driver, which the interpreter lacks; every configuration
is timed as equal instead (the first one runs), which changes which configuration runs, not what it computes.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from triton.runtime.autotuner import Autotuner

Autotuner.do_bench = property(lambda self: (lambda fn, quantiles=None, **kw: [1.0, 1.0, 1.0]))


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM
    from hyla.space.layout import Layout

    layout = Layout(layers=("gla", "attn"), d_model=32, vocab_size=256, mlp_hidden=64, num_heads=2, name="interp")
    ids = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(0))
    ids[0, 5:9] = -100  # unscored targets (ignored by both losses)
    options = {"plain": {}, "fuse_norm": {"fuse_norm": True}, "fuse_swiglu": {"fuse_swiglu": True},
               "fused_loss": {"fuse_linear_cross_entropy": True},
               "all": {"fuse_norm": True, "fuse_swiglu": True, "fuse_linear_cross_entropy": True}}
    from hyla.proxy_train.model import parts

    calls: dict[str, int] = {}
    real_fla = parts._fla

    def counting_fla(name: str):  # which fla kernels the model really called
        fn = real_fla(name)

        def counted(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)
        return counted

    parts._fla = counting_fla
    runs = {}
    for name, kw in options.items():
        calls.clear()
        torch.manual_seed(0)
        model = HylaForCausalLM(HylaConfig(layout=layout, **kw))
        out = model(ids[:, :-1].clamp(min=0), shift_labels=ids[:, 1:])
        out.loss.backward()
        runs[name] = (out, {n: p.grad.clone() for n, p in model.named_parameters()}, dict(calls))
    plain_out, plain_grads, _ = runs["plain"]
    report = {}
    for name, (out, grads, called) in runs.items():
        assert grads.keys() == plain_grads.keys()  # same parameter names
        report[name] = {"loss": out.loss.item(), "logits_none": out.logits is None, "fla_calls": called,
                        "max_grad_diff": max(float((grads[n] - g).abs().max()) for n, g in plain_grads.items()),
                        "max_grad": max(float(g.abs().max()) for g in plain_grads.values())}
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
