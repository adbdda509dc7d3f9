"""Property-based tests (hypothesis) of the pure conversions: pixel <-> Label Studio percent
boxes, the sync plan, and label-config parsing of arbitrary text."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backend.core.errors import LabelConfigError
from backend.labelstudio.boxes import (
    MIN_BOX_PIXELS,
    clip_box,
    from_region_value,
    task_score,
    to_region,
)
from backend.labelstudio.label_config import LabelConfig, map_classes, parse_label_config
from sync.plan import BlobInfo, Imported, Plan, plan

FAST = settings(max_examples=200, deadline=1000, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
EPS = 1e-6

sizes = st.integers(min_value=1, max_value=20_000)
finite = st.floats(min_value=-1e7, max_value=1e7, allow_nan=False, allow_infinity=False)
not_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def image_and_box(draw: st.DrawFn) -> tuple[int, int, tuple[float, float, float, float]]:
    """An image size and an xyxy box inside it at least a pixel wide and high."""
    width, height = draw(sizes), draw(sizes)
    assume(width >= 2 and height >= 2)
    x1 = draw(st.floats(0, width - MIN_BOX_PIXELS - 0.01))
    y1 = draw(st.floats(0, height - MIN_BOX_PIXELS - 0.01))
    x2 = draw(st.floats(x1 + MIN_BOX_PIXELS + 0.001, width))
    y2 = draw(st.floats(y1 + MIN_BOX_PIXELS + 0.001, height))
    return width, height, (x1, y1, x2, y2)


def region(box: tuple[float, ...], width: int, height: int) -> dict | None:
    return to_region(box, score=0.5, label="car", width=width, height=height,
                     from_name="label", to_name="image")


# -- boxes ----------------------------------------------------------------------------------

@FAST
@given(image_and_box())
def test_pixel_percent_round_trip(case: tuple[int, int, tuple[float, float, float, float]]) -> None:
    width, height, box = case
    made = region(box, width, height)
    assert made is not None
    back = from_region_value(made["value"], width, height)
    assert back is not None
    tolerance = 1e-9 * max(width, height)
    assert back.x1 == pytest.approx(box[0], abs=tolerance)
    assert back.y1 == pytest.approx(box[1], abs=tolerance)
    assert back.x2 == pytest.approx(box[2], abs=tolerance)
    assert back.y2 == pytest.approx(box[3], abs=tolerance)


@FAST
@given(sizes, sizes, st.tuples(finite, finite, finite, finite))
def test_regions_stay_inside_the_image(width: int, height: int,
                                       box: tuple[float, float, float, float]) -> None:
    made = region(box, width, height)
    clipped = clip_box(box, width, height)
    assert (made is None) == (clipped is None)
    if made is None:
        # Dropped only when the part inside the image is under a pixel in some direction.
        inside_w = min(max(box[0], box[2]), width) - max(min(box[0], box[2]), 0)
        inside_h = min(max(box[1], box[3]), height) - max(min(box[1], box[3]), 0)
        assert inside_w < MIN_BOX_PIXELS + EPS or inside_h < MIN_BOX_PIXELS + EPS
        return
    value = made["value"]
    assert value["x"] >= 0 and value["y"] >= 0
    assert value["width"] > 0 and value["height"] > 0
    assert value["x"] + value["width"] <= 100 + EPS
    assert value["y"] + value["height"] <= 100 + EPS
    assert (made["original_width"], made["original_height"]) == (width, height)
    # Clipping is idempotent: a clipped box survives a second clip unchanged.
    assert clip_box((clipped.x1, clipped.y1, clipped.x2, clipped.y2), width, height) == clipped


@FAST
@given(sizes, sizes, st.tuples(finite, finite, finite, finite), st.integers(0, 3), not_finite)
def test_nan_and_infinite_boxes_are_dropped(width: int, height: int,
                                            box: tuple[float, float, float, float],
                                            where: int, bad: float) -> None:
    broken = list(box)
    broken[where] = bad
    assert clip_box(broken, width, height) is None
    assert region(tuple(broken), width, height) is None


junk = st.one_of(st.none(), st.booleans(), st.text(max_size=8), finite, not_finite,
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2),
                                                                      st.integers(), max_size=2),
                 st.floats(min_value=1e300, max_value=1e308), st.integers(-10**30, 10**30))


@FAST
@given(st.fixed_dictionaries({}, optional={"x": junk, "y": junk, "width": junk, "height": junk,
                                           "rotation": junk}), sizes, sizes)
def test_malformed_region_values_give_none_or_a_box_inside(value: dict, width: int,
                                                           height: int) -> None:
    box = from_region_value(value, width, height)
    if box is not None:
        assert 0 <= box.x1 < box.x2 <= width and 0 <= box.y1 < box.y2 <= height
        assert box.width >= MIN_BOX_PIXELS and box.height >= MIN_BOX_PIXELS
        assert all(math.isfinite(v) for v in (box.x1, box.y1, box.x2, box.y2))


@FAST
@given(st.one_of(junk, st.lists(junk, max_size=3)), sizes, sizes)
def test_region_values_that_are_not_objects_give_none(value: object, width: int,
                                                      height: int) -> None:
    assert from_region_value(value, width, height) is None  # type: ignore[arg-type]


@FAST
@given(sizes, sizes, st.floats(0, 100), st.floats(0, 100), st.floats(0, 100), st.floats(0, 100),
       st.floats(-720, 720))
def test_rotated_box_covers_its_rotated_corners(width: int, height: int, x: float, y: float,
                                               w: float, h: float, rotation: float) -> None:
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": rotation}
    box = from_region_value(value, width, height)
    px, py, pw, ph = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    angle = math.radians(rotation)
    corners = [(px + dx * math.cos(angle) - dy * math.sin(angle),
                py + dx * math.sin(angle) + dy * math.cos(angle))
               for dx, dy in ((0, 0), (pw, 0), (pw, ph), (0, ph))]
    # The corners as the image clips them: the box is exactly their bounding box.
    xs = [min(max(cx, 0.0), width) for cx, _ in corners]
    ys = [min(max(cy, 0.0), height) for _, cy in corners]
    span_x, span_y = max(xs) - min(xs), max(ys) - min(ys)
    tolerance = 1e-6 * max(width, height)
    if box is None:
        assert span_x < MIN_BOX_PIXELS + tolerance or span_y < MIN_BOX_PIXELS + tolerance
        return
    assert box.x1 == pytest.approx(min(xs), abs=tolerance)
    assert box.x2 == pytest.approx(max(xs), abs=tolerance)
    assert box.y1 == pytest.approx(min(ys), abs=tolerance)
    assert box.y2 == pytest.approx(max(ys), abs=tolerance)
    for cx, cy in zip(xs, ys, strict=True):
        assert box.x1 - tolerance <= cx <= box.x2 + tolerance
        assert box.y1 - tolerance <= cy <= box.y2 + tolerance


@FAST
@given(image_and_box(), st.integers(-3, 3))
def test_full_turns_change_nothing(case: tuple[int, int, tuple[float, float, float, float]],
                                   turns: int) -> None:
    width, height, box = case
    made = region(box, width, height)
    assert made is not None
    turned = {**made["value"], "rotation": 360 * turns}
    assert from_region_value(turned, width, height) == from_region_value(made["value"], width,
                                                                         height)


@FAST
@given(st.lists(st.floats(0, 1), max_size=50))
def test_task_score_is_the_mean_of_its_boxes(scores: list[float]) -> None:
    score = task_score(scores)
    if not scores:
        assert score == 0.0
    else:
        assert min(scores) - EPS <= score <= max(scores) + EPS


# -- sync plan ------------------------------------------------------------------------------

names = st.sampled_from(["a.jpg", "b.png", "dir/c.jpg", "ü d.jpg", "e.webp", "f.tif"])
blobs = st.builds(BlobInfo, st.sampled_from(["images", "other"]), names,
                  st.sampled_from(["e1", "e2", "e3"]), st.sampled_from([0, 1, 500, 10**9]))


@st.composite
def imported_state(draw: st.DrawFn) -> dict[str, Imported]:
    keys = draw(st.lists(st.builds(lambda c, n: f"{c}/{n}", st.sampled_from(["images", "other"]),
                                   names), unique=True, max_size=12))
    return {key: Imported(task_id, draw(st.sampled_from(["e1", "e2", "e3"])), draw(st.booleans()))
            for task_id, key in enumerate(keys, start=1)}


def apply(todo: Plan, imported: dict[str, Imported]) -> dict[str, Imported]:
    """What a sync pass leaves behind after carrying out `todo` (sync/importer.py)."""
    state = dict(imported)
    next_id = max((known.task_id for known in state.values()), default=0) + 1
    for blob in todo.new:
        assert blob.key not in state, f"{blob.key} imported twice"
        state[blob.key] = Imported(next_id, blob.etag)
        next_id += 1
    for task_id, blob in todo.changed + todo.returned:
        assert state[blob.key].task_id == task_id
        state[blob.key] = Imported(task_id, blob.etag)
    vanished = set(todo.vanished)
    for key, known in state.items():
        if known.task_id in vanished:
            state[key] = Imported(known.task_id, known.etag, missing=True)
    return state


@FAST
@given(st.lists(blobs, max_size=20), imported_state(),
       st.one_of(st.none(), st.sampled_from([100, 10**6])))
def test_planning_after_applying_a_plan_finds_nothing_new(listed: list[BlobInfo],
                                                          imported: dict[str, Imported],
                                                          max_bytes: int | None) -> None:
    first = plan(listed, imported, max_bytes)
    new_keys = [blob.key for blob in first.new]
    assert len(new_keys) == len(set(new_keys))
    assert not set(new_keys) & set(imported)
    touched = [t for t, _ in first.changed + first.returned] + first.vanished
    assert len(touched) == len(set(touched)), "a task is acted on twice in one pass"
    after = apply(first, imported)
    second = plan(listed, after, max_bytes)
    assert second.empty, second
    assert second.skipped == first.skipped
    assert plan(listed, after, max_bytes).empty  # and again: a fixed point


@FAST
@given(st.lists(blobs, max_size=20), imported_state())
def test_plan_is_a_pure_function_of_its_inputs(listed: list[BlobInfo],
                                               imported: dict[str, Imported]) -> None:
    assert plan(listed, imported) == plan(list(listed), dict(imported))
    firsts = {}
    for blob in listed:
        firsts.setdefault(blob.key, blob)
    assert plan(listed, imported) == plan(list(firsts.values()), imported)


# -- label config ---------------------------------------------------------------------------

any_text = st.one_of(
    st.text(max_size=300),
    st.text(st.characters(exclude_categories=()), max_size=50),  # surrogates, controls
    st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),
)
tag_names = st.sampled_from(["View", "Image", "RectangleLabels", "Label", "Choices", "Header",
                             "xi:include", "Rectangle", "image", "View "])
attr_names = st.sampled_from(["name", "value", "toName", "predicted_values",
                              "model_score_threshold", "xmlns:xi", "href"])
attr_values = st.one_of(st.sampled_from(["image", "$image", "$", "label", "car", "a,b", "",
                                         "0.5", "NaN", "-1", "1e999", "&amp;", "&lt;",
                                         "&xxe;", "person, car"]), st.text(max_size=10))
junk_xml = st.sampled_from([
    "", "<!-- c -->", "<![CDATA[<x>]]>", "<?pi data?>", "&lt;", "&bogus;", "&#0;", "&#x110000;",
    '<!DOCTYPE View [<!ENTITY e "x">]>', '<!DOCTYPE View SYSTEM "http://127.0.0.1:1/x.dtd">',
    '<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>', "]]>", "<", "\x00",
    '<?xml version="1.0" encoding="utf-16"?>', "\ud800",
])


def _element(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def build(tag: str, attrs: dict[str, str], inner: list[str], before: str) -> str:
        rendered = "".join(f' {key}="{value}"' for key, value in attrs.items())
        return f"{before}<{tag}{rendered}>{''.join(inner)}</{tag}>"
    return st.builds(build, tag_names, st.dictionaries(attr_names, attr_values, max_size=4),
                     st.lists(children, max_size=4), junk_xml)


xml_like = st.recursive(
    st.one_of(junk_xml, st.builds(lambda tag, value: f'<{tag} value="{value}"/>', tag_names,
                                  attr_values)),
    _element, max_leaves=20)


def _check_parsed(text: str) -> None:
    try:
        config = parse_label_config(text)
    except LabelConfigError as exc:
        assert str(exc)
        return
    assert isinstance(config, LabelConfig) and config.targets
    for target in config.targets:
        assert target.from_name and target.to_name and target.data_key and target.labels
        assert target.score_threshold is None or 0.0 <= target.score_threshold <= 1.0
        assert set(map_classes(["car", "person", "a"], target).values()) <= \
            set(target.label_values)


@FAST
@given(any_text)
def test_label_config_parsing_raises_only_its_typed_error_on_any_text(text: str) -> None:
    _check_parsed(text)


@FAST
@given(xml_like, st.sampled_from(["", '<?xml version="1.0"?>', "\ufeff"]))
def test_label_config_parsing_raises_only_its_typed_error_on_xml_like_text(
        body: str, prolog: str) -> None:
    _check_parsed(prolog + body)
    _check_parsed(prolog + "<View>" + body + "</View>")
