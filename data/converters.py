"""Pure functions turning one raw data row (a dict) into a Conversation or a Preference.

Every converter takes ``(row, source, line)`` and raises DataError naming the source, the line and
the field when the row is malformed, so a loader can report exactly which row of which file is bad.
Columns a converter does not know are kept in ``meta`` (ids, sources, categories survive a round trip).
A preference converter returns None for a row it filters out by rule (a PandaLM tie, an UltraFeedback
pair with no score gap, an HH pair whose dialogues fork early): such a row holds no usable comparison.
docs/DATA.md lists the formats and their rules.
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Any, Callable, Literal

from data.records import RATINGS, Conversation, DataError, Preference, validate_messages

Row = dict[str, Any]

# Keys each format consumes; the rest of a row goes to meta.
_CONVERSATION_KEYS = {"messages", "meta"}
_PROMPT_COMPLETION_KEYS = {"prompt", "completion", "meta"}
_PREFERENCE_KEYS = {"prompt", "chosen", "rejected", "rating", "margin", "chosen_safe", "rejected_safe", "meta"}

# HH-RLHF marks turns with "\n\nHuman:" / "\n\nAssistant:"; the first turn may lack the blank line.
_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _meta(row: Row, consumed: set[str], source: str, line: int | None) -> dict[str, Any]:
    meta = row.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise DataError(source, line, "meta", f"expected an object, got {type(meta).__name__}")
    extra = {k: v for k, v in row.items() if k not in consumed and k not in meta}
    return {**meta, **extra}


def _require(row: Row, key: str, source: str, line: int | None) -> Any:
    if key not in row or row[key] is None:
        raise DataError(source, line, key, "missing; this row's format needs it")
    return row[key]


def _as_messages(value: Any, default_role: str, source: str, line: int | None, field_name: str,
                 last_role: str | None = None) -> list[dict[str, str]]:
    """A plain string is one message of ``default_role`` (TRL's standard, non-chat format)."""
    if isinstance(value, str):
        value = [{"role": default_role, "content": value}]
    return validate_messages(value, source, line, field_name, last_role=last_role)


def _as_reply(value: Any, prompt: list[dict[str, str]], source: str, line: int | None, field_name: str) -> str:
    """A chosen/rejected reply: a string, or a list holding one assistant message, after the prompt
    turns when the list repeats them (as some datasets, e.g. UltraFeedback, store it)."""
    if isinstance(value, str):
        return value
    messages = validate_messages(value, source, line, field_name, last_role="assistant")
    if len(messages) > len(prompt) and messages[:len(prompt)] == prompt:
        messages = messages[len(prompt):]
    if len(messages) != 1:
        raise DataError(source, line, field_name,
                        f"expected a string or exactly one assistant message, got {len(messages)} messages")
    return messages[0]["content"]


def parse_hh_text(text: Any, source: str = "<row>", line: int | None = None,
                  field_name: str = "text") -> list[dict[str, str]]:
    """Parse HH-RLHF text ("\\n\\nHuman: ...\\n\\nAssistant: ...") into a message list."""
    if not isinstance(text, str):
        raise DataError(source, line, field_name, f"expected HH-RLHF text (a string), got {type(text).__name__}")
    parts = _HH_MARKER.split(text)
    # re.split with one group gives [before, role, content, role, content, ...].
    if parts[0].strip():
        raise DataError(source, line, field_name,
                        f"expected the text to start with 'Human:' or 'Assistant:', found {parts[0][:40]!r}")
    if len(parts) < 3:
        raise DataError(source, line, field_name, "expected HH-RLHF turns marked '\\n\\nHuman:' / '\\n\\nAssistant:'")
    messages = [{"role": _HH_ROLES[role], "content": content.strip()}
                for role, content in zip(parts[1::2], parts[2::2])]
    if not any(m["role"] == "user" for m in messages) or not any(m["role"] == "assistant" for m in messages):
        raise DataError(source, line, field_name, "expected at least one Human turn and one Assistant turn")
    return messages


def messages_to_conversation(row: Row, source: str = "<row>", line: int | None = None) -> Conversation:
    """TRL conversational ``{"messages": [...]}``, and our own Conversation.to_dict()."""
    messages = validate_messages(_require(row, "messages", source, line), source, line, "messages")
    return Conversation(messages=messages, meta=_meta(row, _CONVERSATION_KEYS, source, line))


def prompt_completion_to_conversation(row: Row, source: str = "<row>", line: int | None = None) -> Conversation:
    """TRL prompt/completion; plain strings become one user and one assistant message."""
    prompt = _as_messages(_require(row, "prompt", source, line), "user", source, line, "prompt")
    completion = _as_messages(_require(row, "completion", source, line), "assistant", source, line,
                              "completion", last_role="assistant")
    return Conversation(messages=prompt + completion, meta=_meta(row, _PROMPT_COMPLETION_KEYS, source, line))


def prompt_to_conversation(row: Row, source: str = "<row>", line: int | None = None) -> Conversation:
    """TRL prompt-only rows (prompts for generation in stages 3-6): the result ends with a user turn."""
    prompt = _as_messages(_require(row, "prompt", source, line), "user", source, line, "prompt", last_role="user")
    return Conversation(messages=prompt, meta=_meta(row, _PROMPT_COMPLETION_KEYS, source, line))


def _optional_fields(row: Row, source: str, line: int | None) -> dict[str, Any]:
    rating = row.get("rating")
    if rating is not None and rating not in RATINGS:
        raise DataError(source, line, "rating", f"expected one of {RATINGS} or null, got {rating!r}")
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not _finite(margin)):  # one NaN margin turns every weight of an RM to NaN
        raise DataError(source, line, "margin", f"expected a finite number or null, got {margin!r}")
    for key in ("chosen_safe", "rejected_safe"):
        if row.get(key) is not None and not isinstance(row[key], bool):
            raise DataError(source, line, key, f"expected true, false or null, got {row[key]!r}")
    return {"rating": rating, "margin": None if margin is None else float(margin),
            "chosen_safe": row.get("chosen_safe"), "rejected_safe": row.get("rejected_safe")}


