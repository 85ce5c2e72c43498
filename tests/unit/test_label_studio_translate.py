"""Label Studio <-> sam2serve translation, as tables: labeling configs, regions -> prompts
(percentages -> pixels), masks -> brush RLE (checked bit for bit against label-studio-sdk's
converter and decoded by it) and polygons, frame numbering."""

from __future__ import annotations

import label_studio_sdk.converter.brush as ls_brush
import numpy as np
import pytest

from sam2serve.errors import BadRequest
from sam2serve.image.schema import Box, Point, Prompt
from sam2serve.label_studio import brush
from sam2serve.label_studio.labeling_config import Control, parse_config
from sam2serve.label_studio.regions import Keyframe, VideoObject, image_prompts, video_objects
from sam2serve.label_studio.results import mask_box_pct, mask_results
from sam2serve.label_studio.video_tracks import FrameClock
from sam2serve.media import postprocess


def _masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    disc = np.hypot(*np.mgrid[-50:50, -60:60]) < 30
    long_runs = np.zeros((300, 700), bool)  # runs over 2**16 values (x4 channels)
    long_runs[40:260, :] = True
    return {
        "one pixel": np.ones((1, 1), bool),
        "empty": np.zeros((13, 17), bool),
        "full": np.ones((20, 30), bool),
        "noise": rng.random((31, 23)) > 0.5,
        "disc": disc,
        "long runs": long_runs,
        "checker": (np.indices((9, 11)).sum(axis=0) % 2).astype(bool),
    }


@pytest.mark.parametrize("name", list(_masks()))
def test_brush_rle_is_label_studios_own(name: str) -> None:
    mask = _masks()[name]
    ours = brush.mask_to_rle(mask)
    assert ours == list(ls_brush.mask2rle(mask.astype(np.uint8) * 255))
    decoded = ls_brush.decode_rle(bytes(ours)).reshape(*mask.shape, 4)
    assert (decoded[:, :, 3] > 0).tolist() == mask.tolist()
    assert set(np.unique(decoded).tolist()) <= {0, 255}


IMAGE_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Cat"/><Label value="Negative"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Cat"/></RectangleLabels>
  <BrushLabels name="brush" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Dog"/></PolygonLabels>
