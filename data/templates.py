"""Chat rendering and tokenization with loss masks: which tokens of a conversation the model is trained on.

Two templates: "model" (the tokenizer's own chat template, any HF model) and "llama2" (the released
Llama 2-Chat format). Labels follow the HF convention: they equal input_ids where trained, -100
elsewhere, and the model shifts them internally (label[t] is predicted from token t-1).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, NamedTuple

from data.records import Conversation, validate_messages

IGNORE_INDEX = -100
TEMPLATES = ("model", "llama2")
TRAIN_ON = ("all_assistant", "last_assistant")

Messages = list[dict[str, str]]
Span = tuple[int, int]  # [start, end) character offsets into the rendered text

# The released Llama 2-Chat markers (Meta's generation.py).
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


class TemplateError(ValueError):
    """A conversation the template cannot render, or a chat template that cannot give loss masks."""


class Prompt(NamedTuple):
    """A rendered generation prompt: the text and its token ids (special tokens included in the text)."""

    text: str
    input_ids: list[int]


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")


def _apply_model_template(tokenizer: Any, messages: Messages, add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(f"tokenizer {tokenizer.name_or_path!r} has no chat_template; "
                            "use template='llama2' or set tokenizer.chat_template")
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja raises its own errors (raise_exception in templates, undefined names)
        raise TemplateError(f"the chat template of {tokenizer.name_or_path!r} failed on {len(messages)} "
                            f"messages: {type(e).__name__}: {e}") from e
    if not isinstance(text, str):
        raise TemplateError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
    return text


def with_default_system(chat_template: str, system_prompt: str) -> str:
    """``chat_template`` rendering every conversation that has no system message as if it began with
    ``system_prompt``: the template's own default system text (SmolLM2's is ~20 tokens on every sequence)
    never appears. Works for any template that accepts a system message."""
    content = json.dumps(system_prompt)  # a JSON string is a valid Jinja string literal
    return ("{%- if not messages or messages[0]['role'] != 'system' %}"
            f"{{%- set messages = [{{'role': 'system', 'content': {content}}}] + messages %}}{{%- endif %}}"
            + chat_template)


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _require_prefix(prefix: str, text: str, what: str, tokenizer: Any) -> None:
    if not text.startswith(prefix):
        at = _first_difference(prefix, text)
        raise TemplateError(
            f"the chat template of {tokenizer.name_or_path!r} is not prefix-stable: {what} (they differ at "
            f"char {at}: {prefix[at:at + 30]!r} vs {text[at:at + 30]!r}). Loss masks are found by rendering "
            "prefixes, so earlier turns must render the same whatever follows (templates that drop reasoning "
            "from past turns break this); use template='llama2' or a prefix-stable chat template")


def _render_model(tokenizer: Any, messages: Messages) -> tuple[str, list[Span]]:
    """Render with the tokenizer's template; the span of assistant turn i is what messages[:i+1] adds to
    messages[:i] rendered with a generation prompt, so it ends with the template's end-of-turn text."""
    full = _apply_model_template(tokenizer, messages, add_generation_prompt=False)
    spans: list[Span] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _apply_model_template(tokenizer, messages[:i], add_generation_prompt=True)
        through = _apply_model_template(tokenizer, messages[:i + 1], add_generation_prompt=False)
        _require_prefix(before, through, f"messages[:{i}] with the generation prompt is not a prefix of "
                                         f"messages[:{i + 1}]", tokenizer)
        _require_prefix(through, full, f"messages[:{i + 1}] is not a prefix of the whole conversation", tokenizer)
        spans.append((len(before), len(through)))
    return full, spans


def _special_token(tokenizer: Any, name: str) -> str:
    token = getattr(tokenizer, name, None)
    if not token:
        raise TemplateError(f"template 'llama2' needs tokenizer.{name}, which {tokenizer.name_or_path!r} lacks")
    return str(token)


def _render_llama2(tokenizer: Any, messages: Messages) -> tuple[str, list[Span]]:
    """`<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s>` then
    `<s>[INST] {user} [/INST] {assistant} </s>` per later turn, as Meta's generation.py builds it
    (contents stripped as there); a final user turn renders as the generation prompt `<s>[INST] {user} [/INST]`."""
    bos, eos = _special_token(tokenizer, "bos_token"), _special_token(tokenizer, "eos_token")
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise TemplateError(f"template 'llama2': message {i + (system is not None)} has role "
                                f"{message['role']!r}, expected {expected!r} (an optional system message, then "
                                "user and assistant turns alternating, starting with user)")
    if not turns:
        raise TemplateError("template 'llama2': expected at least one user turn")
    text, spans = "", []
    for i in range(0, len(turns), 2):
        user = turns[i]["content"]
        if i == 0 and system is not None:
            user = B_SYS + system + E_SYS + user
        text += f"{bos}{B_INST} {user.strip()} {E_INST}"
        if i + 1 < len(turns):
            text += " "
            start = len(text)
            text += f"{turns[i + 1]['content'].strip()} {eos}"
            spans.append((start, len(text)))
    return text, spans