def prompt_chosen_rejected_to_preference(row: Row, source: str = "<row>", line: int | None = None) -> Preference:
    """TRL explicit-prompt preference rows, and our own Preference.to_dict()."""
    prompt = _as_messages(_require(row, "prompt", source, line), "user", source, line, "prompt", last_role="user")
    return Preference(prompt=prompt,
                      chosen=_as_reply(_require(row, "chosen", source, line), prompt, source, line, "chosen"),
                      rejected=_as_reply(_require(row, "rejected", source, line), prompt, source, line, "rejected"),
                      **_optional_fields(row, source, line), meta=_meta(row, _PREFERENCE_KEYS, source, line))


def _split_shared_prompt(chosen: list[dict[str, str]], rejected: list[dict[str, str]], row: Row,
                         source: str, line: int | None) -> Preference:
    """Shared turns are the prompt; the final assistant turns are the two replies."""
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant":
            raise DataError(source, line, name, "expected the conversation to end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(source, line, "rejected",
                        "expected chosen and rejected to share every turn but the final assistant turn")
    if len(chosen) < 2:
        raise DataError(source, line, "chosen", "expected at least one user turn before the final assistant turn")
    prompt = validate_messages(chosen[:-1], source, line, "chosen", last_role="user")
    return Preference(prompt=prompt, chosen=chosen[-1]["content"], rejected=rejected[-1]["content"],
                      **_optional_fields(row, source, line), meta=_meta(row, _PREFERENCE_KEYS, source, line))


