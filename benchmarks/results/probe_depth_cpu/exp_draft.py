import sys, time, json, torch
torch.set_num_threads(2)
from hyla.space.layout import Layout
from hyla.proxy_train.recall_probe import RecallProbeConfig
from hyla.proxy_train.probe_runner import ProbeJob, run_probes
depth = int(sys.argv[1]); steps = int(sys.argv[2]); names = sys.argv[3].split(",")
lrs = [float(x) for x in sys.argv[4].split(",")]; extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
def lay(name):
    if name == "transformer": layers = ("attn",) * depth
    else:
        m, r = name.split("-")
        layers = tuple("attn" if (r != "pure" and (i + 1) % (int(r.split(":")[0]) + 1) == 0) else m for i in range(depth))
    return Layout(layers=layers, d_model=64, vocab_size=256, mlp_hidden=128, num_heads=2, name=name)
cfg = RecallProbeConfig(**{"seq_len": 64, "pairs": (2, 4, 8), "steps": steps, "batch_size": 32, "lrs": tuple(lrs),
        "eval_every": 50, "eval_examples": 128, "pool_rows": 4096, "warmup": 20, **extra})
jobs = [ProbeJob(lay(n), s, lr, n) for n in names for s in (0,) for lr in lrs]
t = time.time()
def done(j, r): print(f"{j.key} lr {j.lr}: {r['score']:.3f} {[round(x,2) for x in r['levels']]} steps {r['steps']} curve {[round(c[1],2) for c in r['curve']]} ({time.time()-t:.0f}s)", flush=True)
run_probes(jobs, cfg, torch.device("cpu"), None, on_result=done)
