"""Which training clips may be flipped horizontally, and the label a flipped clip takes.

A horizontal flip mirrors motion: a clip of "slide left" becomes a clip of
"slide right", and "turn clockwise" becomes "turn counterclockwise". Training
must never show a flipped clip under a label whose meaning the flip changed.
`plan_flips` reads the class names of labels.txt and decides, per class, by
`data.flip`:

- `"auto"` (default): clips are flipped with probability 1/2. Two classes
  whose names differ only by swapping left/right (or leftward/rightward,
  clockwise/counterclockwise, anticlockwise), compared as lower-case words,
  are mirror images: a flipped clip of one takes the other's label. A class
  whose name holds such a word but has no mirror class is never flipped.
  Other classes are flipped and keep their label.
- `"none"`: no clip is flipped.
- `"all"`: every class is flipped and keeps its label (names are not read).

`data.no_flip_classes` is never flipped under any policy; under "auto" its
mirror classes then have no class to swap with and are not flipped either.

Example:

>>> plan = plan_flips(["slide_left", "slide_right", "turn_left", "wave"])
>>> plan.flip_label_map, plan.no_flip_classes
({0: 1, 1: 0}, (2,))
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

__all__ = ["FLIP_POLICIES", "FlipPlan", "direction_words", "mirror_name", "plan_flips"]

FLIP_POLICIES = ("auto", "none", "all")

# Each word and the word a horizontal mirror turns it into.
_MIRROR_WORDS = {
    "left": "right",
    "right": "left",
    "leftward": "rightward",
    "rightward": "leftward",
    "leftwards": "rightwards",
    "rightwards": "leftwards",
    "clockwise": "counterclockwise",
    "counterclockwise": "clockwise",
}
# Spellings of "counterclockwise" written as one word or split in two.
_COUNTERCLOCKWISE_PREFIXES = ("counter", "anti")
# Lists in the summary line stop after this many classes.
_MAX_LISTED = 8


def _words(name: str) -> tuple[str, ...]:
    """Lower-case words of a class name; camelCase, `_`, `-` and spaces separate words."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    words = re.findall(r"[a-z0-9]+", spaced.lower())
    merged: list[str] = []
    for word in words:
        if word == "anticlockwise":
            word = "counterclockwise"
        if word == "clockwise" and merged and merged[-1] in _COUNTERCLOCKWISE_PREFIXES:
            merged[-1] = "counterclockwise"
            continue
        merged.append(word)
    return tuple(merged)


def direction_words(name: str) -> tuple[str, ...]:
    """The words of `name` that a horizontal flip changes (e.g. `("left",)`)."""
    return tuple(word for word in _words(name) if word in _MIRROR_WORDS)


def mirror_name(name: str) -> tuple[str, ...]:
    """The words of the class name a horizontal flip turns `name` into."""
    return tuple(_MIRROR_WORDS.get(word, word) for word in _words(name))


