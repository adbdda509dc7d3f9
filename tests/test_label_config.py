from __future__ import annotations

import pytest

from backend.core.errors import LabelConfigError
from backend.labelstudio.label_config import coverage, map_classes, parse_label_config

TWO_PAIRS = """
<View>
  <Image name="photo" value="$image"/>
  <RectangleLabels name="objects" toName="photo" model_score_threshold="0.3">
    <Label value="Car" predicted_values="truck, bus"/>
    <Label value="person"/>
    <Label value="widget"/>
  </RectangleLabels>
  <Image name="thermal" value="$ir"/>
  <RectangleLabels name="hot" toName="thermal"><Label value="dog"/></RectangleLabels>
  <Choices name="quality" toName="photo"><Choice value="ok"/></Choices>
</View>
"""


def test_finds_every_image_rectangle_pair() -> None:
    config = parse_label_config(TWO_PAIRS)
    assert [(t.from_name, t.to_name, t.data_key) for t in config.targets] == [
        ("objects", "photo", "image"), ("hot", "thermal", "ir")]
    first = config.targets[0]
    assert first.label_values == ("Car", "person", "widget")
    assert first.labels[0].predicted_values == ("truck", "bus")
    assert first.score_threshold == 0.3
    assert config.targets[1].score_threshold is None
    assert config.data_keys == ("image", "ir")


def test_synonyms_and_case_map_model_classes() -> None:
    target = parse_label_config(TWO_PAIRS).targets[0]
    classes = ["__background__", "person", "bicycle", "car", "bus", "Truck", "traffic_light"]
    assert map_classes(classes, target) == {1: "person", 3: "Car", 4: "Car", 5: "Car"}


def test_coverage_reports_uncovered_labels() -> None:
    config = parse_label_config(TWO_PAIRS)
    assert coverage(["__background__", "person", "car", "dog"], config) == {
        "covered": ["Car", "dog", "person"], "uncovered": ["widget"]}


@pytest.mark.parametrize(("xml", "message"), [
    ('<View><Image name="i" value="$image"/></View>', "no <RectangleLabels>"),
    ('<View><RectangleLabels name="l" toName="i"><Label value="a"/></RectangleLabels></View>',
     "no <Image"),
    ('<View><Image name="i" value="$image"/><RectangleLabels name="l" toName="other">'
     '<Label value="a"/></RectangleLabels></View>', "points (toName) at an <Image>"),
    ("<View><Image", "not valid XML"),
    ("", "label config is empty"),
    ('<View><Image name="i" value="$image"/><RectangleLabels name="l" toName="i" '
     'model_score_threshold="high"><Label value="a"/></RectangleLabels></View>',
     "model_score_threshold=\"high\""),
    ('<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><View>&b;</View>',
     "not valid XML"),
])
def test_unservable_configs_say_why(xml: str, message: str) -> None:
    with pytest.raises(LabelConfigError) as info:
        parse_label_config(xml)
    assert message in str(info.value)
