"""The label set, its long-tailed frequencies, and the emoji that belong to no label.

24 classes drawn from animals, vehicles, fruit and things, each a visually distinct Noto Color
Emoji glyph. Class k (from 1, most common first) is drawn with probability proportional to
k ** -ZIPF_EXPONENT: the rarest is 24 ** -0.85 = 0.067 times as common as the most common.
Distractors are emoji of no class; the hard preset also draws look-alikes (a wolf beside the
dogs, a truck beside the tractors, a lemon beside the bananas) that a detector must
learn to leave alone. No distractor is of the same kind as a class (no taxi, which is a car).
"""

from __future__ import annotations

import numpy as np

CLASSES: tuple[tuple[str, str], ...] = (
    ("car", "\U0001F697"), ("dog", "\U0001F436"), ("cat", "\U0001F431"),
    ("bicycle", "\U0001F6B2"), ("bus", "\U0001F68C"), ("airplane", "\u2708"),
    ("banana", "\U0001F34C"), ("strawberry", "\U0001F353"), ("umbrella", "\u2602"),
    ("clock", "\u23F0"), ("guitar", "\U0001F3B8"), ("sailboat", "\u26F5"),
    ("tractor", "\U0001F69C"), ("teddy", "\U0001F9F8"), ("pig", "\U0001F437"),
    ("fox", "\U0001F98A"), ("frog", "\U0001F438"), ("penguin", "\U0001F427"),
    ("owl", "\U0001F989"), ("butterfly", "\U0001F98B"), ("ladybug", "\U0001F41E"),
    ("elephant", "\U0001F418"), ("giraffe", "\U0001F992"), ("pineapple", "\U0001F34D"),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in CLASSES)
ZIPF_EXPONENT = 0.85

# Unlike every class: plants, balls, clothes, tools, other food and animals.
DISTRACTORS: tuple[tuple[str, str], ...] = (
    ("cactus", "\U0001F335"), ("tree", "\U0001F332"), ("sunflower", "\U0001F33B"),
    ("rose", "\U0001F339"), ("soccer", "\u26BD"), ("basketball", "\U0001F3C0"),
    ("tophat", "\U0001F3A9"), ("crown", "\U0001F451"), ("bulb", "\U0001F4A1"),
    ("briefcase", "\U0001F4BC"), ("key", "\U0001F511"), ("camera", "\U0001F4F7"),
    ("balloon", "\U0001F388"), ("mushroom", "\U0001F344"), ("broccoli", "\U0001F966"),
    ("corn", "\U0001F33D"), ("carrot", "\U0001F955"), ("eggplant", "\U0001F346"),
    ("avocado", "\U0001F951"), ("grapes", "\U0001F347"), ("octopus", "\U0001F419"),
    ("snail", "\U0001F40C"), ("crab", "\U0001F980"), ("fish", "\U0001F41F"),
    ("sneaker", "\U0001F45F"), ("trumpet", "\U0001F3BA"), ("rocket", "\U0001F680"),
    ("books", "\U0001F4DA"),
)
# Like one class in colour or shape, but not of it (the hard preset's distractors).
LOOKALIKES: tuple[tuple[str, str], ...] = (
    ("truck", "\U0001F69A"), ("wolf", "\U0001F43A"), ("tiger", "\U0001F42F"),
    ("scooter", "\U0001F6F5"), ("motorcycle", "\U0001F3CD"), ("trolleybus", "\U0001F68E"),
    ("helicopter", "\U0001F681"), ("lemon", "\U0001F34B"), ("cherries", "\U0001F352"),
    ("tomato", "\U0001F345"), ("watch", "\u231A"), ("violin", "\U0001F3BB"),
    ("canoe", "\U0001F6F6"), ("bear", "\U0001F43B"), ("cow", "\U0001F42E"),
    ("hamster", "\U0001F439"), ("turtle", "\U0001F422"), ("duck", "\U0001F986"),
    ("eagle", "\U0001F985"), ("bee", "\U0001F41D"), ("beetle", "\U0001FAB2"),
    ("rhino", "\U0001F98F"), ("zebra", "\U0001F993"), ("mango", "\U0001F96D"),
)


def class_frequencies(classes: int = len(CLASSES)) -> np.ndarray:
    """The probability of each of the first `classes` CLASSES for one object (Zipf)."""
    weights = np.arange(1, classes + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    return np.asarray(weights / weights.sum())


def label_config(classes: int = len(CLASSES)) -> str:
    """A Label Studio config with one rectangle label for each of the first `classes`."""
    return ('<View><Image name="image" value="$image"/>'
            '<RectangleLabels name="label" toName="image">'
            + "".join(f'<Label value="{name}"/>' for name in CLASS_NAMES[:classes])
            + "</RectangleLabels></View>")
