"""The Label Studio ML backend use case: health, setup, predict, over the image and video
services (built in `wiring.build_services`; nothing here re-implements them).

predict, per task (Label Studio sends `tasks`, `label_config`, `params.context`):
- an image with keypoint / rectangle regions in the context: SAM 2 prompts -> the mask
  `/sam2/segment_image` gives for them, as every BrushLabels / PolygonLabels control on
  that image. The image is embedded once under a stable id of its reference (`image_id`),
  so the next click on the task costs a decoder call, not a download and an embed;
- an image without context: SAM 3 pre-labels (`prelabel`): every instance of the config's
  labels (as concept phrases), as one prediction; without a SAM 3 model, no prediction and
  a note saying how to get one;
- a video with VideoRectangle keyframes (the context's, else the latest annotation's or
  draft's): one sam2serve video session, every object prompted with its keyframe boxes and
  propagated forward (`video_tracks`).
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import ValidationError

from sam2serve.config import Settings
from sam2serve.errors import BadRequest, NotInCache
from sam2serve.image.schema import Limits, SegmentRequest, SegmentResponse
from sam2serve.image.service import ImageService
from sam2serve.label_studio.labeling_config import (
    MASK_TAGS,
    VIDEO_TAGS,
    LabelingConfig,
    MediaObject,
    parse_config,
)
from sam2serve.label_studio.media import LabelStudioMedia
from sam2serve.label_studio.prelabel import phrases_for, prelabel_controls, run_prelabel
from sam2serve.label_studio.regions import image_prompts, video_objects
from sam2serve.label_studio.results import mask_results
from sam2serve.label_studio.video_tracks import VideoTracks
from sam2serve.media import postprocess
from sam2serve.media.decode import LoadedImage, decode_image_bytes
from sam2serve.media.fetch import ByteCap
from sam2serve.runtime.weights import WeightsError
from sam2serve.sam3.schema import ConceptSegmentRequest, ConceptSegmentResponse
from sam2serve.sam3.service import Sam3Service
from sam2serve.video.service import VideoService
from sam2serve.wire import ImageInput, schema_error

#: notes of an image task without context that gets no pre-label
NO_PRELABEL_LABELS = (
    "no labels to pre-label with SAM 3: add a BrushLabels, PolygonLabels or RectangleLabels "
    "control with <Label> values on the image (or mark a region with a smart tool)"
)
INTERACTIVE = "meanwhile mark a keypoint or rectangle with a smart tool (interactive SAM 2)"
NO_SAM3 = (
    "pre-labelling needs SAM 3, not available on this server: put Meta's gated sam3.pt "
    f"(huggingface.co/facebook/sam3) in SAM2SERVE_WEIGHTS_DIR; {INTERACTIVE}"
)
SKIPPED_VIDEO = (
    "not tracked in this call: its time budget (SAM2SERVE_LABEL_STUDIO_BUDGET_S) went to "
    "the tasks before it; ask again for the rest"
)
SKIPPED_PRELABEL = (
    "not pre-labelled in this call: its time budget (SAM2SERVE_LABEL_STUDIO_BUDGET_S) went "
    "to the tasks before it; ask again for the rest"
)
MAX_TASKS = 100


@dataclass
class TaskAnswer:
    """One task's answer: its prediction, or None (no prediction: `[]` on the wire), and a
    note saying what was done, cut short or skipped."""

    prediction: dict[str, Any] | None
    note: str | None = None


@dataclass
class CallBudget:
    """The time one predict call may take (`deadline`, monotonic seconds), shared by its
    tasks: the first video or pre-label task always starts, a later one only while the time
    left is at least what the last one took."""

    deadline: float
    last_task_s: float | None = None

    def room_for_another(self) -> bool:
        return self.last_task_s is None or time.monotonic() + self.last_task_s < self.deadline


def _package_version() -> str:
    try:  # not `sam2serve.__version__`: the root package sits above every layer
        return version("sam2serve")
    except PackageNotFoundError:
        return "0"


def _task_field(task: dict[str, Any], key: str) -> str:
    return f"tasks[{task.get('id')}].data.{key}"


class LabelStudioBackend:
    def __init__(
        self, images: ImageService, video: VideoService, sam3: Sam3Service | None = None
    ) -> None:
        self.images = images
        self.sam3 = sam3
        self.settings: Settings = images.settings
        self.media = LabelStudioMedia(self.settings, images.fetcher)
        self.video = VideoTracks(video, self.media, self.settings)

    # -- health / setup ------------------------------------------------------------------

    def model_version(self) -> str:
        """`sam2serve-<version>-<default model id>`: no model is loaded to know it."""
        return f"sam2serve-{_package_version()}-{self.images.spec_for(None).model_id}"

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": "sam2serve", "model_version": self.model_version()}

    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        """Label Studio's connect call: check the config parses, say what will be answered.
        Never loads a model (Label Studio gives it 3 s)."""
        config = parse_config(_optional_str(body.get("schema"), "schema"))
        return {"model_version": self.model_version(), "controls": config.describe()}

    # -- predict -------------------------------------------------------------------------

    async def predict(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        """One answer per task, in order: a prediction, or `[]` (nothing to say: Label Studio
        stores no prediction, so asking again later is not blocked); the notes of both
        (what was done, cut short or skipped) in the answer's `note`."""
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("tasks: expected a list of task objects", field="tasks")
        if len(tasks) > MAX_TASKS:
            raise BadRequest(
                f"tasks: {len(tasks)} tasks in one call is over {MAX_TASKS}; Label Studio "
                "sends smaller batches",
                field="tasks",
            )
        config = parse_config(_optional_str(body.get("label_config"), "label_config"))
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        context = params.get("context") if isinstance(params.get("context"), dict) else {}
        regions = context.get("result") if isinstance(context.get("result"), list) else []
        call = CallBudget(time.monotonic() + self.settings.label_studio_budget_s)
        results: list[dict[str, Any] | list[Any]] = []
        notes: list[str] = []
        for task in tasks:
            answer = await self.predict_task(task, config, regions, namespace, call)
            if answer.note and answer.note not in notes:
                notes.append(answer.note)
            if answer.prediction is None:
                results.append([])
            else:
                note = {"note": answer.note} if answer.note else {}
                results.append({**answer.prediction, **note})
        out: dict[str, Any] = {"results": results, "model_version": self.model_version()}
        if notes:
            out["note"] = "; ".join(notes)
        return out

    async def predict_task(
        self,
        task: dict[str, Any],
        config: LabelingConfig,
        regions: list[Any],
        namespace: str,
        call: CallBudget,
    ) -> TaskAnswer:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        video = config.first_object("video")
        if video is not None and isinstance(data.get(video.data_key), str):
            controls = config.controls_for(video.name, VIDEO_TAGS)
            objects = video_objects(regions) or video_objects(_latest_regions(task))
            if not controls or not objects:
                why = "add a VideoRectangle control" if not controls else "draw a box"
                return TaskAnswer(None, f"no keyframe boxes to track: {why} on the video first")
            if not call.room_for_another():
                return TaskAnswer(None, SKIPPED_VIDEO)
            started = time.monotonic()
            answer = await self.video.track(
                task, video, controls[0], objects, namespace, call.deadline
            )
            call.last_task_s = time.monotonic() - started
            note = answer.pop("note", None)
            return TaskAnswer({**answer, "model_version": self.model_version()}, note)
        if not regions:
            return await self.prelabel(task, config, namespace, call)
        return await self.segment_task(task, config, regions, namespace)

    async def prelabel(
        self, task: dict[str, Any], config: LabelingConfig, namespace: str, call: CallBudget
    ) -> TaskAnswer:
        """An image task without context -> every instance of the config's labels (SAM 3
        concept prompts, `prelabel` module) as one prediction. No prediction, and a note,
        when the config has no labels, SAM 3 is not available, or the call's time is spent."""
        image = config.first_object("image")
        controls = prelabel_controls(config, image.name) if image is not None else []
        if image is None or not controls:
            return TaskAnswer(None, NO_PRELABEL_LABELS)
        if self.sam3 is None:
            return TaskAnswer(None, NO_SAM3)
        if not call.room_for_another():
            return TaskAnswer(None, SKIPPED_PRELABEL)
        sam3 = self.sam3
        phrases = phrases_for(controls, self.settings.label_studio_phrases)
        cap = sam3.settings.max_phrase_chars
        too_long = [p.text for p in phrases if len(p.text) > cap]
        phrases = [p for p in phrases if len(p.text) <= cap]
        if not phrases:
            return TaskAnswer(None, _too_long_note(too_long, cap))
        threshold = self.settings.label_studio_prelabel_threshold
        field = _task_field(task, image.data_key)
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        if not isinstance(data.get(image.data_key), str) or not data[image.data_key]:
            return TaskAnswer(None, f"{field}: the task has no image to pre-label")
        reference = _reference(task, image, field)
        image_id = "ls3-" + self.image_id(reference)[3:]

        async def segment(texts: list[str]) -> ConceptSegmentResponse:
            body = {
                "image_id": image_id,
                "format": "rle",
                "output_prob_thresh": threshold,
                "prompts": [{"type": "text", "text": text} for text in texts],
            }
            try:
                request = ConceptSegmentRequest.model_validate(
                    body, context={"sam3_limits": sam3.limits}
                )
            except ValidationError as exc:  # not expected: phrases are checked above
                raise schema_error(exc) from exc
            try:  # embedded before: the phrases only
                return await sam3.concept_segment(request, namespace)
            except NotInCache:
                pixels = await self.load_image(reference, task.get("id"), field, namespace)
                return await sam3.concept_segment(request, namespace, pixels=pixels)

        started = time.monotonic()
        try:
            found = await run_prelabel(
                phrases, controls, sam3.settings.max_prompts, segment, call.deadline
            )
        except WeightsError as exc:  # what is missing or wrong, and where it goes
            return TaskAnswer(None, f"pre-labelling needs SAM 3: {exc.message}; {INTERACTIVE}")
        call.last_task_s = time.monotonic() - started
        if not found.scores:
            texts = ", ".join(repr(p.text) for p in phrases)
            found.notes.insert(
                0,
                f"SAM 3 found no instance of {texts} scoring over {threshold} "
                "(SAM2SERVE_LABEL_STUDIO_PRELABEL_THRESHOLD)",
            )
        if too_long:
            found.notes.append(_too_long_note(too_long, cap))
        prediction = {
            "result": found.result,
            "score": found.score(),
            "model_version": self.model_version(),
        }
        return TaskAnswer(prediction, "; ".join(found.notes) or None)

    async def segment_task(
        self, task: dict[str, Any], config: LabelingConfig, regions: list[Any], namespace: str
    ) -> TaskAnswer:
        found = image_prompts(regions, self.settings.label_studio_negative_labels)
        image = config.objects.get(found.to_name) or config.first_object("image")
        if image is None or image.kind != "image":
            return self._empty("the labeling config has no Image tag for these regions")
        controls = config.controls_for(image.name, MASK_TAGS)
        if not controls:
            return self._empty(f"add a BrushLabels or PolygonLabels control on {image.name!r}")
        if not found.prompts:
            return self._empty("add a positive keypoint or a rectangle")
        response = await self._segment(task, image, found.prompts, namespace)
        result: list[dict[str, Any]] = []
        scores = []
        for prediction in response.predictions:
            mask = postprocess.rle_to_mask(prediction.masks.model_dump())  # type: ignore[union-attr]
            scores.append(prediction.confidence)
            for control in controls:
                result += mask_results(mask, prediction.confidence, control, found.label)
        score = max(scores) if scores else 0.0
        return TaskAnswer({"result": result, "score": score, "model_version": self.model_version()})

    async def _segment(
        self, task: dict[str, Any], image: MediaObject, prompts: list[Any], namespace: str
    ) -> SegmentResponse:
        field = _task_field(task, image.data_key)
        reference = _reference(task, image, field)
        s = self.settings
        try:
            request = SegmentRequest.model_validate(
                {"image_id": self.image_id(reference), "prompts": prompts, "format": "rle"},
                context={
                    "limits": Limits(s.max_prompts, s.max_points_per_prompt, s.max_coordinate)
                },
            )
        except ValidationError as exc:  # too many points, coordinates off any image
            raise schema_error(exc) from exc
        try:  # cached: a decoder call only
            result = await self.images.segment(request, namespace)
        except NotInCache:
            pixels = await self.load_image(reference, task.get("id"), field, namespace)
            result = await self.images.segment(request, namespace, pixels=pixels)
        assert isinstance(result, SegmentResponse)  # format rle
        return result

    def image_id(self, reference: str) -> str:
        """A stable image_id for a task's image: its reference, on this Label Studio."""
        digest = hashlib.sha256(f"{self.media.base}\n{reference}".encode()).hexdigest()
        return "ls-" + digest[:40]

    async def load_image(
        self, reference: str, task_id: Any, field: str, namespace: str
    ) -> LoadedImage:
        if reference.startswith("data:"):
            return await self.images.load(ImageInput(type="base64", value=reference), namespace)
        task = task_id if isinstance(task_id, int) else None
        data = await self.media.fetch(
            reference, task, cap=ByteCap(self.settings.url_max_bytes), field=field
        )
        decode = functools.partial(decode_image_bytes, max_pixels=self.settings.max_image_pixels)
        return await self.images.decode_lane.run(decode, data, tenant=namespace)

    def _empty(self, note: str) -> TaskAnswer:
        """An interactive call's answer with no region (the annotator sees nothing new)."""
        return TaskAnswer({"result": [], "score": 0.0, "model_version": self.model_version()}, note)


