"""The unit every built-in generator returns: one prompt, the oracle's keys, and graded answers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Answer variants an item may carry, best first. "reference" holds paraphrases of the best answer
# (two or more for helpful and harmful items), all judged correct/safe by the oracle; the others
# are what preference pairs are built from.
#   helpful:    reference, wrong (a slip: a near miss where the task has one), far (clearly wrong)
#   harmful:    reference (concern, refusal, risks, resources), refusal (bare refusal),
#               unsafe_hedged (complies with a warning), unsafe (complies eagerly)
#   borderline: reference (helpful answer)


@dataclass
class Item:
    prompt: str
    meta: dict[str, Any]  # kind, task, is_safety, category, item (split key), and the keys the oracle checks
    variants: dict[str, list[str]] = field(default_factory=dict)
    # Earlier turns of a multi-turn set-up (user/assistant messages before ``prompt``); empty for one turn.
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation up to and including the user turn to answer."""
        return [*self.history, {"role": "user", "content": self.prompt}]
