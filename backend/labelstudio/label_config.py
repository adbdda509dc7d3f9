"""Parse a Label Studio label config into what a box detector needs.

A servable config has at least one `<RectangleLabels toName="X">` whose `X` is an `<Image>`.
Each such pair becomes a `BoxTarget`: where the image URL lives in `task.data`, the project's
labels with their `predicted_values` synonyms, and an optional per-tag score threshold
(`model_score_threshold`, the attribute Label Studio's own ML examples use).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from xml.etree.ElementTree import Element

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from backend.core.errors import LabelConfigError

MAX_CONFIG_CHARS = 1_000_000


@dataclass(frozen=True)
class LabelSpec:
    """One `<Label>`: its value and the model class names that map onto it."""

    value: str
    predicted_values: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return (self.value, *self.predicted_values)


@dataclass(frozen=True)
class BoxTarget:
    """One RectangleLabels tag and the Image it annotates."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[LabelSpec, ...]
    score_threshold: float | None = None

    @property
    def label_values(self) -> tuple[str, ...]:
        return tuple(label.value for label in self.labels)


@dataclass(frozen=True)
class LabelConfig:
    """The servable part of a label config."""

    targets: tuple[BoxTarget, ...]

    @property
    def data_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(target.data_key for target in self.targets))


def _normalize(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _split_values(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _threshold(tag: Element) -> float | None:
    raw = tag.get("model_score_threshold")
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise LabelConfigError(
            f'model_score_threshold="{raw}" on <RectangleLabels name="{tag.get("name")}"> '
            "must be a number between 0 and 1")
    return value


@lru_cache(maxsize=64)
def parse_label_config(xml: str) -> LabelConfig:
    """Find the Image + RectangleLabels pairs of a label config.

    Raises LabelConfigError saying what is missing when nothing can be served.
    """
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label config is empty; expected Label Studio XML")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"label config is over {MAX_CONFIG_CHARS} characters")
    try:
        root = ElementTree.fromstring(xml)
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise LabelConfigError(f"label config is not valid XML: {exc}") from None
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800") cannot reach the parser
        raise LabelConfigError("label config is not valid XML: it contains an unpaired "
                               "surrogate character") from None

    images: dict[str, str] = {}
    for tag in root.iter("Image"):
        name, value = tag.get("name"), tag.get("value", "")
        if name and value.startswith("$") and len(value) > 1:
            images[name] = value[1:]
    rectangle_tags = list(root.iter("RectangleLabels"))
    if not rectangle_tags:
        raise LabelConfigError(
            "label config has no <RectangleLabels> tag; MLAssist predicts bounding boxes, "
            "so add e.g. <RectangleLabels name=\"label\" toName=\"image\">")
    if not images:
        raise LabelConfigError(
            "label config has no <Image name=... value=\"$key\"> tag for boxes to be drawn on")

    targets = []
    for tag in rectangle_tags:
        from_name = tag.get("name")
        to_names = _split_values(tag.get("toName"))
        labels = tuple(
            LabelSpec(value=label.get("value", ""),
                      predicted_values=_split_values(label.get("predicted_values")))
            for label in tag.iter("Label") if label.get("value")
        )
        if not from_name or not labels:
            continue
        for to_name in to_names:
            if to_name in images:
                targets.append(BoxTarget(from_name, to_name, images[to_name], labels,
                                         _threshold(tag)))
    if not targets:
        raise LabelConfigError(
            "no <RectangleLabels> with a name and at least one <Label> points (toName) at an "
            f"<Image>; images in the config: {', '.join(sorted(images)) or 'none'}")
    return LabelConfig(tuple(targets))


def map_classes(model_classes: list[str] | tuple[str, ...],
                target: BoxTarget) -> dict[int, str]:
    """Map model class indices to the target's labels by name or `predicted_values` synonym.

    Matching ignores case, and treats spaces, underscores and hyphens alike. A model class
    matches at most one label (the first in config order).
    """
    by_name: dict[str, str] = {}
    for label in target.labels:
        for name in label.names():
            by_name.setdefault(_normalize(name), label.value)
    return {
        index: by_name[_normalize(name)]
        for index, name in enumerate(model_classes)
        if _normalize(name) in by_name
    }


def coverage(model_classes: list[str] | tuple[str, ...],
             config: LabelConfig) -> dict[str, list[str]]:
    """Which project labels the model can predict, and which it cannot (yet)."""
    covered: list[str] = []
    for target in config.targets:
        covered.extend(map_classes(model_classes, target).values())
    covered_set = set(covered)
    labels = [value for target in config.targets for value in target.label_values]
    return {
        "covered": sorted(set(labels) & covered_set),
        "uncovered": sorted(set(labels) - covered_set),
    }
