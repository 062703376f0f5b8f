"""TransformerLens's patching sweeps vs helpers.patching, side by side in one process, same prompts.

    python benchmarks/bench_patching.py [--quick] [--max-memory-mb 256]

Prints, for the residual-stream sweep (resid_pre, layers x positions) and the per-head sweep
(z at all positions, layers x heads): each implementation's time and peak memory, the speed ratio
and the largest difference between their numbers; our sweeps again under a tight memory cap;
then attribution patching's time and its Pearson correlation with the exact sweeps.
TransformerLens runs under torch.no_grad() (its patching functions do not turn autograd off
themselves; without it they are slower still).

Peak memory is the process's resident set size, sampled every 2 ms during the call, minus the size
just before it (freed heap is returned to the system first, where glibc allows). The CPU may be
shared, so absolute times are noisy: the ratio measured in one run is the number to quote. Both
run on one thread by default (--threads to change it): on a shared machine extra threads mostly
wait for each other.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import threading
import time

import psutil
import torch
from transformer_lens import patching as tl_patching

from helpers.models import load
from helpers.patching import attribution_patch, block_sweep, head_sweep, residual_sweep

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When John and Mary went to the store, Mary gave a drink to"


class PeakRSS:
    """Samples this process's resident memory in a thread; `.peak_mb` is the rise above the start."""

    def __enter__(self):
        self.process = psutil.Process(os.getpid())
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.peak_mb = (self.peak - self.start) / 2**20


def release_free_memory() -> None:
    """Hand freed heap back to the system so the next measurement starts from a low RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline is just higher
        pass


def measure(fn):
    """(result, seconds, peak MB above the starting RSS)."""
    release_free_memory()
    with PeakRSS() as memory:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return result, seconds, memory.peak_mb


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only layers 0-5 (a smoke test, not the benchmark)")
    parser.add_argument("--max-memory-mb", type=float, default=None, help="memory cap for helpers.patching")
    parser.add_argument("--cap-demo-mb", type=float, default=64,
                        help="a tight memory cap to rerun our sweeps under, to show chunking (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = load("smollm2")
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")

    def logit_diff(logits):
        return (logits[:, -1, mary] - logits[:, -1, john]).mean()

    layers = list(range(6)) if args.quick else list(range(model.cfg.n_layers))
    n_pos = clean.shape[1]
    print(f"model {model.cfg.model_name}, prompt {n_pos} tokens, torch threads {torch.get_num_threads()}, "
          f"layers {len(layers)}, memory cap {args.max_memory_mb or 'default'} MB")
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        baseline = logit_diff(model(corrupted)).item()
    print(f"logit diff ' Mary' - ' John': clean {logit_diff(model(clean)).item():.3f}, corrupted {baseline:.3f}")

    def tl_index(axis: str, size: int):
        import pandas as pd
        return pd.DataFrame([(layer, i) for layer in layers for i in range(size)], columns=["layer", axis])

    def tl_sweep(sweep, axis, size):
        with torch.no_grad():
            out = sweep(model, corrupted, clean_cache, logit_diff, index_df=tl_index(axis, size), index_axis_names=None)
        return out.reshape(len(layers), size).cpu()

    kwargs = dict(layers=layers, max_memory_mb=args.max_memory_mb, progress=False)
    exact = {}
    rows = []
    for label, tl_fn, axis, size, ours_fn in [
        (f"resid_pre sweep ({len(layers) * n_pos} patches)", tl_patching.get_act_patch_resid_pre, "pos", n_pos,
         lambda: residual_sweep(model, clean, corrupted, logit_diff, **kwargs)),
        (f"head sweep ({len(layers) * model.cfg.n_heads} patches)", tl_patching.get_act_patch_attn_head_out_all_pos,
         "head", model.cfg.n_heads, lambda: head_sweep(model, clean, corrupted, logit_diff, **kwargs)),
    ]:
        reference, tl_seconds, tl_mb = measure(lambda: tl_sweep(tl_fn, axis, size))
        ours, our_seconds, our_mb = measure(ours_fn)
        exact[axis] = ours
        difference = (ours - reference).abs().max().item()
        rows.append((label, tl_seconds, our_seconds, difference, tl_mb, our_mb))

    print(f"\n{'':30s} {'TL s':>8s} {'ours s':>8s} {'ratio':>7s} {'max|diff|':>10s} {'TL MB':>7s} {'ours MB':>8s}")
    for label, tl_seconds, our_seconds, difference, tl_mb, our_mb in rows:
        print(f"{label:30s} {tl_seconds:8.1f} {our_seconds:8.1f} {tl_seconds / our_seconds:6.1f}x "
              f"{difference:10.2e} {tl_mb:7.0f} {our_mb:8.0f}")

    cap = args.cap_demo_mb
    _, capped_resid_s, capped_resid_mb = measure(
        lambda: residual_sweep(model, clean, corrupted, logit_diff, layers=layers, max_memory_mb=cap, progress=False))
    _, capped_head_s, capped_head_mb = measure(
        lambda: head_sweep(model, clean, corrupted, logit_diff, layers=layers, max_memory_mb=cap, progress=False))
    print(f"\nours with max_memory_mb={cap:g}: resid_pre sweep {capped_resid_s:.1f} s, {capped_resid_mb:.0f} MB; "
          f"head sweep {capped_head_s:.1f} s, {capped_head_mb:.0f} MB")

    blocks, block_seconds, block_mb = measure(lambda: block_sweep(model, clean, corrupted, logit_diff, **kwargs))
    estimate, attr_seconds, attr_mb = measure(lambda: attribution_patch(model, clean, corrupted, logit_diff))
    exact_seconds = block_seconds + rows[1][2]
    print(f"exact block sweep (resid_pre, attn_out, mlp_out) {block_seconds:.1f} s, {block_mb:.0f} MB")
    print(f"attribution patching, all four sites: {attr_seconds:.2f} s, {attr_mb:.0f} MB; "
          f"{exact_seconds / attr_seconds:.0f}x faster than the exact block + head sweeps ({exact_seconds:.1f} s)")
    print("Pearson correlation of attribution with exact patching (effect = metric - corrupted baseline):")
    for i, site in enumerate(("resid_pre", "attn_out", "mlp_out")):
        print(f"  {site:9s} r = {pearson(estimate[site][layers], blocks[i] - baseline):.3f}")
    print(f"  {'z':9s} r = {pearson(estimate['z'][layers], exact['head'] - baseline):.3f}")
    without_first = pearson(estimate["resid_pre"][layers[1:]], blocks[0][1:] - baseline)
    print(f"  resid_pre without layer 0: r = {without_first:.3f}")


if __name__ == "__main__":
    main()
