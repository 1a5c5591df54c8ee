"""Train a small Qwen3-MoE on real English text, so that its routing comes from a trained router.

Random-weight MoE models route degenerately (DESIGN.md section 3), and the calibrated Zipf routing only imitates
a trained router's coverage. This module trains one instead, on this machine's CPU, in plain torch:

  * corpus: the fortune-cookie files of Debian's `fortunes` package (and `fortunes-min`, which it pulls in):
    about 2.6 MB of English quotations, jokes, definitions and verse. `apt-get install -y fortunes` installs it;
    nothing is downloaded when training. Every 20th fortune is held out (coverage and validation loss).
  * tokenizer: a byte-level BPE over printable ASCII + newline trained on the training fortunes, with the same
    alphabet, chat markers and template as the random-weight presets (every token decodes to visible text).
  * model: the Qwen3-MoE layers written here (RMSNorm, q/k norm, rotary, GQA, softmax top-k router with
    renormalised gates, SiLU experts), trained with next-token loss plus the Switch/GShard load-balancing loss.
  * output: the checkpoint layout of `build.py` (same config keys, tensor names and shapes), so SGLang and
    transformers load it as they load the random-weight presets; cached under the preset's `model_dir`.

`python -m sgl_layered.models train trained-qwen3-moe` trains the preset (about 13 minutes on 2 cores) and prints
its directory; `python -m sgl_layered.models coverage trained-qwen3-moe` measures its routing coverage U(n).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import unicodedata
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .build import hf_config, model_dir, _weight_names
from .presets import ModelPreset, get_preset
from .tokenizer import CHAT_TEMPLATE, CHAT_TOKENS, EOS_TOKEN, _ALPHABET_BYTES, _byte_level_char

FORTUNES_DIR = Path("/usr/share/games/fortunes")
CORPUS_PACKAGES = ("fortunes", "fortunes-min")  # Debian; fortunes-min comes in through fortune-mod
CORPUS_INSTALL = "apt-get install -y fortunes"
SKIP_FILES = {"ascii-art"}  # pictures, not prose
HELDOUT_EVERY = 20
DOC_SEP = "<|endoftext|>"

# The training recipe a trained preset carries in `extra` (so the cache path changes when the recipe does).
DEFAULT_RECIPE = {"corpus": "debian:fortunes", "steps": 520, "batch": 16, "seq_len": 256, "lr": 3e-3,
                  "min_lr": 3e-4, "warmup": 30, "weight_decay": 0.1, "aux_coef": 0.01, "clip": 1.0,
                  "train_format": 1}


# -- corpus --------------------------------------------------------------------------------------------------
def clean_text(text: str) -> str:
    """Printable ASCII and newlines only: overstrikes undone, accents folded, runs of blanks collapsed."""
    text = re.sub(r".\x08", "", text)  # "_\bW" (underline/bold by overstrike) -> "W"
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    lines = [re.sub(r"[^\x20-\x7e]+", " ", line) for line in text.split("\n")]
    lines = [re.sub(r" {2,}", " ", line).strip() for line in lines]
    return "\n".join(lines).strip()


def fortunes(root: Path = FORTUNES_DIR) -> List[str]:
    """Every fortune of the installed cookie files, cleaned, in file-name order."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: the training corpus is Debian's `fortunes` package "
                                f"(`{CORPUS_INSTALL}`), or pass a directory of text files")
    docs = []
    for f in sorted(root.iterdir()):
        if f.is_symlink() or not f.is_file() or "." in f.name or f.name in SKIP_FILES:
            continue  # *.dat are strfile indexes, *.u8 links to the same files
        raw = f.read_bytes().decode("utf-8", errors="replace")
        docs += [d for d in (clean_text(part) for part in re.split(r"\n%\n", raw)) if len(d) > 1]
    if not docs:
        raise FileNotFoundError(f"no fortunes found under {root}")
    return docs


def split(docs: Sequence[str]) -> tuple:
    """(training documents, held-out documents): every HELDOUT_EVERY-th document is held out."""
    return ([d for i, d in enumerate(docs) if i % HELDOUT_EVERY],
            [d for i, d in enumerate(docs) if i % HELDOUT_EVERY == 0])


