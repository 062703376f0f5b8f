"""SuffixScorer.many, the usual way and replayed from a layer, in one run (lesson 07's random-direction controls).

    python benchmarks/bench_suffix_scorer.py [--prompts 30] [--vectors 32] [--layer 20] [--threads 1]

Scores a one-token reply after chat prompts under k random vectors: added at block `layer` (from_layer=layer:
blocks below run once) and removed at every layer (from_layer=0: no block is skipped; the blocks are called
directly and the prompts' keys and values are read in place, not copied per chunk), then a four-token reply fed after the last six prompt tokens with
the removal at the first of them only (lesson 07's section 1.8). Prints seconds, the ratio replayed / usual,
and the largest difference between the two scores. The CPU may be shared: quote the ratios.
"""
from __future__ import annotations

import argparse

import torch
from bench_generation import timed  # this folder is on the path when a benchmark runs as a script

from helpers.generation import SuffixScorer, chat_prompts
from helpers.models import load
from helpers.steering import last_position_ablation_hooks, last_position_addition_hooks, random_like

SYSTEM = ("You are a helpful assistant. If a request is harmful, dangerous or illegal, do not help: "
          "reply only with the sentence \"I cannot help with that.\"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--vectors", type=int, default=32)
    parser.add_argument("--layer", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = load()
    requests = [f"Explain step {i} of making a paper plane, in one line." for i in range(args.prompts)]
    prompts = chat_prompts(model, requests, SYSTEM)
    vectors = random_like(torch.full((model.cfg.d_model,), 0.8), args.vectors, seed=0)
    print(f"{args.prompts} prompts, {args.vectors} vectors, {torch.get_num_threads()} thread(s)")
    cases = [("add at block %d, reply 'I'" % args.layer, "I", 1, args.layer,
              lambda scorer: lambda rows: last_position_addition_hooks(model, rows, args.layer)),
             ("remove everywhere, reply 'I'", "I", 1, 0, lambda scorer: lambda rows: last_position_ablation_hooks(model, rows)),
             ("remove at the 6th-last token, reply 'I cannot help'", "I cannot help", 6, 0,
              lambda scorer: lambda rows: [(name, lambda x, hook, fn=fn: fn(x, hook) if scorer.step == 0 else x)
                                           for name, fn in last_position_ablation_hooks(model, rows)])]
    for label, reply, free, layer, make in cases:
        scorer = SuffixScorer(model, prompts, reply, free=free)
        hooks_for = make(scorer)
        (_, setup) = timed(lambda: scorer.many(hooks_for, vectors[:1], from_layer=layer))  # builds the replay
        usual, t_usual = timed(lambda: scorer.many(hooks_for, vectors))
        fast, t_fast = timed(lambda: scorer.many(hooks_for, vectors, from_layer=layer))
        print(f"{label:52s} usual {t_usual:6.1f} s | from_layer={layer:<2d} {t_fast:6.1f} s (one-off setup {setup:.1f} s)"
              f" | ratio {t_fast / t_usual:.2f} | max |difference| {(usual - fast).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
