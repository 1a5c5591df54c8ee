"""Train a small Qwen3-MoE on real English text, so that its routing comes from a trained router.

Random-weight MoE models route degenerately, and the calibrated Zipf routing only imitates a trained router's
coverage. This module trains one instead, on the CPU, in plain torch:

  * corpus: the fortune-cookie files of Debian's `fortunes` package (and `fortunes-min`, which it pulls in), about
    2.6 MB of English quotations, jokes, definitions and verse under /usr/share/games/fortunes. `apt-get install -y
    fortunes` installs it; nothing is downloaded when training. Every 20th fortune is held out (validation loss and
    routing coverage). Half of the training fortunes are wrapped in the presets' chat template (a user asking for
    something about the fortune's file, e.g. "science", the fortune as the answer, ended by <|im_end|>, the EOS), so
    chat prompts get fortune-like answers that stop; the rest are plain text separated by <|endoftext|>.
  * tokenizer: tokenizer.train_tokenizer's byte-level BPE (printable ASCII + newline, the same chat markers and
    template as the random-weight presets, every token decodes to visible text), trained on the training fortunes.
  * model: the Qwen3-MoE layers written here (RMSNorm, q/k norm, rotary, GQA, softmax top-k router with renormalised
    gates, SiLU experts), as transformers' and SGLang's Qwen3MoeForCausalLM compute them; trained with next-token
    loss plus the Switch/GShard load-balancing loss, AdamW, linear warmup then cosine decay, from the preset's seed.
  * determinism: initialisation, batch order and chat wrapping come from the preset's seed, so a rerun with the same
    torch build and thread count gives the same bytes (other thread counts change float summation order, and so
    the weights slightly; `training.json` records the threads used).
  * output: build.py's checkpoint layout (config.json, generation_config.json, tokenizer files, safetensors in the
    preset's dtype), so SGLang and transformers load it as they load the random-weight presets; cached under the
    preset's model_dir, whose digest covers the preset's `extra["train"]` recipe. `training.json` records the corpus
    (package versions, size, sha256), the recipe, the loss curve, wall and CPU time and the machine's load.

`python -m sgl_layered.models train trained-qwen3-moe` trains the preset and prints its directory; `build()` never
trains (it names that command instead), so no test, benchmark or demo starts a long training by surprise.
`benchmarks/trained_coverage.py` measures its routing coverage U(n). Cost on this machine's CPU (2 cores, AMD EPYC, AVX-512), one thread: 1.8-2.0 CPU-seconds
per step (1.88 s wall per step with another job on the other core), so the 400-step recipe takes about 13 minutes
all told. On a machine shared with other jobs use `--threads 1`: there two OpenMP threads wait on each other and run
several times slower.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import time
import unicodedata
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .build import _random_weights, model_dir, publish, save_weights, write_config
from .presets import ModelPreset, get_preset
from .tokenizer import train_tokenizer

FORTUNES_DIR = Path("/usr/share/games/fortunes")
CORPUS_PACKAGES = ("fortunes", "fortunes-min")  # Debian; fortunes-min comes in through fortune-mod
CORPUS_INSTALL = "apt-get install -y fortunes"
SKIP_FILES = {"ascii-art"}  # pictures, not prose
HELDOUT_EVERY = 20
DOC_SEP = "<|endoftext|>"
TRAIN_FORMAT = 1  # bump when the training procedure changes in a way the recipe does not say

Doc = Tuple[str, str]  # (topic: the cookie file's name, text)


# -- corpus --------------------------------------------------------------------------------------------------
def clean_text(text: str) -> str:
    """Printable ASCII and newlines only: overstrikes undone, accents folded, runs of blanks collapsed."""
    text = re.sub(r".\x08", "", text)  # "_\bW" (underline/bold by overstrike) -> "W"
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    lines = [re.sub(r"[^\x20-\x7e]+", " ", line) for line in text.split("\n")]
    lines = [re.sub(r" {2,}", " ", line).strip() for line in lines]
    return "\n".join(lines).strip()


def fortunes(root: Path = FORTUNES_DIR) -> List[Doc]:
    """Every fortune of the installed cookie files as (file name, cleaned text), in file-name order."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: the training corpus is Debian's `fortunes` package "
                                f"(`{CORPUS_INSTALL}`)")
    docs = []
    for f in sorted(root.iterdir()):
        if f.is_symlink() or not f.is_file() or "." in f.name or f.name in SKIP_FILES:
            continue  # *.dat are strfile indexes, *.u8 links to the same files
        raw = f.read_bytes().decode("utf-8", errors="replace")
        docs += [(f.name, d) for d in (clean_text(part) for part in re.split(r"\n%\n", raw)) if len(d) > 1]
    if not docs:
        raise FileNotFoundError(f"no fortunes found under {root}")
    return docs