def _forks_early(chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> bool:
    """The dialogues share turns up to a user turn, then differ at an assistant turn that is not the
    last of both: they went on separately, so no two final replies answer the same prompt."""
    k = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    if k == 0 or k >= min(len(chosen), len(rejected)) or chosen[k - 1]["role"] != "user":
        return False
    both_last = k == len(chosen) - 1 and k == len(rejected) - 1
    return chosen[k]["role"] == rejected[k]["role"] == "assistant" and not both_last


def hh_to_preference(row: Row, source: str = "<row>", line: int | None = None) -> Preference | None:
    """Anthropic HH-RLHF ``{"chosen": text, "rejected": text}``. HH has no safety labels: chosen_safe
    and rejected_safe stay None. A row whose dialogues fork at an earlier assistant turn and go on
    separately (1 of the first 1600 harmless test rows, where a turn marker lost its blank line) is
    dropped (None); dialogues that differ elsewhere are an error."""
    chosen = parse_hh_text(_require(row, "chosen", source, line), source, line, "chosen")
    rejected = parse_hh_text(_require(row, "rejected", source, line), source, line, "rejected")
    if _forks_early(chosen, rejected):
        return None
    return _split_shared_prompt(chosen, rejected, row, source, line)


def implicit_prompt_to_preference(row: Row, source: str = "<row>", line: int | None = None) -> Preference:
    """TRL implicit-prompt rows: chosen/rejected are whole message lists sharing their prefix."""
    chosen = validate_messages(_require(row, "chosen", source, line), source, line, "chosen")
    rejected = validate_messages(_require(row, "rejected", source, line), source, line, "rejected")
    return _split_shared_prompt(chosen, rejected, row, source, line)


# ---------------------------------------------------------------- rated and labelled preference sources

_ANNOTATOR = re.compile(r"annotator(\d+)$")
_PANDALM_KEYS = {"instruction", "input", "response1", "response2", "meta"}


def _text(row: Row, key: str, source: str, line: int | None, scalars: bool = False) -> str:
    """A string field; with ``scalars``, a JSON true/false/number is read as its text ("True", "3")."""
    value = _require(row, key, source, line)
    if scalars and isinstance(value, (bool, int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(source, line, key, f"expected a string, got {type(value).__name__}")
    return value


def _choice(row: Row, key: str, allowed: tuple[int, ...], source: str, line: int | None) -> int:
    """An integer label; digit strings (CSV cells) are accepted, booleans are not."""
    value = _require(row, key, source, line)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise DataError(source, line, key, f"expected one of {list(allowed)}, got {value!r}")
    return value


def _flag(row: Row, key: str, source: str, line: int | None) -> bool:
    value = _require(row, key, source, line)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"  # CSV cells
    if not isinstance(value, bool):
        raise DataError(source, line, key, f"expected true or false, got {value!r}")
    return value


def _score(row: Row, key: str, source: str, line: int | None) -> float:
    value = _require(row, key, source, line)
    if isinstance(value, str):
        try:
            value = float(value)  # CSV cells
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise DataError(source, line, key, f"expected a finite number, got {value!r}")
    return float(value)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def agreement_rating(for_chosen: int, for_rejected: int, ties: int) -> str:
    """The paper's preference level from annotator votes, for the side with more votes.

    Every annotator prefers chosen -> significantly_better; a strict majority prefers it and nobody
    prefers rejected (the rest said tie) -> better; a strict majority prefers it but someone prefers
    rejected -> slightly_better; chosen leads without a strict majority (most said tie) -> negligibly_better.
    """
    total = for_chosen + for_rejected + ties
    if for_chosen <= for_rejected:
        raise ValueError(f"agreement_rating: chosen needs more votes than rejected, "
                         f"got {for_chosen} vs {for_rejected}")
    if for_chosen == total:
        return "significantly_better"
    if 2 * for_chosen > total:
        return "better" if for_rejected == 0 else "slightly_better"
    return "negligibly_better"


def pandalm_to_preference(row: Row, source: str = "<row>", line: int | None = None,
                          keep_ties: bool = False) -> Preference | None:
    """PandaLM-style pairs judged by several annotators.

    Fields: instruction, input (optional; the prompt is their non-blank parts joined by a blank line), response1,
    response2, annotator1..annotatorN with 0 = tie, 1 = response1 better, 2 = response2 better. The
    response with more votes is chosen and :func:`agreement_rating` gives the level (3 annotators:
    1-1-1 significantly_better, 1-1-0 better, 1-1-2 slightly_better, 1-0-0 negligibly_better). A tie
    (as many votes for each response: 0-0-0, 0-1-2) has no chosen answer and is dropped (None) unless
    ``keep_ties``; a kept tie has response1 as chosen, rating negligibly_better and meta["tie"] True.
    """
    labels = sorted((int(m.group(1)), key) for key in row if (m := _ANNOTATOR.match(key)))
    if not labels:
        raise DataError(source, line, "annotator1", "missing; expected annotator1..annotatorN labels "
                                                    "(0 = tie, 1 = response1 better, 2 = response2 better)")
    votes = [_choice(row, key, (0, 1, 2), source, line) for _, key in labels]
    instruction = _text(row, "instruction", source, line)
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise DataError(source, line, "input", f"expected a string or null, got {type(extra).__name__}")
    # PandaLM's own test set stores a few answers "True" as the JSON value true: read them as text.
    responses = {i: _text(row, f"response{i}", source, line, scalars=True) for i in (1, 2)}
    parts = [text for text in (instruction, extra) if text and text.strip()]  # PandaLM has a blank instruction
    if not parts:
        raise DataError(source, line, "instruction", "expected a non-empty instruction (or input)")
    prompt_text = "\n\n".join(parts)
    count = {label: votes.count(label) for label in (0, 1, 2)}
    meta = _meta(row, _PANDALM_KEYS | {key for _, key in labels}, source, line)
    meta["annotator_votes"] = votes
    if count[1] == count[2]:
        if not keep_ties:
            return None
        chosen_id, rating = 1, "negligibly_better"
        meta["tie"] = True
    else:
        chosen_id = 1 if count[1] > count[2] else 2
        rating = agreement_rating(count[chosen_id], count[3 - chosen_id], count[0])
    meta["chosen_response"] = f"response{chosen_id}"
    return Preference(prompt=[{"role": "user", "content": prompt_text}], chosen=responses[chosen_id],
                      rejected=responses[3 - chosen_id], rating=rating, meta=meta)


_PAIRWISE_KEYS = {"input", "output_1", "output_2", "label", "meta"}


def pairwise_label_to_preference(row: Row, source: str = "<row>", line: int | None = None) -> Preference:
    """Pairs with one expert label, as in LLMBar: ``input`` (the instruction), ``output_1``, ``output_2``
    and ``label`` (1 or 2: the output that follows the instruction better). Unrated (no level given)."""
    instruction = _text(row, "input", source, line)
    if not instruction.strip():
        raise DataError(source, line, "input", "expected a non-empty instruction")
    outputs = {i: _text(row, f"output_{i}", source, line, scalars=True) for i in (1, 2)}
    better = _choice(row, "label", (1, 2), source, line)
    meta = _meta(row, _PAIRWISE_KEYS, source, line)
    meta["chosen_response"] = f"output_{better}"
    return Preference(prompt=[{"role": "user", "content": instruction}], chosen=outputs[better],
                      rejected=outputs[3 - better], meta=meta)


def goal_to_conversation(row: Row, source: str = "<row>", line: int | None = None) -> Conversation:
    """Prompt sets that name the request ``goal`` (as AdvBench): the goal becomes the user turn."""
    goal = _text(row, "goal", source, line)
    if not goal.strip():
        raise DataError(source, line, "goal", "expected a non-empty request")
    return Conversation(messages=[{"role": "user", "content": goal}], meta=_meta(row, {"goal", "meta"}, source, line))


_PKU_KEYS = {"prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe", "meta"}
# Safety view: the paper's three safety bins -> preference level (docs/DATA.md says why).
SAFETY_BIN_RATINGS = {"one_safe": "significantly_better", "both_unsafe": "slightly_better",
                      "both_safe": "negligibly_better"}


def _pku_to_preference(row: Row, source: str, line: int | None, view: str) -> Preference:
    id_key = "better_response_id" if view == "helpful" else "safer_response_id"
    prompt = _text(row, "prompt", source, line)
    if not prompt.strip():
        raise DataError(source, line, "prompt", "expected a non-empty prompt")
    responses = [_text(row, "response_0", source, line), _text(row, "response_1", source, line)]
    safe = [_flag(row, "is_response_0_safe", source, line), _flag(row, "is_response_1_safe", source, line)]
    chosen_id = _choice(row, id_key, (0, 1), source, line)
    bin_ = "both_safe" if all(safe) else "both_unsafe" if not any(safe) else "one_safe"
    meta = _meta(row, _PKU_KEYS | {id_key}, source, line)
    meta.update(safety_bin=bin_, view=view)
    rating = None  # PKU-SafeRLHF gives no strength for its helpfulness preference
    if view == "safety":
        rating = SAFETY_BIN_RATINGS[bin_]
        if bin_ == "one_safe" and not safe[chosen_id]:
            rating = None  # "safer" is the unsafe one: conflicting labels, dropped by the RM mixtures
            meta["label_conflict"] = True
    return Preference(prompt=[{"role": "user", "content": prompt}], chosen=responses[chosen_id],
                      rejected=responses[1 - chosen_id], rating=rating, chosen_safe=safe[chosen_id],
                      rejected_safe=safe[1 - chosen_id], meta=meta)


def pku_helpful_to_preference(row: Row, source: str = "<row>", line: int | None = None) -> Preference:
    """PKU-SafeRLHF, helpfulness view: chosen = response_{better_response_id}; rating None (no strength
    label); chosen_safe/rejected_safe from is_response_{0,1}_safe; meta["safety_bin"] as in the safety view."""
    return _pku_to_preference(row, source, line, "helpful")


def pku_safety_to_preference(row: Row, source: str = "<row>", line: int | None = None) -> Preference:
    """PKU-SafeRLHF, safety view: chosen = response_{safer_response_id}; meta["safety_bin"] is both_safe,
    one_safe or both_unsafe and sets the rating (SAFETY_BIN_RATINGS); a "safer" answer flagged unsafe
    beside a safe one gets rating None and meta["label_conflict"]."""
    return _pku_to_preference(row, source, line, "safety")


# UltraFeedback score gap (1-10 scale) -> preference level, strongest first; a gap must be > 0.
SCORE_GAP_RATINGS = ((4.0, "significantly_better"), (2.0, "better"), (1.0, "slightly_better"),
                     (0.0, "negligibly_better"))


def ultrafeedback_to_preference(row: Row, source: str = "<row>", line: int | None = None,
                                keep_ties: bool = False) -> Preference | None:
    """UltraFeedback-binarized rows: prompt, chosen, rejected (strings or message lists) and
    score_chosen/score_rejected on a 1-10 scale. The gap sets the rating (SCORE_GAP_RATINGS: >= 4
    significantly_better, >= 2 better, >= 1 slightly_better, > 0 negligibly_better) unless the row has
    its own rating. A pair whose chosen does not score higher is dropped (None); with ``keep_ties`` an
    equal-score pair is kept as negligibly_better with meta["tie"] True."""
    pref = prompt_chosen_rejected_to_preference(row, source, line)
    gap = _score(row, "score_chosen", source, line) - _score(row, "score_rejected", source, line)
    gap = round(gap, 6)  # float noise on half-point scores must not move a pair across a threshold
    if gap < 0 or (gap == 0 and not keep_ties):
        return None
    if gap == 0:
        pref.meta["tie"] = True
    pref.meta["score_gap"] = gap
    if pref.rating is None:
        pref.rating = next(rating for threshold, rating in SCORE_GAP_RATINGS if gap >= threshold)
    return pref


CONVERSATION_FORMATS: dict[str, Callable[[Row, str, int | None], Conversation]] = {
    "messages": messages_to_conversation,
    "prompt_completion": prompt_completion_to_conversation,
    "prompt": prompt_to_conversation,
    "goal": goal_to_conversation,
}
PREFERENCE_FORMATS: dict[str, Callable[[Row, str, int | None], Preference | None]] = {
    "prompt_chosen_rejected": prompt_chosen_rejected_to_preference,
    "preference": prompt_chosen_rejected_to_preference,  # the recipe schema's name for it
    "hh": hh_to_preference,
    "implicit_prompt": implicit_prompt_to_preference,
    "pandalm": pandalm_to_preference,
    "pandalm_keep_ties": partial(pandalm_to_preference, keep_ties=True),
    "pku_helpful": pku_helpful_to_preference,
    "pku_safety": pku_safety_to_preference,
    "ultrafeedback": ultrafeedback_to_preference,
    "ultrafeedback_keep_ties": partial(ultrafeedback_to_preference, keep_ties=True),
    "pairwise_label": pairwise_label_to_preference,
}
# The names a recipe's `format:` accepts: "auto" and every format above (tests keep the lists equal).
DataFormat = Literal["auto", "messages", "prompt_completion", "prompt", "hh", "preference", "prompt_chosen_rejected",
                     "implicit_prompt", "pandalm", "pandalm_keep_ties", "pku_helpful", "pku_safety",
                     "ultrafeedback", "ultrafeedback_keep_ties", "pairwise_label", "goal"]


def _candidates(row: Row) -> list[str]:
    """Formats whose keys the row has, most specific first."""
    keys = {k for k, v in row.items() if v is not None}
    found = []
    if {"response_0", "response_1"} <= keys and keys & {"better_response_id", "safer_response_id"}:
        return ["pku"]  # two preferences in one row: detect_format asks which one
    if {"instruction", "response1", "response2"} <= keys and any(_ANNOTATOR.match(k) for k in keys):
        return ["pandalm"]
    if {"input", "output_1", "output_2", "label"} <= keys:
        return ["pairwise_label"]
    if {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"} <= keys:
        found.append("ultrafeedback")
    if "messages" in keys:
        found.append("messages")
    if {"prompt", "completion"} <= keys:
        found.append("prompt_completion")
    if {"prompt", "chosen", "rejected"} <= keys:
        found.append("prompt_chosen_rejected")
    elif {"chosen", "rejected"} <= keys:
        found.append("hh" if isinstance(row["chosen"], str) else "implicit_prompt")
    if not found and "prompt" in keys:
        found.append("prompt")  # prompts of preference data only with format="prompt": no silent reading
    return found


def detect_format(row: Any, source: str = "<row>", line: int | None = None, kind: str | None = None) -> str:
    """Name of the converter for a row, from its keys; ``kind`` ("conversation" or "preference") picks
    among formats of that kind first, for rows carrying both (e.g. messages and chosen/rejected)."""
    if not isinstance(row, dict):
        raise DataError(source, line, None, f"expected a JSON object per row, got {type(row).__name__}")
    found = _candidates(row)
    if found == ["pku"]:
        raise DataError(source, line, None,
                        "a PKU-SafeRLHF row (response_0/response_1 with better_response_id/safer_response_id) "
                        "holds two preferences: set format to 'pku_helpful' (helpfulness RM) or 'pku_safety' "
                        "(safety RM); for its prompts alone use format 'prompt'")
    wanted = {"conversation": CONVERSATION_FORMATS, "preference": PREFERENCE_FORMATS}.get(kind or "", {})
    found = [name for name in found if name in wanted] + [name for name in found if name not in wanted]
    if not found:
        raise DataError(source, line, None,
                        "could not tell the format from the keys " + repr(sorted(row)) + "; expected 'messages', "
                        "'prompt'+'completion', 'prompt'+'chosen'+'rejected', 'chosen'+'rejected', 'prompt' "
                        "or 'instruction'+'response1'+'response2'+'annotator1' (pandalm); or set the format "
                        "(docs/DATA.md lists them)")
    return found[0]


def _pick(formats: dict[str, Callable], kind: str, fmt: str, row: Any, source: str,
          line: int | None) -> Callable:
    name = detect_format(row, source, line, kind) if fmt == "auto" else fmt
    if name not in formats:
        other = "preference" if kind == "conversation" else "conversation"
        hint = f" (a {other} format: use load_{other}s)" if fmt == "auto" else ""
        raise DataError(source, line, None, f"format '{name}'{hint} cannot give a {kind}; "
                                            f"expected one of {sorted(formats)} or 'auto'")
    if not isinstance(row, dict):
        raise DataError(source, line, None, f"expected a JSON object per row, got {type(row).__name__}")
    return formats[name]


def to_conversation(row: Any, format: str = "auto", source: str = "<row>", line: int | None = None) -> Conversation:
    """Convert one row with the named converter, or the one detect_format picks."""
    return _pick(CONVERSATION_FORMATS, "conversation", format, row, source, line)(row, source, line)


def to_preference(row: Any, format: str = "auto", source: str = "<row>",
                  line: int | None = None) -> Preference | None:
    """Convert one row with the named converter, or the one detect_format picks; None for a row the
    format filters out by rule (see PREFERENCE_FORMATS)."""
    return _pick(PREFERENCE_FORMATS, "preference", format, row, source, line)(row, source, line)
