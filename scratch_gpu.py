import sys, copy, time, statistics, torch, numpy as np
sys.path.insert(0, "scripts"); sys.path.insert(0, ".")
import bench_microbatch as bm
from bsprof.probes.microbatch import accumulate, microbatch
from bsprof.sampling import chunk_sums, partial_marks
dev = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
def compare(fns, rounds=100, block=4):
    ks=list(fns); T={k: [] for k in ks}
    for r in range(5+rounds):
        for k in ks[r%len(ks):]+ks[:r%len(ks)]:
            ts=[]
            for j in range(block):
                t=time.perf_counter(); fns[k](); sync(); ts.append(time.perf_counter()-t)
            if r>=5: T[k].append(statistics.median(ts[1:]))
    ref=np.array(T[ks[0]])
    return " | ".join(f"{k} {1e3*np.median(T[k]):.2f}ms {100*(np.median(np.array(T[k])/ref)-1):+.1f}%" for k in ks)
for name in ("mlp", "cnn"):
    for b in (8, 32, 128):
        torch.manual_seed(0)
        base = bm.make_model(name).to(dev)
        batches = [(x.to(dev), y.to(dev)) for x, y in bm.make_batches(name, b, torch.Generator().manual_seed(1))]
        ch = [(bt, b) for bt in batches]
        m = [copy.deepcopy(base) for _ in range(4)]
        plain = bm.plain_method(m[0])
        fns = dict(plain=lambda: plain(batches),
                   fused=lambda: accumulate(m[1], bm.loss_fn, iter(ch), partial_marks(b, 8 * b), in_cache=False),
                   engine=lambda: accumulate(m[2], bm.loss_fn, iter(ch), partial_marks(b, 8 * b), in_cache=True),
                   chunks=lambda: chunk_sums(lambda *a: microbatch(*a), m[3], bm.loss_fn, iter(ch), 8 * b, b))
        print(name, b, compare(fns), flush=True)
