# The ad-hoc script (sessions 8-9) behind docs/results/world/planner_noise_seed0_{test,val}.json
# and select_seed0_val.json: trains wm_tworooms_sigreg (seed SEED, with the overrides in $OVR,
# e.g. OVR="loss.rollout_steps=8") once, keeps the model in /tmp/wexp/model$TAG_seed$SEED.pt, then
# plans N episodes per task of SPLIT (receding horizon) with planner variants, each
# "name:key=value,...": keys of `planning` (noise_beta, warm_start=0/1, horizon, replan_every,
# samples, iterations, elites, cost, baselines=0/1) and corr=knn|renorm for a corrected model.
#   python plan_variants.py 0 val 64 'base:;r2:replan_every=2,baselines=0'
#   OVR="loss.rollout_steps=16" TAG=_r16 python plan_variants.py 0 val 64 'base:'
# The recipe has rollout_steps 8 since session 9: session 8's rows (and select_seed0_val.json's
# "rollout 0") were taken with OVR="loss.rollout_steps=0", e.g. 'white:noise_beta=0,warm_start=0;
# 4w:noise_beta=4' on (test, 100) and (val, 64).
import json
import os
import sys
import time
from pathlib import Path

import torch

from jepa_lab.core.world import WorldModel
from jepa_lab.eval import world as W
from jepa_lab.eval.planning import success_bits
from jepa_lab.eval.rollout import build_correction
from jepa_lab.spec.load import load_any
from jepa_lab.training import world_loop

seed = int(sys.argv[1])
split = sys.argv[2]
n = int(sys.argv[3])
OVR = [x for x in os.environ.get("OVR", "").split(";") if x]
TAG = os.environ.get("TAG", "")
spec = load_any(Path(__file__).resolve().parents[3] / "studies" / "wm_tworooms_sigreg.yaml", OVR)
spec = spec.model_copy(update={"seed": seed})
path = f"/tmp/wexp/model{TAG}_seed{seed}.pt"
saved = {}


def no_eval(model, spec):
    saved["model"] = model
    return {}, {}, {}


world_loop.evaluate_world = no_eval
if os.path.exists(path):
    model = WorldModel(spec, spec.seed)
    model.load_state_dict(torch.load(path))
    model.eval()
else:
    res = world_loop.train_world(spec, lambda m, s: None, lambda *a: None, "cpu")
    print("train", res.train_seconds, flush=True)
    model = saved["model"].cpu().eval()
    torch.save(model.state_dict(), path)
out_path = f"/tmp/wexp/plan{TAG}_seed{seed}_{split}.json"
out = json.loads(Path(out_path).read_text()) if os.path.exists(out_path) else {}
_, real, bank = W.reference_latents(model, spec)
held_out = frozenset({W.stream_seed(split, seed)})
for variant in [v for v in sys.argv[4].split(";") if v]:
    name, _, kv = variant.partition(":")
    upd = {}
    corr = "none"
    for item in [x for x in kv.split(",") if x]:
        k, v = item.split("=")
        if k == "corr":
            corr = v
            continue
        upd[k] = (
            type(getattr(spec.planning, k))(v)
            if not isinstance(getattr(spec.planning, k), bool)
            else v == "1"
        )
    p = spec.planning.model_copy(update={"modes": ["receding"], **upd})
    c = build_correction(spec.correction, real, bank, held_out, corr)
    # the planner's one arm is "cem" with correction c: the spec's own correction arm is off
    off = spec.correction.model_copy(update={"kind": "none"})
    s2 = spec.model_copy(update={"planning": p, "correction": off})
    t = time.perf_counter()
    metrics, outcomes = W._planning(model, s2, {"none": c}, split, n)
    dt = time.perf_counter() - t
    row = {
        k.split("/", 2)[2]: round(v, 3)
        for k, v in metrics.items()
        if k.endswith("/success") or k.endswith("seconds_per_episode")
    }
    print(name, kv, round(dt, 1), json.dumps(row), flush=True)
    out[name] = {
        "kv": kv,
        "metrics": metrics,
        "bits": {k: success_bits(v) for k, v in outcomes.items()},
        "seconds": dt,
    }
    Path(out_path).write_text(json.dumps(out, indent=1))