def render(tokenizer: Any, messages: Messages, template: str = "model") -> tuple[str, list[Span]]:
    """The conversation as text, and the character span of every assistant turn (reply + end of turn)."""
    _check_choice("template", template, TEMPLATES)
    messages = validate_messages(messages, "render", None)
    return _render_model(tokenizer, messages) if template == "model" else _render_llama2(tokenizer, messages)


def _trained_tokens(offsets: list[Span], spans: list[Span]) -> list[bool]:
    """A token is trained if its characters overlap a trained span (byte tokens of one char share offsets)."""
    return [any((s < b and e > a) or (s == e and a <= s < b) for a, b in spans) for s, e in offsets]


def _tokenize_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[Span]]:
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError(f"tokenizer {tokenizer.name_or_path!r} is not a fast tokenizer; loss masks need "
                            "its offset mapping (load it with use_fast=True)")
    # The rendered text already holds bos/eos where the template wants them.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]


def count_targets(labels: list[int]) -> int:
    """Tokens that contribute to the loss: label 0 never does, as nothing precedes it to predict it."""
    return sum(label != IGNORE_INDEX for label in labels[1:])


def encode_conversation(tokenizer: Any, messages: Messages, template: str = "model",
                        train_on: str = "all_assistant", max_length: int | None = None) -> dict[str, Any]:
    """Tokenize a conversation; return ``{"input_ids", "labels", "truncated"}``.

    ``labels`` is -100 on every token outside the trained assistant turns (all of them, or only the
    last). Longer than ``max_length``, the example keeps its first ``max_length`` tokens and
    ``truncated`` is True; the caller must check count_targets(labels) (encode_conversations does),
    as truncation can leave nothing to train on.
    """
    _check_choice("train_on", train_on, TRAIN_ON)
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length: expected a positive integer or None, got {max_length!r}")
    text, spans = render(tokenizer, messages, template)
    if train_on == "last_assistant":
        spans = spans[-1:]
    input_ids, offsets = _tokenize_with_offsets(tokenizer, text)
    labels = [tok if trained else IGNORE_INDEX
              for tok, trained in zip(input_ids, _trained_tokens(offsets, spans))]
    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels, "truncated": truncated}


def render_prompt(tokenizer: Any, messages: Messages, template: str = "model") -> Prompt:
    """The generation prompt for a conversation ending with a user turn (stages 3-6 sample from it)."""
    _check_choice("template", template, TEMPLATES)
    messages = validate_messages(messages, "render_prompt", None, last_role="user")
    if template == "model":
        text = _apply_model_template(tokenizer, messages, add_generation_prompt=True)
    else:
        text, _ = _render_llama2(tokenizer, messages)
    return Prompt(text, list(tokenizer(text, add_special_tokens=False)["input_ids"]))


@dataclass
class EncodeReport:
    """What encode_conversations did, for logs and the stage manifest."""

    total: int = 0
    kept: int = 0
    truncated: int = 0
    untrainable: list[int] = field(default_factory=list)  # input indices with no target token, dropped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_conversations(tokenizer: Any, conversations: Iterable[Conversation | Messages], template: str = "model",
                         train_on: str = "all_assistant", max_length: int | None = None,
                         on_untrainable: str = "skip") -> tuple[list[dict[str, Any]], EncodeReport]:
    """Encode many conversations; those with no target token left (after truncation, or with no assistant
    turn) are dropped and listed in the report, or raise with ``on_untrainable="error"``."""
    _check_choice("on_untrainable", on_untrainable, ("skip", "error"))
    examples, report = [], EncodeReport()
    for index, conversation in enumerate(conversations):
        messages = conversation.messages if isinstance(conversation, Conversation) else conversation
        example = encode_conversation(tokenizer, messages, template, train_on, max_length)
        report.total += 1
        report.truncated += example["truncated"]
        if count_targets(example["labels"]) == 0:
            if on_untrainable == "error":
                raise TemplateError(f"conversation {index} has no token to train on after encoding "
                                    f"(truncated={example['truncated']}, max_length={max_length}); "
                                    "raise max_length or drop it")
            report.untrainable.append(index)
            continue
        examples.append(example)
        report.kept += 1
    return examples, report