def _too_long_note(phrases: list[str], cap: int) -> str:
    names = ", ".join(repr(p[:40] + "...") for p in phrases)
    return (
        f"not searched for {names}: over SAM 3's {cap} characters per phrase "
        "(SAM2SERVE_SAM3_MAX_PHRASE_CHARS); map the label to a short noun phrase in "
        "SAM2SERVE_LABEL_STUDIO_PHRASES"
    )


def _reference(task: dict[str, Any], image: MediaObject, field: str) -> str:
    """The task's reference to its image (a URL, a Label Studio path, a data: URI)."""
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    reference = data.get(image.data_key)
    if not isinstance(reference, str) or not reference:
        raise BadRequest(f"{field}: the task has no image reference", field=field)
    return reference


def _optional_str(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"{field}: expected the labeling config as a string", field=field)


def _latest_regions(task: dict[str, Any]) -> list[Any]:
    """The result of the task's most recent annotation (or draft) that has one."""
    found: list[tuple[str, int, list[Any]]] = []
    for kind in ("annotations", "drafts"):
        for item in task.get(kind) or []:
            if isinstance(item, dict) and isinstance(item.get("result"), list) and item["result"]:
                stamp = str(item.get("updated_at") or item.get("created_at") or "")
                ident = item.get("id") if isinstance(item.get("id"), int) else 0
                found.append((stamp, ident, item["result"]))
    return max(found, key=lambda f: (f[0], f[1]))[2] if found else []
