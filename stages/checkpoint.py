"""Loading and saving registry checkpoints the way every stage needs them (full weights or a LoRA adapter
that names the version it applies to)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.runtime import phase, whole_model_init

ADAPTER_FILE = "adapter_config.json"
BASE_REF_FILE = "base_ref.json"  # written beside a LoRA adapter: which full checkpoint it applies to

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def is_adapter(path: Path) -> bool:
    return (Path(path) / ADAPTER_FILE).exists()


def load_tokenizer(path: Path):
    return AutoTokenizer.from_pretrained(str(path))


def load_causal_lm(path: Path, registry: Any = None, dtype: str = "float32", merge: bool = True):
    """A causal LM from a checkpoint directory; a LoRA adapter is applied on its recorded base."""
    path = Path(path)
    if not is_adapter(path):
        with whole_model_init():
            return AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    base_ref = json.loads((path / BASE_REF_FILE).read_text())
    if registry is not None:
        base_path = registry.resolve(base_ref["ref"]).path
    else:  # the adapter sits at runs/<recipe>/<stage>/vN; its base path is stored relative to it
        base_path = (path / base_ref["relpath"]).resolve()
    base = load_causal_lm(base_path, registry, dtype)
    model = PeftModel.from_pretrained(base, str(path))
    return model.merge_and_unload() if merge else model


@phase("saving")
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
