"""Retrain a toy model: ``python -m helpers.toy.train NAME [--out PATH] [--steps N]``.

Reads the task module's CONFIG, TRAIN and make_batch, trains with AdamW and a progress bar, and
writes the weights (safetensors, with the config and the training log in its metadata). TRAIN may
set ``warmup`` (linear warm-up steps, then cosine decay to a tenth of ``lr``) and ``log_every``; a
task's ``log_metrics(model, generator)`` adds its own numbers to every log entry.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from helpers.toy import TOY_MODELS, build_native, save_toy


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the base learning rate: constant without warm-up, else linear warm-up then cosine to 0.1."""
    if not warmup:
        return 1.0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(name: str, steps: int | None = None, out: Path | None = None, log_every: int | None = None) -> Path:
    """Train toy model `name` from its recipe and save it; returns the written path."""
    spec = TOY_MODELS[name]
    task = spec.task()
    settings = {**task.TRAIN, **({"steps": steps} if steps else {})}
    log_every = log_every or settings.get("log_every", 25)
    model, _ = build_native(task.CONFIG, seed=settings["seed"])
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings.get("weight_decay", 0.01))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: lr_factor(step, settings["steps"], settings.get("warmup", 0)))
    generator = torch.Generator().manual_seed(settings["seed"])
    log: list[dict] = []
    started = time.perf_counter()
    with torch.enable_grad():  # callers (notebooks, tests) may have switched gradients off
        bar = tqdm(range(settings["steps"]), desc=f"training {name}")
        for step in bar:
            tokens, targets = task.make_batch(generator, settings["batch_size"])
            logits = model(tokens)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if step % log_every == 0 or step == settings["steps"] - 1:
                entry = {"step": step, "loss": round(loss.item(), 5)}
                if hasattr(task, "log_metrics"):
                    entry.update(task.log_metrics(model, generator))
                log.append(entry)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    out = out or spec.weights
    save_toy(model, task.CONFIG, out, {"train": settings, "log": log,
                                       "seconds": round(time.perf_counter() - started, 1)})
    print(f"wrote {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(TOY_MODELS))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    train(args.name, steps=args.steps, out=args.out)


if __name__ == "__main__":
    main()
