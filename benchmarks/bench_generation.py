"""Greedy generation, three ways, in one run: helpers.generation, TransformerBridge.generate, plain transformers.

    python benchmarks/bench_generation.py [--prompts 16] [--tokens 20] [--threads 1]

All three decode the same chat prompts greedily for the same number of new tokens in one batch
(left-padded). Prints each one's new tokens per second, the ratio to plain transformers, and how
many prompts give exactly the tokens of plain transformers (the reference: same weights, no hooks).
The bridge's own generate is timed as shipped: with the transformers version pinned here its KV
cache is never filled (see helpers.generation), so its text differs; it is then timed again inside
helpers.generation.kv_cache_fix, which repairs it. The CPU may be shared: quote the ratios.
"""
from __future__ import annotations

import argparse
import time

import torch

from helpers.generation import chat_prompts, generate, kv_cache_fix
from helpers.models import load, smollm2_cache_dir

REQUESTS = ["What is the capital of France?", "Write a haiku about rain.", "Name three primary colours.",
            "How do plants make food?", "Give me a tip for learning to cook.", "What is 12 times 7?",
            "Describe a cat in one sentence.", "Why is the sky blue?"]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from transformers import AutoModelForCausalLM

    model = load()
    hf = AutoModelForCausalLM.from_pretrained(smollm2_cache_dir(), local_files_only=True, dtype=torch.float32).eval()
    prompts = chat_prompts(model, [REQUESTS[i % len(REQUESTS)] for i in range(args.prompts)])
    n, steps = len(prompts), args.tokens
    tokenizer = model.tokenizer
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)

    def plain():
        out = hf.generate(**enc, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                          pad_token_id=tokenizer.pad_token_id)
        return out[:, enc["input_ids"].shape[1]:]

    def bridge():
        out = model.generate(prompts, max_new_tokens=steps, do_sample=False, stop_at_eos=False, prepend_bos=False,
                             verbose=False, return_type="tokens")
        return out[:, -steps:]

    def bridge_fixed():
        with kv_cache_fix(model):
            return bridge()

    def ours():
        return generate(model, prompts, max_new_tokens=steps, batch_size=n, stop_at_eos=False).tokens

    plain()  # warm-up (first calls allocate)
    reference, plain_s = timed(plain)
    rows = [("plain transformers (reference)", reference, plain_s)]
    for label, fn in [("TransformerBridge.generate, as shipped", bridge),
                      ("TransformerBridge.generate + kv_cache_fix", bridge_fixed),
                      ("helpers.generation.generate", ours)]:
        tokens, seconds = timed(fn)
        rows.append((label, tokens, seconds))
    print(f"{n} prompts x {steps} new tokens, greedy, {torch.get_num_threads()} thread(s)")
    print(f"{'implementation':45s} {'tokens/s':>9s} {'x plain':>8s} {'same tokens as plain':>21s}")
    for label, tokens, seconds in rows:
        same = sum(bool(torch.equal(a[:steps].cpu(), b[:steps].cpu())) for a, b in zip(tokens, reference))
        print(f"{label:45s} {n * steps / seconds:9.1f} {plain_s / seconds:8.2f} {same:>14d} of {n}")


if __name__ == "__main__":
    main()