</View>"""
VIDEO_CONFIG = """<View><Video name="video" value="$video" framerate="10"/>
  <VideoRectangle name="box" toName="video"/>
  <Labels name="labels" toName="video"><Label value="Ball"/></Labels></View>"""


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (IMAGE_CONFIG, {"prompts": ["kp", "rect"], "masks": ["brush", "poly"], "video_tracks": []}),
        (VIDEO_CONFIG, {"prompts": [], "masks": [], "video_tracks": ["box"]}),
        ("<View></View>", {"prompts": [], "masks": [], "video_tracks": []}),
        ("", {"prompts": [], "masks": [], "video_tracks": []}),
    ],
)
def test_config_controls(xml: str, expected: dict[str, list[str]]) -> None:
    assert parse_config(xml).describe() == expected


def test_config_objects_and_labels() -> None:
    image = parse_config(IMAGE_CONFIG)
    assert image.objects["image"].data_key == "image"
    assert image.controls_for("image", frozenset({"brushlabels"}))[0].labels == ("Cat", "Dog")
    video = parse_config(VIDEO_CONFIG).first_object("video")
    assert video is not None and (video.data_key, video.framerate) == ("video", 10.0)
    with pytest.raises(BadRequest) as exc:
        parse_config("<View><Image")
    assert exc.value.field == "label_config"


def _kp(x: float, y: float, label: str = "Cat", **extra: object) -> dict:
    return {
        "type": "keypointlabels",
        "to_name": "image",
        "original_width": 200,
        "original_height": 100,
        "value": {"x": x, "y": y, "width": 1, "keypointlabels": [label]},
        **extra,
    }


def _rect(x: float, y: float, w: float, h: float, label: str = "Cat") -> dict:
    return {
        "type": "rectanglelabels",
        "to_name": "image",
        "original_width": 200,
        "original_height": 100,
        "value": {"x": x, "y": y, "width": w, "height": h, "rectanglelabels": [label]},
    }


# (regions, expected prompts in pixels of a 200 x 100 image, expected label)
REGIONS = [
    ([_kp(50, 50)], [Prompt(points=[Point(x=100, y=50)])], "Cat"),
    (
        [_kp(10, 20), _kp(90, 80, is_positive=False)],
        [Prompt(points=[Point(x=20, y=20), Point(x=180, y=80, positive=False)])],
        "Cat",
    ),
    (  # a negative label, whatever is_positive says
        [_kp(10, 20), _kp(30, 40, label="Negative")],
        [Prompt(points=[Point(x=20, y=20), Point(x=60, y=40, positive=False)])],
        "Cat",
    ),
    ([_rect(10, 20, 50, 60)], [Prompt(box=Box(x=70, y=50, width=100, height=60))], "Cat"),
    (  # points join the first box; a second box is a prompt (a mask) of its own
        [_rect(0, 0, 10, 10), _kp(5, 5), _rect(50, 50, 20, 20, label="Dog")],
        [
            Prompt(points=[Point(x=10, y=5)], box=Box(x=10, y=5, width=20, height=10)),
            Prompt(box=Box(x=120, y=60, width=40, height=20)),
        ],
        "Cat",
    ),
    ([_kp(10, 20, is_positive=False)], [], None),  # nothing positive: no prompt
    ([{"type": "textarea", "value": {"text": ["x"]}}], [], None),  # not a prompt type
]


@pytest.mark.parametrize(("regions", "prompts", "label"), REGIONS)
def test_regions_to_prompts(regions: list[dict], prompts: list[Prompt], label: str | None) -> None:
    got = image_prompts(regions, ["negative", "background"])
    assert got.prompts == prompts
    assert got.label == label
    if prompts:
        assert (got.to_name, got.size) == ("image", (200, 100))


@pytest.mark.parametrize(
    ("region", "field_part"),
    [
        ({**_kp(1, 2), "original_width": None}, "original_width"),
        ({**_kp(1, 2), "value": {"x": "a", "y": 2}}, "value.x"),
        ({**_kp(1, 2), "original_height": 0}, "original_width/height"),
        ("not a region", "expected a region"),
    ],
)
def test_bad_regions_are_400s(region: object, field_part: str) -> None:
    with pytest.raises(BadRequest) as exc:
        image_prompts([region], [])
    assert field_part in exc.value.message and exc.value.field == "params.context.result"


def test_mask_results_brush_and_polygon() -> None:
    mask = np.zeros((100, 200), bool)
    mask[20:60, 50:150] = True
    brush_ctl = Control("brushlabels", "brush", "image", ("Cat", "Dog"))
    poly_ctl = Control("polygonlabels", "poly", "image", ("Dog",))
    [b] = mask_results(mask, 0.75, brush_ctl, "Cat")
    assert b["type"] == "brushlabels" and b["value"]["brushlabels"] == ["Cat"]
    assert (b["original_width"], b["original_height"], b["score"]) == (200, 100, 0.75)
    decoded = ls_brush.decode_rle(bytes(b["value"]["rle"])).reshape(100, 200, 4)[:, :, 3] > 0
    assert (decoded == mask).all()
    [p] = mask_results(mask, 0.75, poly_ctl, "Cat")  # "Cat" is not a label of poly: its first
    assert p["value"]["polygonlabels"] == ["Dog"]
    pixels = [[round(x * 200 / 100), round(y * 100 / 100)] for x, y in p["value"]["points"]]
    assert pixels == postprocess.mask_to_polygons(mask)[0]


@pytest.mark.parametrize(
    ("rows", "cols", "expected"),
    [
        ((20, 60), (50, 150), {"x": 25.0, "y": 20.0, "width": 50.0, "height": 40.0}),
        ((0, 100), (0, 200), {"x": 0.0, "y": 0.0, "width": 100.0, "height": 100.0}),
        ((0, 0), (0, 0), None),
    ],
)
def test_mask_box_percentages(rows: tuple, cols: tuple, expected: dict | None) -> None:
    mask = np.zeros((100, 200), bool)
    mask[slice(*rows), slice(*cols)] = True
    assert mask_box_pct(mask) == expected


@pytest.mark.parametrize(
    ("framerate", "fps", "n", "pairs"),
    [
        (10, 10, 8, [(1, 0), (2, 1), (8, 7)]),
        (24, 12, 10, [(1, 0), (3, 1), (19, 9)]),  # Label Studio counts at 24, the clip at 12
        (25, 0, 5, [(1, 0), (5, 4)]),  # fps unknown: same numbering
    ],
)
def test_frame_numbering(framerate: float, fps: float, n: int, pairs: list) -> None:
    clock = FrameClock(framerate, fps, n)
    for frame, index in pairs:
        assert clock.to_index(frame) == index
        assert clock.to_frame(index) == frame
    assert clock.to_index(10_000) == n - 1 and clock.to_index(-3) == 0


def test_video_objects_keyframes() -> None:
    region = {
        "id": "abc",
        "type": "videorectangle",
        "from_name": "box",
        "to_name": "video",
        "value": {
            "labels": ["Ball"],
            "sequence": [
                {"frame": 5, "enabled": True, "x": 1, "y": 2, "width": 3, "height": 4},
                {"frame": 2, "enabled": True, "x": 5, "y": 6, "width": 7, "height": 8},
                {"frame": 9, "enabled": False, "x": 0, "y": 0, "width": 1, "height": 1},
            ],
        },
    }
    [obj] = video_objects([region, {"type": "rectanglelabels"}])
    assert (obj.region_id, obj.label, obj.from_name) == ("abc", "Ball", "box")
    assert [k.frame for k in obj.keyframes] == [2, 5]
    assert obj.keyframes[0].box == {"x": 5, "y": 6, "width": 7, "height": 8}


@pytest.mark.parametrize(
    ("value", "expected"),
    [  # regions overhanging the image are clamped to it (Label Studio allows them)
        ({"x": -10, "y": 90, "width": 30, "height": 30}, Box(x=20, y=95, width=40, height=10)),
        ({"x": 95, "y": 0, "width": 200, "height": 1e9}, Box(x=195, y=50, width=10, height=100)),
    ],
)
def test_boxes_are_clamped_to_the_image(value: dict, expected: Box) -> None:
    region = {**_rect(0, 0, 0, 0), "value": {**value, "rectanglelabels": ["Cat"]}}
    assert image_prompts([region], []).prompts == [Prompt(box=expected)]


@pytest.mark.parametrize("value", [[1, 2], "text", 5, None])
def test_odd_region_values_are_no_500(value: object) -> None:
    region = {**_kp(1, 2), "value": value}
    with pytest.raises(BadRequest):
        image_prompts([region], [])
    assert video_objects([{"type": "videorectangle", "value": value}]) == []


def _object(frames: list[int]) -> VideoObject:
    box = {"x": 1.0, "y": 1.0, "width": 5.0, "height": 5.0}
    return VideoObject("r", None, "box", "video", [Keyframe(f, box) for f in frames])


# (keyframe frames, where tracking starts, the keyframes used as prompts)
STARTS = [
    ([5], 5, [5]),
    ([1, 50], 1, [1, 50]),  # a correction later on: tracked from the first, both prompts
    (list(range(1, 31)), 30, [27, 28, 29, 30]),  # an accepted answer: continue after it
    ([1, 2, 3, 40, 41, 60], 3, [1, 2, 3, 40, 41, 60]),
    ([*range(1, 11), 20, 21, 22, 23, 24, 25], 10, [7, 8, 9, 10, 20, 21, 22, 23]),
]


@pytest.mark.parametrize(("frames", "start", "prompts"), STARTS)
def test_tracking_start_and_prompts(frames: list[int], start: int, prompts: list[int]) -> None:
    obj = _object(frames)
    assert obj.start() == start
    assert [k.frame for k in obj.prompts()] == prompts


@pytest.mark.parametrize(
    "runs",
    [
        [(1, 0)],
        [(1, 3), (1, 4), (2, 5), (1, 3)],  # literal values between runs
        [(8, 1), (9, 2), (16, 3), (17, 4), (256, 5), (257, 6)],  # each length field's edges
        [(65536, 7), (65537, 8), (131072, 9), (131073, 10), (65536 * 3 + 200, 11)],
    ],
)
def test_rle_encoder_is_label_studios_own(runs: list[tuple[int, int]]) -> None:
    values = np.concatenate([np.full(n, v, dtype=np.uint8) for n, v in runs])
    assert brush.encode(values) == list(ls_brush.encode_rle(values))
    assert ls_brush.decode_rle(bytes(brush.encode(values))).tolist() == values.tolist()
