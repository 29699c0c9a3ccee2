# The ad-hoc script (session 8) behind docs/results/world/planner_noise_seed0_{test,val}.json:
# `python planner_noise.py 0,2w,3w,4w` trains wm_tworooms_sigreg seed 0 once (saved to /tmp/wexp),
# then plans 100 test episodes per task (receding horizon, no correction) with CEM noise of
# colour beta ("w": with warm start). Replace the two test lines by ("val", 64) for validation.
"""Ad-hoc: train wm_tworooms_sigreg (seed 0) once, then test planning with white vs coloured CEM noise."""
import json, sys, time
from pathlib import Path
import torch
from jepa_lab.spec.load import load_any
from jepa_lab.training import world_loop
from jepa_lab.eval import world as W
from jepa_lab.eval.planning import episodes, success_array

spec = load_any(Path('/work/main/studies/wm_tworooms_sigreg.yaml'))
saved = {}
def no_eval(model, spec):
    saved['model'] = model
    return {}, {}, {}
world_loop.evaluate_world = no_eval
import os
from jepa_lab.core.world import WorldModel
if os.path.exists('/tmp/wexp/model_seed0.pt'):
    model = WorldModel(spec, spec.seed)
    model.load_state_dict(torch.load('/tmp/wexp/model_seed0.pt'))
    model.eval()
    out = json.load(open('/tmp/wexp/plan_exp.json')) if os.path.exists('/tmp/wexp/plan_exp.json') else {}
else:
    res = world_loop.train_world(spec, lambda m, s: None, lambda *a: None, 'cpu')
    print('train', res.train_seconds, flush=True)
    model = saved['model'].cpu().eval()
    torch.save(model.state_dict(), '/tmp/wexp/model_seed0.pt')
    out = {'train_seconds': res.train_seconds}
for variant in sys.argv[1].split(','):
    beta, warm = float(variant.rstrip('w')), variant.endswith('w')
    p = spec.planning.model_copy(update={'noise_beta': beta, 'warm_start': warm, 'modes': ['receding']})
    c = spec.correction.model_copy(update={'kind': 'none'})
    s2 = spec.model_copy(update={'planning': p, 'correction': c})
    none = W.build_correction(c, torch.zeros(10, 64), None, frozenset(), 'none')
    t = time.perf_counter()
    metrics, outcomes = W._planning(model, s2, {'none': none}, 'test', 100)
    dt = time.perf_counter() - t
    row = {k: v for k, v in metrics.items() if k.endswith('/success') or k.endswith('seconds_per_episode')}
    print(variant, round(dt, 1), json.dumps(row), flush=True)
    out[variant] = {'metrics': metrics, 'bits': {k: ''.join('1' if x else '0' for x in v.tolist()) for k, v in outcomes.items()}, 'seconds': dt}
    json.dump(out, open('/tmp/wexp/plan_exp.json', 'w'), indent=1)
