"""Loading and saving model checkpoints the way every stage needs them (full weights or a LoRA adapter)."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

ADAPTER_FILE = "adapter_config.json"
BASE_REF_FILE = "base_ref.json"  # written beside a LoRA adapter: which full checkpoint it applies to

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def is_adapter(path: Path) -> bool:
    return (Path(path) / ADAPTER_FILE).exists()


@contextlib.contextmanager
def whole_model_init():
    """Build models whole in this process even while a DeepSpeed ZeRO-3 engine is live.

    Once accelerate has prepared a ZeRO-3 engine, transformers sees ZeRO-3 as enabled and builds every
    later model under ``deepspeed.zero.Init``, which partitions it with collectives that all processes
    must join. Models the stages load outside the trained engine (the RM built from a chat model, a
    saved RM scored by the main process alone, a policy to sample from) must be whole: this suspends
    that detection while they load. The trained model is sharded when the trainer prepares it (the
    accelerate configs set ``zero3_init_flag: false``).
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # transformers without the DeepSpeed integration
        yield
        return
    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    if saved is None:
        yield
        return
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def load_causal_lm(path: Path, registry: Any = None, dtype: str = "float32", merge: bool = True):
    """A causal LM from a checkpoint directory; a LoRA adapter is applied on its recorded base."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not is_adapter(path):
        with whole_model_init():
            return AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    from peft import PeftModel

    base_ref = json.loads((path / BASE_REF_FILE).read_text())
    if registry is not None:
        base_path = registry.resolve(base_ref["ref"]).path
    else:  # the adapter sits at runs/<recipe>/<stage>/vN; its base path is stored relative to it
        base_path = (path / base_ref["relpath"]).resolve()
    base = load_causal_lm(base_path, registry, dtype)
    model = PeftModel.from_pretrained(base, str(path))
    return model.merge_and_unload() if merge else model


def save_model(model: Any, tokenizer: Any, out_dir: Path, base_version: Any = None) -> None:
    """Weights (safetensors) + tokenizer; a LoRA model saves its adapter and a reference to its base."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    if is_adapter(out_dir) and base_version is not None:
        (out_dir / BASE_REF_FILE).write_text(json.dumps(
            {"ref": base_version.ref, "id": base_version.id, "content_hash": base_version.content_hash,
             "relpath": os.path.relpath(base_version.path, out_dir)}, indent=2))
