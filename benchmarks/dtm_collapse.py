"""Topic-collapse experiment (docs/dtm.md, "Topic collapse"): simulated well-separated drifting topics,
fitted with loss="model"; prints, per seed, the worst matched topic's total variation from the truth, the
closest pair of fitted topics, the largest mean prevalence and the fit time.

    PYTHONPATH=. python benchmarks/dtm_collapse.py 3
"""
import sys
import time

import torch
from scipy.optimize import linear_sum_assignment
from inference.fit import fit
from zoo.dtm import DynamicTopicModel
torch.set_num_threads(1)

def truth_topics(V, K, S, gen):
    logits = torch.full((S, K, V), -3.0)
    per = V // K
    base = torch.randn(K, per, generator=gen)
    for k in range(K):
        walk = base[k] + 0.3 * torch.randn(S, per, generator=gen).cumsum(0)
        logits[:, k, k*per:(k+1)*per] = 1.5 + walk
    return logits

def run(seed, K=8, V=160, S=5, N=3000, length=30, epochs=30, lr=0.05, **kw):
    gen = torch.Generator().manual_seed(100 + seed)
    truth = truth_topics(V, K, S, gen)
    model = DynamicTopicModel(V, K, S, topic_drift=0.2)
    slices = torch.arange(N) % S
    alpha = 0.5 * torch.randn(S, K, generator=gen)
    batch = model.sample_documents(truth, alpha, slices, length, gen)
    t = time.perf_counter()
    fit(model, batch, method="svi", loss="model", max_epochs=epochs, batch_size=256, learning_rate=lr, progress=False, seed=seed, **kw)
    fitted = torch.softmax(model.topic_word_logits(), -1)
    true = torch.softmax(truth, -1)
    tv = 0.5 * (fitted[:, :, None] - true[:, None]).abs().sum(-1).amax(0)  # (K fitted, K true) worst over slices
    r, c = linear_sum_assignment(tv.numpy())
    matched = tv[r, c].max().item()
    pair = 0.5 * (fitted[:, :, None] - fitted[:, None]).abs().sum(-1).amin(0)
    pair = pair + 10 * torch.eye(K)
    prev = model.topic_prevalence(batch).mean(0)
    return matched, pair.min().item(), (prev.max()).item(), time.perf_counter() - t

if __name__ == "__main__":
    seeds = range(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    for s in seeds:
        m, p, pm, sec = run(s)
        print(f"seed {s}: matched TV {m:.3f}  min pairwise TV {p:.3f}  max prevalence {pm:.3f}  {sec:.0f}s", flush=True)