@dataclasses.dataclass(frozen=True)
class FlipPlan:
    """What training does with horizontal flips, per class.

    Attributes:
        policy: the `data.flip` it was made for.
        labels: the class names.
        flip_label_map: `{class: label after flipping}` of the mirror pairs.
        no_flip_classes: classes never flipped, sorted.
        explicit: the classes of `data.no_flip_classes`.
        unpaired: classes never flipped because their name has a direction
            word and no (usable) mirror class.
    """

    policy: str
    labels: tuple[str, ...]
    flip_label_map: dict[int, int]
    no_flip_classes: tuple[int, ...]
    explicit: tuple[int, ...] = ()
    unpaired: tuple[int, ...] = ()

    def describe(self) -> str:
        """One line for the log, e.g. `Flips (data.flip=auto): classes 0<->1 (a/b) swap labels ...`."""
        head = f"Flips (data.flip={self.policy}):"
        if self.policy == "none":
            return f"{head} no clip is flipped."
        parts = []
        pairs = sorted((first, second) for first, second in self.flip_label_map.items() if first < second)
        if pairs:
            listed = ", ".join(
                f"{first}<->{second} ({self.labels[first]}/{self.labels[second]})" for first, second in pairs[:_MAX_LISTED]
            )
            more = f" and {len(pairs) - _MAX_LISTED} more pairs" if len(pairs) > _MAX_LISTED else ""
            parts.append(f"classes {listed}{more} swap labels when flipped")
        if self.unpaired:
            parts.append(f"{self._classes(self.unpaired)} never flipped (left/right name without a mirror class to swap with)")
        if self.explicit:
            parts.append(f"{self._classes(self.explicit)} never flipped (data.no_flip_classes)")
        kept = len(self.labels) - len(self.no_flip_classes) - len(self.flip_label_map)
        parts.append(f"{kept} other class{'' if kept == 1 else 'es'} flipped with {'its' if kept == 1 else 'their'} label")
        return f"{head} {'; '.join(parts)}."

    def _classes(self, indices: Sequence[int]) -> str:
        listed = ", ".join(f"{index} ({self.labels[index]})" for index in indices[:_MAX_LISTED])
        more = f" and {len(indices) - _MAX_LISTED} more" if len(indices) > _MAX_LISTED else ""
        return f"class{'' if len(indices) == 1 else 'es'} {listed}{more}"


def _mirror_pairs(labels: Sequence[str]) -> tuple[dict[int, int], list[int]]:
    """`({class: mirror class}, [directional classes without a mirror])`."""
    by_words: dict[tuple[str, ...], list[int]] = {}
    for index, name in enumerate(labels):
        by_words.setdefault(_words(name), []).append(index)
    pairs: dict[int, int] = {}
    unpaired = []
    for index, name in enumerate(labels):
        if not direction_words(name):
            continue
        own = by_words[_words(name)]
        # Every direction word mirrors to another word, so a name is never
        # its own mirror. Two classes with the same words would make the
        # mirror ambiguous: neither is flipped.
        mirrors = by_words.get(mirror_name(name), [])
        if len(own) == 1 and len(mirrors) == 1:
            pairs[index] = mirrors[0]
        else:
            unpaired.append(index)
    return pairs, unpaired


def plan_flips(labels: Sequence[str], policy: str = "auto", no_flip_classes: Sequence[int] = ()) -> FlipPlan:
    """The flips of training for the classes `labels` (see the module docstring).

    Args:
        labels: class names, line i of labels.txt is class i.
        policy: `data.flip`: "auto", "none" or "all".
        no_flip_classes: `data.no_flip_classes`, never flipped.

    Returns:
        A `FlipPlan`; pass its `flip_label_map` and `no_flip_classes` to the
        input pipeline.

    Raises:
        ValueError: an unknown `policy`, or a class of `no_flip_classes`
            outside `[0, len(labels))`.
    """
    if policy not in FLIP_POLICIES:
        raise ValueError(f"`data.flip` must be one of {FLIP_POLICIES}. Received: {policy!r}.")
    labels = tuple(str(name) for name in labels)
    explicit = tuple(sorted({int(index) for index in no_flip_classes}))
    outside = [index for index in explicit if not 0 <= index < len(labels)]
    if outside:
        raise ValueError(
            f"`data.no_flip_classes` names classes {outside}, but labels.txt lists {len(labels)} classes "
            f"(indices 0 to {len(labels) - 1})."
        )
    if policy == "none":
        return FlipPlan(policy, labels, {}, tuple(range(len(labels))))
    if policy == "all":
        return FlipPlan(policy, labels, {}, explicit, explicit=explicit)
    pairs, unpaired = _mirror_pairs(labels)
    for index, mirror in list(pairs.items()):
        if index in explicit or mirror in explicit:
            del pairs[index]
            if index not in explicit:
                unpaired.append(index)
    unpaired_classes = tuple(sorted(set(unpaired) - set(explicit)))
    return FlipPlan(
        policy,
        labels,
        pairs,
        tuple(sorted(set(explicit) | set(unpaired_classes))),
        explicit=explicit,
        unpaired=unpaired_classes,
    )