def split(docs: Sequence[Doc]) -> Tuple[List[Doc], List[Doc]]:
    """(training documents, held-out documents): every HELDOUT_EVERY-th document is held out."""
    return ([d for i, d in enumerate(docs) if i % HELDOUT_EVERY],
            [d for i, d in enumerate(docs) if i % HELDOUT_EVERY == 0])


def corpus_manifest(docs: Sequence[Doc], root: Path = FORTUNES_DIR) -> dict:
    versions = {}
    for pkg in CORPUS_PACKAGES:
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
            versions[pkg] = r.stdout.strip() if r.returncode == 0 else None
        except OSError:
            versions[pkg] = None
    text = "\n".join(t for _, t in docs)
    return {"root": str(root), "debian_packages": versions, "documents": len(docs), "chars": len(text),
            "sha256": hashlib.sha256(text.encode()).hexdigest(), "install": CORPUS_INSTALL,
            "license": "fortune-mod: BSD (University of California); the cookie files are collected quotations "
                       "distributed with it (see /usr/share/doc/fortunes/copyright)"}


def training_texts(docs: Sequence[Doc], chat_fraction: float, seed: int) -> List[str]:
    """The training stream's documents: a seeded `chat_fraction` of them as one chat turn, the rest plain text."""
    rng = random.Random(seed)
    out = []
    for topic, text in docs:
        if rng.random() < chat_fraction:
            ask = rng.choice(["Tell me something about {}.", "Say something about {}.", "A fortune about {}, please."])
            out.append(f"<|im_start|>user\n{ask.format(topic.replace('-', ' and '))}<|im_end|>\n"
                       f"<|im_start|>assistant\n{text}<|im_end|>\n")
        else:
            out.append(text + DOC_SEP)
    return out


def token_stream(tokenizer_dir: Path, texts: Sequence[str]):
    """The texts' token ids, concatenated, as one tensor."""
    import torch
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    ids: List[int] = []
    for enc in tok.encode_batch(list(texts)):
        ids += enc.ids
    return torch.tensor(ids, dtype=torch.long)


