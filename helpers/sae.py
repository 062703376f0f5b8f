"""Sparse autoencoders (SAEs) on SmolLM2's residual stream: the dictionary, its corpus, its training and its metrics.

An SAE rewrites an activation vector x [d_model] as a sparse, non-negative combination of learned
directions (a dictionary of ``d_sae`` "features"): ``f = TopK(ReLU(W_enc (x - b_dec) + b_enc))``,
``x_hat = f @ W_dec + b_dec``. TopK keeps the k largest pre-activations per token, so the number of
active features per token (L0) is at most k by construction and no L1 coefficient needs tuning
(Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

Command line (each step prints a progress bar; the corpus and the weights ship with the repo):

    python -m helpers.sae corpus   # sample helpers/data/l08_corpus.json from SmolLM2 (fixed seed)
    python -m helpers.sae train    # collect activations, train both dictionaries, write helpers/data/l08_sae_*.safetensors

Measured on one thread of a busy shared 2-core machine: sampling the corpus 1119 s; collecting the
34,065 training activations 234 s; training the 4x dictionary 449 s and the 1x one 103 s (each file
stores its own time and training log in its header; see ``sae_metadata``).

Why not SAELens? It is not installed and the course adds no dependency for one lesson; the SAE
itself is twenty lines, and writing it in the open is the point of the lesson.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers import validate
from helpers.errors import MicroscopeError, ModelUnavailableError, ShapeError

DATA_DIR = Path(__file__).parent / "data"
CORPUS_PATH = DATA_DIR / "l08_corpus.json"
LAYER = 15  # a middle layer of SmolLM2's 30
HOOK = f"blocks.{LAYER}.hook_resid_post"
SIZES = {"4x": dict(d_sae=2304, k=32), "1x": dict(d_sae=576, k=32)}
TRAIN = dict(steps=1200, batch_size=512, lr=2e-3, seed=0)
CORPUS = dict(seed=0, samples_per_opener=8, max_new_tokens=96, temperature=0.8, top_k=50, held_out_every=5)

# Openers of the sampled documents: many everyday topics, a few about flying, and near twins about
# other transport, so that an aviation feature has something to fire on and something to ignore.
OPENERS = [
    "The pilot", "Our flight to", "The airport was", "The jet", "Air traffic control", "The aircraft",
    "The train driver", "Our bus to", "The station was", "The ship", "The harbour master", "The truck",
    "In the kitchen, my grandmother", "The recipe calls for", "The football match", "The tennis player",
    "The scientist", "In chemistry class,", "The history of Rome", "During the war,", "The stock market",
    "The bank", "The doctor told me", "The hospital", "My garden", "The weather today", "The court ruled",
    "The teacher", "My dog", "The cat", "The ocean", "The forest", "The mountain", "The river",
    "The museum", "The painter", "The concert", "The guitar", "The novel", "Once upon a time,",
    "The city council", "The election", "The computer", "The programmer", "The smartphone",
    "The farmer", "The village", "The wedding", "The birthday party", "The hotel",
    "Dear John,", "The company announced", "The students", "The library",
    "The soldier", "The king", "The moon", "The planet Mars", "The baby", "The restaurant",
]


class SAEError(MicroscopeError):
    """Bad input to an SAE function (wrong width, k out of range, a missing dictionary)."""


@dataclass
class SAE:
    """A TopK sparse autoencoder: W_enc [d_model, d_sae], b_enc [d_sae], W_dec [d_sae, d_model], b_dec [d_model]."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    k: int
    hook: str = HOOK

    @property
    def d_sae(self) -> int:
        return self.W_dec.shape[0]

    @property
    def d_model(self) -> int:
        return self.W_dec.shape[1]

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        x = validate.tensor(x, "x", shape_doc="[..., d_model]")
        if x.shape[-1] != self.d_model:
            raise ShapeError(f"`x` must end in d_model={self.d_model}, got shape {tuple(x.shape)}. Pass activations "
                             f"from {self.hook}.")
        return x.to(self.W_enc.dtype)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [..., d_sae] of activations x [..., d_model]."""
        return (self._check(x) - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., d_sae]: ReLU of the pre-activations, only the k largest kept per row."""
        return topk_relu(self.pre_acts(x), self.k)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction [..., d_model] from feature activations f [..., d_sae]."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction x_hat [..., d_model], features f [..., d_sae])."""
        f = self.encode(x)
        return self.decode(f), f

    __call__ = forward

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU(pre) [..., d] with all but the k largest entries of each row set to zero."""
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def init_sae(d_model: int, d_sae: int, k: int, seed: int = 0, b_dec: torch.Tensor | None = None) -> SAE:
    """A fresh SAE: unit-norm random decoder rows, encoder = decoder transposed, b_dec = data mean if given."""
    k = validate.positive_int(k, "k")
    if k > d_sae:
        raise SAEError(f"`k`={k} exceeds the dictionary size d_sae={d_sae}. Use k <= d_sae (typically 16-64).")
    generator = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_model, generator=generator)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
    return SAE(W_enc=W_dec.T.clone(), b_enc=torch.zeros(d_sae), W_dec=W_dec,
               b_dec=torch.zeros(d_model) if b_dec is None else b_dec.clone(), k=k)


# ----------------------------------------------------------------------------------------- corpus

def sample_corpus(path: Path = CORPUS_PATH, batch_size: int = 40) -> Path:
    """Sample documents from SmolLM2 after each opener (seeded), split train / held-out by document, save JSON."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.models import PLAIN_TEXT_BOS, build_smollm2_cache

    directory = build_smollm2_cache()
    # The plain transformers model, not the bridge: its generate() samples with a working KV cache.
    hf = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    tokenizer.padding_side = "left"
    jobs = [opener for opener in OPENERS for _ in range(CORPUS["samples_per_opener"])]
    documents: list[str] = []
    torch.manual_seed(CORPUS["seed"])
    started = time.perf_counter()
    with torch.no_grad():
        for start in tqdm(range(0, len(jobs), batch_size), desc="sampling the l08 corpus"):
            batch = jobs[start:start + batch_size]
            encoded = tokenizer([PLAIN_TEXT_BOS + text for text in batch], return_tensors="pt", padding=True,
                                add_special_tokens=False)
            out = hf.generate(**encoded, do_sample=True, temperature=CORPUS["temperature"], top_k=CORPUS["top_k"],
                              max_new_tokens=CORPUS["max_new_tokens"], pad_token_id=tokenizer.pad_token_id)
            new = tokenizer.batch_decode(out[:, encoded.input_ids.shape[1]:], skip_special_tokens=True)
            documents += [opener + text for opener, text in zip(batch, new)]
    every = CORPUS["held_out_every"]
    corpus = {
        "about": ("Lesson 08's corpus: text sampled from SmolLM2-135M-Instruct itself (Apache-2.0 model; "
                  "the text is this project's, under its licence) after each opener in helpers.sae.OPENERS, "
                  f"with torch seed {CORPUS['seed']}, temperature {CORPUS['temperature']}, top-k {CORPUS['top_k']}, "
                  f"{CORPUS['max_new_tokens']} new tokens. Regenerate with `python -m helpers.sae corpus`. "
                  f"Split by document: every {every}th document is held out (never used to train the SAE)."),
        "settings": CORPUS,
        "seconds": round(time.perf_counter() - started, 1),
        "train": [doc for i, doc in enumerate(documents) if i % every != every - 1],
        "held_out": [doc for i, doc in enumerate(documents) if i % every == every - 1],
    }
    path.write_text(json.dumps(corpus, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(corpus['train'])} train and {len(corpus['held_out'])} held-out documents")
    return path


def load_corpus(split: str = "train") -> list[str]:
    """The documents of one split of the lesson's corpus ("train" or "held_out")."""
    split = validate.choice(split, "split", ["train", "held_out"])
    if not CORPUS_PATH.is_file():
        raise ModelUnavailableError(f"{CORPUS_PATH} is missing; recreate it with `python -m helpers.sae corpus`.")
    return json.loads(CORPUS_PATH.read_text())[split]


# ------------------------------------------------------------------------------------ activations

def document_tokens(model, documents: list[str], max_tokens: int = 128) -> list[torch.Tensor]:
    """Token ids [pos_i] of each document with the BOS token first, cut to `max_tokens`."""
    documents = validate.strings(documents, "documents")
    max_tokens = validate.positive_int(max_tokens, "max_tokens")
    bos = model.tokenizer.bos_token_id
    return [torch.tensor([bos] + model.tokenizer.encode(doc, add_special_tokens=False))[:max_tokens]
            for doc in documents]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the activation it needs is stored."""


def _padded(tokens: list[torch.Tensor], pad: int) -> torch.Tensor:
    out = torch.full((len(tokens), max(len(t) for t in tokens)), pad, dtype=torch.long)
    for row, ids in enumerate(tokens):
        out[row, :len(ids)] = ids
    return out


def residual_activations(model, tokens: list[torch.Tensor], hook: str = HOOK, batch_size: int = 16) -> list[torch.Tensor]:
    """Activations [pos_i, d_model] at `hook` for each token list (right-padded batches; the pass stops at the hook)."""
    from helpers.tokens import check_hook_name

    hook = check_hook_name(model, hook)
    batch_size = validate.positive_int(batch_size, "batch_size")
    out: list[torch.Tensor] = []
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size]
        stored: list[torch.Tensor] = []

        def grab(act, hook):  # noqa: ARG001 - TransformerLens hook signature
            stored.append(act.detach().clone())
            raise _Stop

        try:
            with torch.no_grad(), model.hooks(fwd_hooks=[(hook, grab)]):
                model(_padded(batch, model.tokenizer.pad_token_id or 0))
        except _Stop:
            pass
        out += [stored[0][row, :len(ids)] for row, ids in enumerate(batch)]
    return out


def token_rows(acts: list[torch.Tensor]) -> torch.Tensor:
    """All tokens' activations [n_tokens, d] except each document's BOS (whose activations are outliers)."""
    return torch.cat([a[1:] for a in acts])


# --------------------------------------------------------------------------------------- training

def train_sae(x: torch.Tensor, d_sae: int, k: int, steps: int = TRAIN["steps"], batch_size: int = TRAIN["batch_size"],
              lr: float = TRAIN["lr"], seed: int = TRAIN["seed"], aux_k: int = 64, dead_after: int = 200,
              progress: bool = True) -> tuple[SAE, list[dict]]:
    """Train a TopK SAE on activations x [n_tokens, d_model]; returns (sae, log).

    Loss: squared error over the data's variance (1 - fraction of variance explained), plus Gao et
    al.'s auxiliary loss: features dead for `dead_after` steps try to reconstruct the remaining error
    with their own top `aux_k`, so fewer stay dead. Decoder rows are kept at unit norm.
    """
    from tqdm.auto import tqdm

    x = validate.tensor(x, "x", ndim=2, shape_doc="[n_tokens, d_model]")
    sae = init_sae(x.shape[1], d_sae, k, seed=seed, b_dec=x.mean(0))
    params = {name: t.clone().requires_grad_() for name, t in sae.tensors().items()}
    optimiser = torch.optim.Adam(params.values(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    variance = (x - x.mean(0)).pow(2).sum(-1).mean()
    since_fired = torch.zeros(d_sae)
    log: list[dict] = []
    bar = tqdm(range(steps), desc=f"training SAE d_sae={d_sae} k={k}", disable=not progress)
    with torch.enable_grad():
        for step in bar:
            batch = x[torch.randint(len(x), (batch_size,), generator=generator)]
            pre = (batch - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
            f = topk_relu(pre, k)
            error = batch - f @ params["W_dec"] - params["b_dec"]
            loss = error.pow(2).sum(-1).mean() / variance
            dead = since_fired >= dead_after
            if dead.any():
                aux = topk_relu(pre.masked_fill(~dead, -torch.inf), min(aux_k, int(dead.sum()))) @ params["W_dec"]
                loss = loss + (error.detach() - aux).pow(2).sum(-1).mean() / variance / 32
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                params["W_dec"] /= params["W_dec"].norm(dim=-1, keepdim=True)
                since_fired = torch.where((f > 0).any(0), 0.0, since_fired + 1)
            if step % 100 == 0 or step == steps - 1:
                log.append({"step": step, "loss": round(loss.item(), 5), "dead": int(dead.sum())})
                bar.set_postfix(loss=f"{loss.item():.3f}", dead=int(dead.sum()))
    return SAE(**{n: t.detach() for n, t in params.items()}, k=k), log


def sae_path(size: str) -> Path:
    """Where the shipped dictionary of `size` ("4x" or "1x") lives."""
    return DATA_DIR / f"l08_sae_{validate.choice(size, 'size', list(SIZES))}.safetensors"


def save_sae(sae: SAE, path: Path, metadata: dict | None = None) -> None:
    """Save an SAE as float16 safetensors, its k, hook and `metadata` in the header."""
    from safetensors.torch import save_file

    meta = {"k": str(sae.k), "hook": sae.hook, **{key: json.dumps(v) for key, v in (metadata or {}).items()}}
    save_file({n: t.to(torch.float16).contiguous() for n, t in sae.tensors().items()}, str(path), metadata=meta)


def load_sae(size: str = "4x", path: Path | None = None) -> SAE:
    """The shipped SAE of `size` ("4x": 2304 features, "1x": 576), in float32."""
    from safetensors import safe_open

    path = path or sae_path(size)
    if not Path(path).is_file():
        raise ModelUnavailableError(f"{path} is missing; retrain it with `python -m helpers.sae train`.")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key).float() for key in handle.keys()}
    return SAE(**tensors, k=int(meta["k"]), hook=meta["hook"])


def sae_metadata(size: str = "4x") -> dict:
    """The training record stored with a shipped SAE (settings, log, wall time)."""
    from safetensors import safe_open

    with safe_open(str(sae_path(size)), framework="pt") as handle:
        meta = handle.metadata() or {}
    return {key: json.loads(v) for key, v in meta.items() if key not in ("k", "hook")}


def train_all(sizes: list[str] | None = None, steps: int = TRAIN["steps"]) -> None:
    """Collect training activations once, train each dictionary size, save them (the retrain command)."""
    from helpers.models import load

    model = load()
    started = time.perf_counter()
    x = token_rows(residual_activations(model, document_tokens(model, load_corpus("train"))))
    collect_seconds = time.perf_counter() - started
    print(f"{len(x)} training tokens collected at {HOOK} in {collect_seconds:.0f} s")
    for size in sizes or list(SIZES):
        started = time.perf_counter()
        sae, log = train_sae(x, steps=steps, **SIZES[size])
        seconds = round(time.perf_counter() - started, 1)
        save_sae(sae, sae_path(size), {"train": {**TRAIN, **SIZES[size], "steps": steps, "n_tokens": len(x)},
                                       "log": log, "seconds": seconds,
                                       "collect_seconds": round(collect_seconds, 1)})
        print(f"wrote {sae_path(size)} ({seconds} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["corpus", "train"])
    parser.add_argument("--size", choices=sorted(SIZES), action="append", default=None)
    parser.add_argument("--steps", type=int, default=TRAIN["steps"])
    args = parser.parse_args()
    if args.command == "corpus":
        sample_corpus()
    else:
        train_all(args.size, steps=args.steps)


if __name__ == "__main__":
    main()
