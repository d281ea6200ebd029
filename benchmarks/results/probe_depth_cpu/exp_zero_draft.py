import sys, torch
from hyla.proxy_train import model as M
mode = sys.argv.pop(1)  # "linear" or "all"
orig = M.HylaLM.reset_parameters
@torch.no_grad()
def patched(self, std=0.02):
    orig(self, std)
    for blk in self.blocks:
        if mode == "all" or blk.mixer.__class__.__name__ != "SoftmaxAttention":
            for name, mod in blk.named_modules():
                if name.rsplit(".", 1)[-1] in M._RESIDUAL_PROJ and (mode == "all" or name.startswith("mixer")):
                    mod.weight.zero_()
M.HylaLM.reset_parameters = patched
exec(open(__file__.replace("exp_zero_draft.py", "exp_draft.py")).read())