# -- the model (Qwen3-MoE, as SGLang's and transformers' Qwen3MoeForCausalLM compute it) -------------------------
def _modules():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self, dim: int, eps: float = 1e-6):
            super().__init__()
            self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

        def forward(self, x):
            h = x.float()
            return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

    class Attention(nn.Module):
        def __init__(self, p: ModelPreset):
            super().__init__()
            self.head_dim = p.head_dim
            self.q_proj = nn.Linear(p.hidden, p.heads * p.head_dim, bias=False)
            self.k_proj = nn.Linear(p.hidden, p.kv_heads * p.head_dim, bias=False)
            self.v_proj = nn.Linear(p.hidden, p.kv_heads * p.head_dim, bias=False)
            self.o_proj = nn.Linear(p.heads * p.head_dim, p.hidden, bias=False)
            self.q_norm, self.k_norm = RMSNorm(p.head_dim), RMSNorm(p.head_dim)

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            d = self.head_dim
            q = self.q_norm(self.q_proj(x).view(b, t, -1, d)).transpose(1, 2)
            k = self.k_norm(self.k_proj(x).view(b, t, -1, d)).transpose(1, 2)
            v = self.v_proj(x).view(b, t, -1, d).transpose(1, 2)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    class SparseMoE(nn.Module):
        """Softmax router, top-k, gates renormalised over the chosen experts (norm_topk_prob), SiLU experts.
        Expert weights are stacked [E, out, in]; the checkpoint stores them one expert at a time."""

        def __init__(self, p: ModelPreset):
            super().__init__()
            self.k, e, i, h = p.top_k, p.num_experts, p.expert_intermediate, p.hidden
            self.gate = nn.Linear(h, e, bias=False)
            self.gate_proj = nn.Parameter(torch.empty(e, i, h))
            self.up_proj = nn.Parameter(torch.empty(e, i, h))
            self.down_proj = nn.Parameter(torch.empty(e, h, i))

        def forward(self, x, capture: Optional[list] = None):
            shape = x.shape
            x = x.reshape(-1, shape[-1])
            logits = self.gate(x)
            probs = logits.float().softmax(-1)
            weights, ids = probs.topk(self.k, dim=-1)
            weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
            if capture is not None:
                capture.append((logits.detach(), ids.detach()))
            flat = ids.reshape(-1)
            order = flat.argsort(stable=True)
            counts = torch.bincount(flat, minlength=probs.shape[1])
            # unbind and split (not indexing) so that backward stacks and concatenates the gradients once
            # instead of materialising a full-size zero gradient per expert.
            groups = x[order // self.k].split(counts.tolist())
            outs = [F.silu(h @ wg.t()) * (h @ wu.t()) @ wd.t()
                    for h, wg, wu, wd in zip(groups, self.gate_proj.unbind(0), self.up_proj.unbind(0),
                                             self.down_proj.unbind(0)) if len(h)]
            y = torch.cat(outs) * weights.reshape(-1)[order].unsqueeze(1)
            out = torch.zeros_like(x).index_add_(0, order // self.k, y)
            # Switch/GShard load balancing: E * sum_e (share of assignments to e) * (mean router prob of e); 1.0
            # when balanced, E/k when every token goes to the same k experts.
            aux = probs.shape[1] * (counts.to(probs.dtype) / flat.numel() * probs.mean(0)).sum()
            return out.reshape(shape), aux

    class Layer(nn.Module):
        def __init__(self, p: ModelPreset):
            super().__init__()
            self.input_layernorm, self.post_attention_layernorm = RMSNorm(p.hidden), RMSNorm(p.hidden)
            self.self_attn, self.mlp = Attention(p), SparseMoE(p)

        def forward(self, x, cos, sin, capture=None):
            x = x + self.self_attn(self.input_layernorm(x), cos, sin)
            y, aux = self.mlp(self.post_attention_layernorm(x), capture)
            return x + y, aux

    class Qwen3MoeLM(nn.Module):
        def __init__(self, p: ModelPreset, rope_theta: float = 10000.0):
            super().__init__()
            self.p = p
            self.embed_tokens = nn.Embedding(p.vocab_size, p.hidden)
            self.layers = nn.ModuleList(Layer(p) for _ in range(p.num_layers))
            self.norm = RMSNorm(p.hidden)
            self.lm_head = nn.Linear(p.hidden, p.vocab_size, bias=False)
            inv_freq = 1.0 / rope_theta ** (torch.arange(0, p.head_dim, 2).float() / p.head_dim)
            self.register_buffer("inv_freq", inv_freq, persistent=False)

        def forward(self, ids, capture: Optional[list] = None):
            """Logits [batch, tokens, vocab] and the mean load-balancing loss over layers; `capture`, if given,
            receives each layer's (router logits, chosen expert ids) for the flattened tokens, in layer order."""
            pos = torch.arange(ids.shape[1], dtype=torch.float32)
            freqs = torch.outer(pos, self.inv_freq)
            emb = torch.cat([freqs, freqs], -1)
            cos, sin = emb.cos(), emb.sin()
            x = self.embed_tokens(ids)
            aux = 0.0
            for layer in self.layers:
                x, a = layer(x, cos, sin, capture)
                aux = aux + a
            return self.lm_head(self.norm(x)), aux / len(self.layers)

    return Qwen3MoeLM


def new_model(p: ModelPreset, seed: int):
    """A freshly initialised model: normal(0.02) weights, residual outputs scaled by 1/sqrt(2L), norms at 1."""
    import torch

    if p.architecture != "qwen3_moe":
        raise ValueError(f"training supports qwen3_moe presets, not {p.architecture!r}")
    torch.manual_seed(seed)
    model = _modules()(p)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                continue
            std = 0.02 / math.sqrt(2 * p.num_layers) if name.endswith(("o_proj.weight", "down_proj")) else 0.02
            param.normal_(0.0, std)
    return model


_STACKED = re.compile(r"layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)$")


def hf_state_dict(model) -> Dict[str, "object"]:
    """The model's tensors under the checkpoint names build.py writes (experts one at a time)."""
    out = {}
    for name, t in model.state_dict().items():
        m = _STACKED.match(name)
        if m:
            for e in range(t.shape[0]):
                out[f"model.layers.{m[1]}.mlp.experts.{e}.{m[2]}.weight"] = t[e]
        else:
            out[name if name.startswith("lm_head") else "model." + name] = t
    return out


def load_tensors(model, tensors: Dict[str, "object"]):
    """Load checkpoint-named tensors (as build.py and export name them) into `model`, computed in fp32."""
    import torch

    state = {}
    for name in model.state_dict():
        m = _STACKED.match(name)
        if m:
            state[name] = torch.stack([tensors[f"model.layers.{m[1]}.mlp.experts.{e}.{m[2]}.weight"]
                                       for e in range(model.p.num_experts)])
        else:
            state[name] = tensors[name if name.startswith("lm_head") else "model." + name]
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def load_model(path: Path):
    """The checkpoint at `path` (a trained or a random-weight qwen3_moe preset) as this module's model."""
    from safetensors.torch import load_file

    path = Path(path)
    p = ModelPreset(**json.loads((path / "sgl_layered_preset.json").read_text()))
    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return load_tensors(new_model(p, 0), tensors)


def random_weight_model(p: ModelPreset):
    """The model build.py would write for `p` without training (its seeded random weights, same dtype rounding)."""
    return load_tensors(new_model(p, 0), dict(_random_weights(p)))


# -- training ------------------------------------------------------------------------------------------------
def recipe_of(p: ModelPreset) -> dict:
    r = p.extra.get("train")
    if not r:
        raise ValueError(f"preset {p.name!r} has no training recipe (extra['train'])")
    if r.get("train_format") != TRAIN_FORMAT:
        raise ValueError(f"preset {p.name!r} was written for training format {r.get('train_format')}, "
                         f"this trainer is format {TRAIN_FORMAT}")
    return r


def lr_at(step: int, r: dict) -> float:
    """Linear warmup to r['lr'] over r['warmup'] steps, then cosine decay to r['min_lr'] at the last step."""
    if step < r["warmup"]:
        return r["lr"] * (step + 1) / r["warmup"]
    t = (step - r["warmup"]) / max(1, r["steps"] - r["warmup"] - 1)
    return r["min_lr"] + 0.5 * (r["lr"] - r["min_lr"]) * (1 + math.cos(math.pi * min(1.0, t)))


def evaluate(model, stream, seq_len: int, max_windows: int = 64) -> float:
    """Mean next-token loss over consecutive non-overlapping windows of `stream` (deterministic)."""
    import torch
    import torch.nn.functional as F

    n = min(max_windows, (len(stream) - 1) // seq_len)
    if n < 1:
        raise ValueError("held-out stream shorter than one window")
    losses = []
    with torch.no_grad():
        for i in range(0, n, 8):
            x = torch.stack([stream[j * seq_len:(j + 1) * seq_len + 1] for j in range(i, min(n, i + 8))])
            logits, _ = model(x[:, :-1])
            losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                          reduction="sum").item())
    return sum(losses) / (n * seq_len)


def train_model(p: ModelPreset, stream, steps: Optional[int] = None, log: Callable[[str], None] = print,
                log_every: int = 10):
    """Train a fresh model of `p` on token `stream` with the preset's recipe; returns (model, history)."""
    import torch
    import torch.nn.functional as F

    r = dict(recipe_of(p))
    if steps is not None:
        r["steps"] = steps
    model = new_model(p, p.seed).train()
    decay = [q for n, q in model.named_parameters() if q.dim() >= 2 and "embed" not in n]
    other = [q for n, q in model.named_parameters() if not (q.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                             {"params": other, "weight_decay": 0.0}], lr=r["lr"], betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(p.seed + 1)
    seq, batch = r["seq_len"], r["batch"]
    if len(stream) <= seq + 1:
        raise ValueError(f"training stream of {len(stream)} tokens is shorter than one window ({seq + 1})")
    history, t0, c0 = [], time.perf_counter(), time.process_time()
    for step in range(r["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, r)
        starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=gen).tolist()
        x = torch.stack([stream[s:s + seq + 1] for s in starts])
        logits, aux = model(x[:, :-1])
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss = ce + r["aux_coef"] * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["clip"])
        opt.step()
        history.append({"step": step + 1, "loss": round(ce.item(), 4), "aux": round(aux.item(), 4)})
        if log and ((step + 1) % log_every == 0 or step + 1 == r["steps"]):
            el = time.perf_counter() - t0
            recent = history[-log_every:]
            log(f"step {step + 1}/{r['steps']}  loss {sum(h['loss'] for h in recent) / len(recent):.3f}  "
                f"balance {sum(h['aux'] for h in recent) / len(recent):.3f}  lr {lr_at(step, r):.2e}  "
                f"{el / (step + 1):.2f} s/step  eta {el / (step + 1) * (r['steps'] - step - 1) / 60:.1f} min")
    timing = {"steps": r["steps"], "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    timing["s_per_step"] = timing["wall_s"] / max(1, r["steps"])
    return model.eval(), history, timing


def generate(model, tokenizer_dir: Path, prompt: str, max_new_tokens: int = 48, temperature: float = 0.0,
             seed: int = 0, stop: Sequence[str] = ("<|im_end|>", DOC_SEP)) -> str:
    """Continue `prompt` (greedy at temperature 0, else sampled with a seeded generator); no KV cache."""
    import torch
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    stop_ids = {tok.token_to_id(s) for s in stop}
    ids = tok.encode(prompt).ids
    gen = torch.Generator().manual_seed(seed)
    out: List[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(torch.tensor([ids + out]))
            last = logits[0, -1].float()
            nxt = int(last.argmax()) if temperature <= 0 else int(
                torch.multinomial((last / temperature).softmax(-1), 1, generator=gen))
            if nxt in stop_ids:
                break
            out.append(nxt)
    return tok.decode(out)


def chat_prompt(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def heldout_ids(tokenizer_dir: Path, root: Path = FORTUNES_DIR) -> List[int]:
    """The held-out fortunes (never trained on), each ended by <|endoftext|>, as one token-id list: text the trained
    checkpoint's router sees as in-distribution, for benchmark prompts and routing measurements."""
    _, held = split(fortunes(root))
    return token_stream(tokenizer_dir, [t + DOC_SEP for _, t in held]).tolist()


def train(name: str = "trained-qwen3-moe", preset: Optional[ModelPreset] = None, docs: Optional[Sequence[Doc]] = None,
          steps: Optional[int] = None, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Train preset `name` (or `preset`) on `docs` (default: the installed fortunes) and publish it in the cache.

    A finished training is reused unless `force`. `steps` overrides the recipe's step count (development runs);
    such a checkpoint is written to a separate cache entry (the recipe it records is the one that ran)."""
    import torch

    log = log or (lambda line: None)
    p = preset or get_preset(name)
    r = dict(recipe_of(p))
    if steps is not None and steps != r["steps"]:
        r["steps"] = steps
        p = replace(p, extra={**p.extra, "train": r})
    final = model_dir(p)
    if (final / "BUILD_OK").exists() and not force:
        log(f"{p.name}: already trained at {final}")
        return final
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    all_docs = list(docs) if docs is not None else fortunes()
    train_docs, held_docs = split(all_docs)
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        train_tokenizer(p.vocab_size, p.seed, tmp, corpus=[t for _, t in train_docs])
        write_config(p, tmp)
        stream = token_stream(tmp, training_texts(train_docs, r["chat_fraction"], p.seed))
        held = token_stream(tmp, [t + DOC_SEP for _, t in held_docs])
        log(f"{p.name}: {len(all_docs)} documents ({len(train_docs)} training, {len(held_docs)} held out), "
            f"{len(stream)} training tokens, {len(held)} held-out tokens; {r['steps']} steps of "
            f"{r['batch']} x {r['seq_len']} tokens on {torch.get_num_threads()} threads")
        model, history, timing = train_model(p, stream, log=log)
        # Export in the preset's dtype and measure what is served: the checkpoint, read back.
        tensors = {k: v.detach().to(getattr(torch, p.dtype)).contiguous() for k, v in hf_state_dict(model).items()}
        save_weights(tensors.items(), tmp)
        served = load_tensors(new_model(p, 0), tensors)
        val = evaluate(served, held, r["seq_len"])
        sample = generate(served, tmp, chat_prompt("Tell me something about computers."), 48)
        record = {
            "preset": asdict(p), "recipe": r, "corpus": corpus_manifest(all_docs) if docs is None else
            {"documents": len(all_docs), "chars": sum(len(t) for _, t in all_docs), "source": "given"},
            "train_tokens": len(stream), "heldout_tokens": len(held),
            "epochs": r["steps"] * r["batch"] * r["seq_len"] / len(stream),
            "final_train_loss": sum(h["loss"] for h in history[-20:]) / len(history[-20:]),
            "heldout_loss": val, "heldout_perplexity": math.exp(val), "timing": timing,
            "total_wall_s": time.perf_counter() - t_start, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "torch": torch.__version__, "sample": {"prompt": "Tell me something about computers.", "greedy": sample},
            "history": history,
        }
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        log(f"held-out loss {val:.3f} (perplexity {math.exp(val):.1f}); train loss (last 20 steps) "
            f"{record['final_train_loss']:.3f}; {timing['wall_s'] / 60:.1f} min of training "
            f"({timing['s_per_step']:.2f} s/step, {timing['cpu_s'] / 60:.1f} CPU-min)")
        log(f"sample: {sample!r}")
        return publish(p, tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- routing coverage ----------------------------------------------------------------------------------------
def routing_ids(model, stream, window: int) -> Tuple[list, list]:
    """Per layer: router logits [W*window, E] and chosen ids [W, window, k] of the held-out `stream` cut into W
    windows of `window` tokens, each run as its own sequence (as a prompt of that length would be)."""
    import torch

    w = len(stream) // window
    if w < 1:
        raise ValueError(f"held-out stream of {len(stream)} tokens is shorter than one window of {window}")
    logits = [[] for _ in model.layers]
    ids = [[] for _ in model.layers]
    with torch.no_grad():
        for i in range(w):
            cap: list = []
            model(stream[i * window:(i + 1) * window].unsqueeze(0), capture=cap)
            for layer, (lg, ch) in enumerate(cap):
                logits[layer].append(lg.float())
                ids[layer].append(ch)
    return [torch.cat(x) for x in logits], [torch.stack(x) for x in ids]


def _distinct(ids, num_experts: int):
    """ids [..., n, k] -> distinct experts per leading index."""
    import torch

    flat = ids.reshape(-1, ids.shape[-2] * ids.shape[-1])
    hit = torch.zeros(flat.shape[0], num_experts, dtype=torch.bool)
    hit.scatter_(1, flat.long(), True)
    return hit.sum(1).float()


def coverage_tables(ids_per_layer, num_experts: int, sizes: Sequence[int], trials: int = 64, seed: int = 0) -> dict:
    """U(n) (mean over layers of the expected distinct experts per layer) two ways:
      consecutive: n consecutive tokens of one window (one prompt's n tokens; n must divide the window);
      scattered:   n tokens drawn without replacement from all windows (n independent requests' tokens)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    consecutive, scattered, per_layer = {}, {}, {}
    for n in sizes:
        cons, scat = [], []
        for ids in ids_per_layer:  # [W, window, k]
            w, window, k = ids.shape
            if window % n == 0:
                cons.append(_distinct(ids.reshape(w * window // n, n, k), num_experts).mean().item())
            pool = ids.reshape(-1, k)
            picks = torch.stack([torch.randperm(len(pool), generator=gen)[:n] for _ in range(trials)])
            scat.append(_distinct(pool[picks], num_experts).mean().item())
        if cons:
            consecutive[n] = sum(cons) / len(cons)
            per_layer[n] = cons
        scattered[n] = sum(scat) / len(scat)
    return {"consecutive": consecutive, "scattered": scattered, "consecutive_per_layer": per_layer}


def load_balance(ids_per_layer, num_experts: int) -> List[dict]:
    """Per layer: the busiest and idlest experts' share of assignments (uniform: 1/E) and the normalised entropy."""
    import torch

    out = []
    for ids in ids_per_layer:
        share = torch.bincount(ids.reshape(-1).long(), minlength=num_experts).float()
        share /= share.sum()
        nz = share[share > 0]
        out.append({"max_share": round(share.max().item(), 4), "min_share": round(share.min().item(), 4),
                    "entropy_ratio": round((-(nz * nz.log()).sum() / math.log(num_experts)).item(), 4)})
    return out


def coverage_report(path: Path, sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                    window: int = 512, max_windows: int = 64, alpha: Optional[float] = None) -> dict:
    """U(n) on held-out fortunes through the checkpoint's trained router, beside the calibrated Zipf routing
    (SGLang's --layered-prefill-routing calibrated, applied to the same router logits; and the cost model's
    analytic curve) and beside build.py's random-weight router of the same shape."""
    import torch

    from ..adapter.experts import CalibratedRouting
    from ..core.config import LayeredConfig
    from ..core.roofline import coverage as analytic_coverage

    path = Path(path)
    if alpha is None:
        alpha = LayeredConfig().layered_prefill_routing_alpha
    model = load_model(path)
    p = model.p
    _, held_docs = split(fortunes())
    held = token_stream(path, [t + DOC_SEP for _, t in held_docs])[:window * max_windows]
    logits, trained_ids = routing_ids(model, held, window)
    calibrated = CalibratedRouting(alpha)
    w = trained_ids[0].shape[0]
    calibrated_ids = [calibrated.choose(layer, lg, p.top_k).reshape(w, window, p.top_k)
                      for layer, lg in enumerate(logits)]
    _, random_ids = routing_ids(random_weight_model(replace(p, extra={})), held, window)
    training = json.loads((path / "training.json").read_text()) if (path / "training.json").exists() else {}
    return {
        "model": p.name, "path": str(path), "experts": p.num_experts, "top_k": p.top_k, "layers": p.num_layers,
        "heldout_tokens": len(held), "window": window, "windows": w, "calibrated_alpha": alpha,
        "recipe": p.extra.get("train"), "heldout_loss": training.get("heldout_loss"),
        "corpus": training.get("corpus"),
        "U": {
            "trained": coverage_tables(trained_ids, p.num_experts, sizes),
            "calibrated": coverage_tables(calibrated_ids, p.num_experts, sizes),
            "calibrated_analytic": {n: analytic_coverage(p.num_experts, p.top_k, alpha, n) for n in sizes},
            "random_weights": coverage_tables(random_ids, p.num_experts, sizes),
        },
        "load_balance": {"trained": load_balance(trained_ids, p.num_experts),
                         "calibrated": load_balance(calibrated_ids, p.num_experts),
                         "random_weights": load_balance(random_ids, p.num_experts)},
        "torch_threads": torch.get_num_threads(),
    }