def corpus_manifest(root: Path, docs: Sequence[str]) -> dict:
    import hashlib

    versions = {}
    for pkg in CORPUS_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
        versions[pkg] = r.stdout.strip() if r.returncode == 0 else None
    text = "\n".join(docs)
    return {"root": str(root), "debian_packages": versions, "documents": len(docs), "chars": len(text),
            "sha256": hashlib.sha256(text.encode()).hexdigest(), "install": CORPUS_INSTALL,
            "license": "fortune-mod: BSD (University of California); the cookie files are collected quotations "
                       "distributed with it (see /usr/share/doc/fortunes/copyright)"}


def train_tokenizer_on(texts: Sequence[str], vocab_size: int, out_dir: Path) -> None:
    """tokenizer.train_tokenizer's byte-level BPE (same alphabet, chat markers, template), trained on `texts`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    alphabet = [_byte_level_char(b) for b in _ALPHABET_BYTES]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(CHAT_TOKENS), initial_alphabet=alphabet,
                                  limit_alphabet=len(alphabet), show_progress=False, special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in CHAT_TOKENS])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"trained vocabulary has {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "pad_token": "<|endoftext|>",
              "bos_token": None, "unk_token": None, "model_max_length": 1 << 20,
              "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def token_stream(tokenizer_dir: Path, docs: Sequence[str]):
    """All documents as one id stream, each followed by <|endoftext|>."""
    import torch
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    sep = tok.token_to_id(DOC_SEP)
    ids: List[int] = []
    for enc in tok.encode_batch(list(docs)):
        ids += enc.ids + [sep]
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
            self.p = p
            self.q_proj = nn.Linear(p.hidden, p.heads * p.head_dim, bias=False)
            self.k_proj = nn.Linear(p.hidden, p.kv_heads * p.head_dim, bias=False)
            self.v_proj = nn.Linear(p.hidden, p.kv_heads * p.head_dim, bias=False)
            self.o_proj = nn.Linear(p.heads * p.head_dim, p.hidden, bias=False)
            self.q_norm, self.k_norm = RMSNorm(p.head_dim), RMSNorm(p.head_dim)

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            d = self.p.head_dim
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
            rows = x[order // self.k]
            outs, start = [], 0
            for e, n in enumerate(counts.tolist()):
                if n:
                    h = rows[start:start + n]
                    g = F.silu(h @ self.gate_proj[e].t()) * (h @ self.up_proj[e].t())
                    outs.append(g @ self.down_proj[e].t())
                    start += n
            y = torch.cat(outs) * weights.reshape(-1)[order].unsqueeze(1)
            out = torch.zeros_like(x).index_add_(0, order // self.k, y)
            # Switch/GShard load balancing: E * sum_e (share of assignments to e) * (mean router prob of e); 1.0
            # when balanced.
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
            self.register_buffer("inv_freq", 1.0 / rope_theta ** (torch.arange(0, p.head_dim, 2).float() / p.head_dim),
                                 persistent=False)

        def forward(self, ids, capture: Optional[list] = None):
            pos = torch.arange(ids.shape[1], dtype=torch.float32)
            freqs = torch.outer(pos, self.inv_freq)
            cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
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


def hf_state_dict(model) -> Dict[str, "object"]:
    """The model's tensors under the checkpoint names build.py writes (experts one at a time)."""
    out = {}
    for name, t in model.state_dict().items():
        m = re.match(r"layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)$", name)
        if m:
            for e in range(t.shape[0]):
                out[f"model.layers.{m[1]}.mlp.experts.{e}.{m[2]}.weight"] = t[e]
        else:
            out[name if name.startswith("lm_head") else "model." + name] = t
    return out


def load_model(path: Path):
    """A model of the saved preset with the checkpoint's weights (as stored, computed in fp32)."""
    import torch
    from safetensors.torch import load_file

    p = ModelPreset(**json.loads((path / "sgl_layered_preset.json").read_text()))
    model = new_model(p, 0)
    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    state = {}
    for name in model.state_dict():
        m = re.match(r"layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)$", name)
        if m:
            state[name] = torch.stack([tensors[f"model.layers.{m[1]}.mlp.experts.{e}.{m[2]}.weight"]
                                       for e in range(p.num_experts)])
        else:
            state[name] = tensors[name if name.startswith("lm_head") else "model." + name]
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()
