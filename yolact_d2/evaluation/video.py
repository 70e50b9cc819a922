"""Video evaluation of YolactEdge in the official protocol: per-frame COCO AP over the keyframe phases.

Official YolactEdge eval.py (YouTube-VIS, `use_all_frames`) plays every clip `keyframe_interval` (5)
times. In pass ("phase") p the frames t with t % 5 == p are keyframes (full network) and each frame
after one is warped from it, at warp distance (t - p) % 5. The frames before the pass's first
keyframe (t < p) have no keyframe earlier inside the clip: official runs them through the full
network (its `not meet_annot` branch), and so do we; they are "lead-in" keyframes. Every annotated
frame is scored in every pass, and AP accumulates over all passes (5 predictions per frame).

Tables (keys of the results dict, each a Detectron2 AP dict; `_derive_coco_results` prints them):
  bbox / segm                  all passes together, lead-in frames included: the official number.
  bbox_keyframe / segm_keyframe each frame once, from the pass in which it is a scheduled keyframe.
  bbox_warp{d} / segm_warp{d}  each frame t >= d once, warped from the keyframe d frames earlier.
A frame t < d has no keyframe d frames earlier inside the clip: in the pass that would warp it
from there it is a lead-in keyframe, so it is in the "all" table only (never in a warp table,
where it would be a keyframe result under a warp label, nor twice in the keyframe table, which
would weight the clips' first frames more). `keyframe_interval=1` is YolactEdge with warping
replaced by recomputation: every frame a keyframe, one pass.

How: each (frame, pass) becomes one image of a derived COCO ground truth (the frame's annotations
copied, crowds as crowds, masks as RLE), and Detectron2's COCOEvaluator (our YolactCOCOEvaluator:
YOLACT++ mask scores) scores any subset of them through `evaluate(img_ids=...)`. Why not
`convert_to_coco_dict`: it cannot read uncompressed RLE, YouTube-VIS's usual mask format.

Also measured on every warped frame (`measure_features`): the mean cosine similarity, over
positions, of the warped phase-1 P4/P5 (`YolactEdge.transfer_features`) to the frame's own
recomputed phase-1 P4/P5, next to the same for the keyframe's unwarped P4/P5: warping helps when
cos_warped > cos_keyframe. Results key `feature_transfer`.
"""
import json
import logging
import os
import tempfile
import time
from collections import OrderedDict, defaultdict
from contextlib import ExitStack
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, inference_context
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import log_every_n_seconds

from .coco import YolactCOCOEvaluator

__all__ = [
    "VideoEvaluator",
    "inference_on_video_dataset",
    "keyframe_schedule",
    "feature_transfer_similarity",
    "FRAME_KINDS",
]

logger = logging.getLogger(__name__)

FRAME_KINDS = ("keyframe", "lead_in", "warped")
# One derived COCO image per (frame, pass): id = image_id * _SLOTS + pass (passes < _SLOTS).
_SLOTS = 1024
_FEATURE_LEVELS = (("P4", 1), ("P5", 2))  # index in the phase-1 maps [P3, P4, P5]
_METRICS = ("AP", "AP50", "AP75")


def keyframe_schedule(num_frames: int, phase: int, interval: int) -> List[Tuple[str, int]]:
    """(kind, warp distance) of frames 0..num_frames-1 in pass `phase` of the official protocol.

    kind "keyframe": t >= phase and (t - phase) % interval == 0 (distance 0); "warped": the other
    frames t >= phase, distance (t - phase) % interval from the last keyframe; "lead_in": t < phase,
    run as keyframes because nothing earlier in the clip is one (distance 0).
    """
    if interval < 1 or not 0 <= phase < interval:
        raise ValueError(f"keyframe_schedule: need interval >= 1 and 0 <= phase < interval, got {phase}, {interval}.")
    out = []
    for t in range(num_frames):
        if t < phase:
            out.append(("lead_in", 0))
        else:
            d = (t - phase) % interval
            out.append(("keyframe", 0) if d == 0 else ("warped", d))
    return out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over batch and positions of the channel-wise cosine similarity of (B, C, h, w) maps."""
    return float(F.cosine_similarity(a.float(), b.float(), dim=1).mean())


def feature_transfer_similarity(model, images: torch.Tensor, state, own_features: Sequence[torch.Tensor]):
    """{"P4": (cos_warped, cos_keyframe), "P5": ...} for one warped frame.

    images: the frame's normalised network input (B, 3, H, W); state: the KeyframeState it warps
    from; own_features: the frame's recomputed phase-1 maps [P3, P4, P5] (its own keyframe state;
    P3 is not read and may be None).
    """
    lateral, flows = model.predict_flow(model.partial_c3(images), state)
    warped = model.transfer_features(lateral, flows, state)  # phase-1 [P3, P4, P5], after SPA
    return {
        level: (_cosine(warped[i], own_features[i]), _cosine(state.features[i], own_features[i]))
        for level, i in _FEATURE_LEVELS
    }


# ---------------------------------------------------------------------------- ground truth
def slot_id(image_id, phase: int) -> int:
    """The derived COCO image of frame `image_id` in pass `phase`."""
    if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
        raise ValueError(f"VideoEvaluator: image_id must be an int (the record's index), got {image_id!r}.")
    return int(image_id) * _SLOTS + int(phase)


def _rle_of(segm, box_xyxy, height: int, width: int) -> dict:
    """A compressed RLE (counts as str) of a polygon list, a compressed or uncompressed RLE, or
    (a crowd without a mask) its box."""
    if isinstance(segm, dict):
        counts = segm.get("counts")
        rle = mask_util.frPyObjects(segm, height, width) if isinstance(counts, list) else dict(segm)
    elif isinstance(segm, list) and segm:
        rle = mask_util.merge(mask_util.frPyObjects([list(map(float, p)) for p in segm], height, width))
    else:
        x0, y0, x1, y1 = box_xyxy
        rle = mask_util.frPyObjects([[x0, y0, x1, y0, x1, y1, x0, y1]], height, width)[0]
    if isinstance(rle["counts"], bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}


def _coco_annotations(record: dict, num_classes: int, dataset_name: str) -> List[dict]:
    """The record's Detectron2 annotations as COCO annotations (contiguous category ids, no ids yet)."""
    h, w = int(record["height"]), int(record["width"])
    out = []
    for k, ann in enumerate(record.get("annotations", [])):
        cat = ann.get("category_id")
        if not isinstance(cat, (int, np.integer)) or not 0 <= cat < num_classes:
            raise ValueError(
                f"VideoEvaluator: dataset {dataset_name!r}, {record.get('file_name')} annotation {k}: category_id "
                f"{cat!r} is not a contiguous id in 0..{num_classes - 1} (register the set with "
                "register_ytvis_instances)."
            )
        box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
        rle = _rle_of(ann.get("segmentation"), box, h, w)
        out.append(
            {
                "category_id": int(cat),
                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                "area": float(mask_util.area(rle)),
                "iscrowd": int(ann.get("iscrowd", 0)),
                "segmentation": rle,
            }
        )
    return out


def _slot_coco_dict(records: List[dict], classes: Sequence[str], passes: int, dataset_name: str) -> dict:
    """COCO ground truth with one image per (frame, pass): the frame's annotations in each copy."""
    images, annotations = [], []
    for record in records:
        anns = _coco_annotations(record, len(classes), dataset_name)
        for p in range(passes):
            slot = slot_id(record["image_id"], p)
            images.append({"id": slot, "height": int(record["height"]), "width": int(record["width"]),
                           "file_name": str(record["file_name"])})
            for ann in anns:
                annotations.append(dict(ann, id=len(annotations) + 1, image_id=slot))
    categories = [{"id": i, "name": name} for i, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


# ---------------------------------------------------------------------------- evaluator
class VideoEvaluator(DatasetEvaluator):
    """COCO box / mask AP of a video model over the official keyframe phases (module docstring).

    Args:
        dataset_name: a registered video dataset (`register_ytvis_instances` records: `image_id`,
            `video_id`, `frame_idx`, `video_frames`, Detectron2 annotations with contiguous ids).
        keyframe_interval: 5 as official; 1: every frame a keyframe (warping replaced by recomputation).
        tasks: ("bbox", "segm") or one of them.
        measure_features: also the warped-vs-recomputed P4/P5 cosine (costs one full pass per warped frame).
        output_dir: where the results json (video_evaluation.json) goes; None: not written.
    Feed it with `inference_on_video_dataset` (it tags each input with its pass, kind and distance).
    """

    def __init__(
        self,
        dataset_name: str,
        keyframe_interval: int = 5,
        tasks: Sequence[str] = ("bbox", "segm"),
        measure_features: bool = True,
        distributed: bool = True,
        output_dir: Optional[str] = None,
    ):
        if isinstance(keyframe_interval, bool) or int(keyframe_interval) != keyframe_interval or not (
            1 <= keyframe_interval < _SLOTS
        ):
            raise ValueError(
                f"VideoEvaluator: keyframe_interval must be an integer in 1..{_SLOTS - 1}, got {keyframe_interval!r}."
            )
        unknown = sorted(set(tasks) - {"bbox", "segm"})
        if unknown or not tasks:
            raise ValueError(f"VideoEvaluator: tasks must be 'bbox' and/or 'segm', got {list(tasks)}.")
        self.dataset_name = dataset_name
        self.keyframe_interval = int(keyframe_interval)
        self.tasks = tuple(tasks)
        self.measure_features = bool(measure_features)
        self._distributed = distributed
        self._output_dir = output_dir
        self._coco = None  # the per-(frame, pass) COCOEvaluator, built on the first reset()

    def _build_coco_evaluator(self) -> YolactCOCOEvaluator:
        meta = MetadataCatalog.get(self.dataset_name)
        classes = meta.get("thing_classes")
        if not classes:
            raise ValueError(
                f"VideoEvaluator: dataset {self.dataset_name!r} has no thing_classes in its metadata; register it "
                "with register_ytvis_instances (or set MetadataCatalog.get(name).thing_classes)."
            )
        records = DatasetCatalog.get(self.dataset_name)
        self._records = {r["image_id"]: r for r in records}
        if len(self._records) != len(records):
            raise ValueError(f"VideoEvaluator: dataset {self.dataset_name!r} has repeated image_id values.")
        gt = _slot_coco_dict(records, classes, self.keyframe_interval, self.dataset_name)
        self._tmp = tempfile.TemporaryDirectory(prefix="yolact_video_eval_")  # removed with the evaluator
        json_file = os.path.join(self._tmp.name, "ground_truth_per_pass.json")
        with open(json_file, "w") as f:
            json.dump(gt, f)
        # Contiguous ids in the json: no thing_dataset_id_to_contiguous_id, so COCOEvaluator maps
        # nothing (it rewrites the category ids of its stored results in place at every evaluate()).
        name = f"{self.dataset_name}@video_passes"
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        MetadataCatalog.get(name).set(json_file=json_file, thing_classes=list(classes))
        return YolactCOCOEvaluator(
            name, tasks=self.tasks, distributed=self._distributed, output_dir=None, use_fast_impl=False
        )

    def reset(self):
        if self._coco is None:
            self._coco = self._build_coco_evaluator()
        self._coco.reset()
        self._slots: Dict[int, Tuple[str, int]] = {}  # slot -> (kind, distance)
        # (level, distance) -> [sum cos_warped, sum cos_keyframe, count]
        self._cos = defaultdict(lambda: [0.0, 0.0, 0])

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            missing = [k for k in ("image_id", "video_phase", "frame_kind", "warp_distance") if k not in inp]
            if missing:
                raise ValueError(
                    f"VideoEvaluator: input {inp.get('file_name')} has no {missing}; feed the evaluator with "
                    "yolact_d2.evaluation.inference_on_video_dataset (Detectron2's inference_on_dataset knows no "
                    "passes)."
                )
            kind, distance, phase = inp["frame_kind"], int(inp["warp_distance"]), int(inp["video_phase"])
            if kind not in FRAME_KINDS or not 0 <= phase < self.keyframe_interval:
                raise ValueError(f"VideoEvaluator: frame_kind {kind!r} / video_phase {phase} outside the schedule.")
            slot = slot_id(inp["image_id"], phase)
            if slot in self._slots:
                raise ValueError(
                    f"VideoEvaluator: frame {inp.get('file_name')} (image_id {inp['image_id']}) was given twice in "
                    f"pass {phase}; each frame is scored once per pass."
                )
            self._slots[slot] = (kind, distance)
            self._coco.process([dict(inp, image_id=slot)], [out])
            for level, (cos_warped, cos_key) in (out.get("feature_transfer") or {}).items():
                acc = self._cos[(level, distance)]
                acc[0] += cos_warped
                acc[1] += cos_key
                acc[2] += 1

    def _tables(self, slots: Dict[int, Tuple[str, int]]) -> "OrderedDict[str, List[int]]":
        """Table suffix ("" = all) -> the slots it scores, in a fixed order."""
        keyframes = sorted(s for s, (kind, _) in slots.items() if kind == "keyframe")
        tables = OrderedDict([("", sorted(slots)), ("_keyframe", keyframes)])
        for d in range(1, self.keyframe_interval):
            tables[f"_warp{d}"] = sorted(s for s, (k, dist) in slots.items() if k == "warped" and dist == d)
        return OrderedDict((name, ids) for name, ids in tables.items() if ids)

    def evaluate(self):
        slots, cos = self._slots, dict(self._cos)
        if self._distributed and comm.get_world_size() > 1:
            # Every rank calls COCOEvaluator.evaluate (a gather) for the same tables.
            slots = {s: v for part in comm.all_gather(slots) for s, v in part.items()}
            merged = defaultdict(lambda: [0.0, 0.0, 0])
            for part in comm.all_gather(cos):
                for key, acc in part.items():
                    merged[key] = [a + b for a, b in zip(merged[key], acc)]
            cos = dict(merged)
        if not slots:
            logger.warning(f"VideoEvaluator: no frame of {self.dataset_name!r} was evaluated.")
            return {}
        scored = {s // _SLOTS for s in slots}
        if len(scored) < len(self._records):
            logger.warning(
                f"VideoEvaluator: {len(self._records) - len(scored)} of the {len(self._records)} frames of "
                f"{self.dataset_name!r} were never evaluated; the AP below covers the other frames only."
            )
        results, counts = OrderedDict(), OrderedDict()
        for suffix, ids in self._tables(slots).items():
            label = {"": "all frames (every pass, lead-in keyframes included)", "_keyframe": "keyframes"}.get(
                suffix, f"warp distance {suffix[5:]}"
            )
            logger.info(f"Video evaluation of {self.dataset_name!r}, {label}: {len(ids)} frame passes")
            table = self._coco.evaluate(img_ids=ids)
            counts[suffix] = len(ids)
            for task, res in (table or {}).items():
                results[task + suffix] = res
        if not comm.is_main_process():
            return {}
        logger.info("Video evaluation summary:\n" + _summary_table(results, counts, self.tasks))
        if cos:
            results["feature_transfer"] = _feature_summary(cos)
            logger.info(
                "Feature transfer: mean cosine to the recomputed phase-1 maps, warped vs the keyframe's "
                "unwarped ones:\n" + _feature_table(results["feature_transfer"])
            )
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, "video_evaluation.json"), "w") as f:
                json.dump(results, f, indent=1)
        return results


def _feature_summary(cos: Dict[Tuple[str, int], list]) -> Dict[str, float]:
    """cos_{warped,keyframe}_{level} over all warped frames, and _d{distance} for each distance."""
    out = {}
    for level in sorted({lv for lv, _ in cos}):
        per_d = sorted((d, acc) for (lv, d), acc in cos.items() if lv == level)
        total = [sum(acc[i] for _, acc in per_d) for i in range(3)]
        out[f"cos_warped_{level}"] = total[0] / total[2]
        out[f"cos_keyframe_{level}"] = total[1] / total[2]
        for d, acc in per_d:
            out[f"cos_warped_{level}_d{d}"] = acc[0] / acc[2]
            out[f"cos_keyframe_{level}_d{d}"] = acc[1] / acc[2]
    out["num_warped_frames"] = float(total[2])
    return out


def _feature_table(summary: Dict[str, float]) -> str:
    """One row per warp distance (and all of them), cos_warped / cos_keyframe per level."""
    levels = [lv for lv, _ in _FEATURE_LEVELS if f"cos_warped_{lv}" in summary]
    distances = sorted({int(k.rsplit("_d", 1)[1]) for k in summary if "_d" in k and k.startswith("cos_")})
    rows = []
    for label, tail in [(f"warp{d}", f"_d{d}") for d in distances] + [("all warped", "")]:
        rows.append([label] + [summary[f"cos_{kind}_{lv}{tail}"] for lv in levels for kind in ("warped", "keyframe")])
    headers = ["frames"] + [f"{lv} {kind}" for lv in levels for kind in ("warped", "keyframe")]
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".4f", numalign="left")


def _summary_table(results, counts, tasks) -> str:
    rows = []
    for suffix, n in counts.items():
        row = [suffix[1:] or "all", n]
        for task in tasks:
            res = results.get(task + suffix, {})
            row += [res.get(m, float("nan")) for m in _METRICS]
        rows.append(row)
    headers = ["frames", "passes"] + [f"{t} {m}" for t in tasks for m in _METRICS]
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".3f", numalign="left")


# ---------------------------------------------------------------------------- runner
def _videos(records: List[dict], dataset_name: str) -> List[Tuple[object, List[Optional[dict]], List[str]]]:
    """(video_id, record of each frame or None, frame paths) per video, in first-seen order."""
    by_video: "OrderedDict[object, Dict[int, dict]]" = OrderedDict()
    for r in records:
        missing = [k for k in ("video_id", "frame_idx") if k not in r]
        if missing:
            raise ValueError(
                f"Video evaluation: dataset {dataset_name!r}, record {r.get('file_name')} has no {missing}: it needs "
                "per-frame records of a video dataset (yolact_d2.data.video.register_ytvis_instances)."
            )
        frames = by_video.setdefault(r["video_id"], {})
        # video_frame_idx: the position among all of the video's frames (YouTube-VIS annotates every
        # 5th; with all frames registered the schedule runs over all of them, as official).
        t = int(r.get("video_frame_idx", r["frame_idx"]))
        if t in frames:
            raise ValueError(f"Video evaluation: dataset {dataset_name!r}: video {r['video_id']} has frame {t} twice.")
        frames[t] = r
    out = []
    for vid, frames in by_video.items():
        paths = next(iter(frames.values())).get("video_frames")
        n = len(paths) if paths else max(frames) + 1
        if not paths and len(frames) != n:
            raise ValueError(
                f"Video evaluation: dataset {dataset_name!r}, video {vid}: frames "
                f"{sorted(set(range(n)) - set(frames))} have no record and the records carry no 'video_frames' to "
                "read them from."
            )
        if max(frames) >= n:
            raise ValueError(
                f"Video evaluation: dataset {dataset_name!r}, video {vid}: frame {max(frames)} >= its {n} frames."
            )
        out.append((vid, [frames.get(t) for t in range(n)], list(paths or [frames[t]["file_name"] for t in range(n)])))
    return out


def _check_model(model, interval: int, measure: bool) -> bool:
    """Raise unless `model` can be played at `interval`; returns whether features can be measured."""
    if not hasattr(model, "inference_video"):
        raise TypeError(
            f"Video evaluation: {type(model).__name__} has no inference_video(batched_inputs, state, keyframe); "
            "it needs a YolactEdge model (configs/yolact_edge/)."
        )
    if interval > 1 and not getattr(model, "is_video_model", False):
        raise ValueError(
            f"Video evaluation: {type(model).__name__} is an image model (no flow_net), so it cannot warp "
            f"(keyframe_interval={interval}). Evaluate a video config (configs/yolact_edge/yolact_edge_vid_*.py), or "
            "every frame as a keyframe: dataloader.evaluator.keyframe_interval=1."
        )
    parts = ("preprocess_image", "keyframe_features", "partial_c3", "predict_flow", "transfer_features")
    can_measure = interval > 1 and all(hasattr(model, p) for p in parts)
    if measure and interval > 1 and not can_measure:
        logger.warning(
            f"Video evaluation: {type(model).__name__} lacks one of {parts}: no feature-transfer measurement."
        )
    return measure and can_measure


def inference_on_video_dataset(model, evaluator: VideoEvaluator, mapper=None):
    """Plays every clip of `evaluator.dataset_name` once per pass of its keyframe schedule through
    `model.inference_video` and returns `evaluator.evaluate()`.

    mapper: the test mapper (record -> model input with "image", "height", "width"); default
        YolactDatasetMapper(is_train=False), whose images the model resizes itself.
    Videos are split between processes (rank r plays videos r, r + N, ...); each clip's frames are
    mapped once and kept for its passes. Frames without a record (not annotated) are run only when
    they are keyframes (they give the state), never scored, as official --fast_eval.
    """
    interval = evaluator.keyframe_interval
    measure = _check_model(model, interval, evaluator.measure_features)
    if mapper is None:
        from yolact_d2.data import YolactDatasetMapper

        mapper = YolactDatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    videos = _videos(DatasetCatalog.get(evaluator.dataset_name), evaluator.dataset_name)
    mine = videos[comm.get_rank():: comm.get_world_size()]
    evaluator.reset()
    start, passes = time.perf_counter(), 0
    with ExitStack() as stack:
        if isinstance(model, torch.nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        for i, (vid, records, paths) in enumerate(mine):
            inputs = [None] * len(paths)
            own = {}  # frame -> its phase-1 maps as a keyframe (the recomputed features)
            for phase in range(interval):
                state = None
                for t, (kind, distance) in enumerate(keyframe_schedule(len(paths), phase, interval)):
                    record = records[t]
                    if record is None and kind == "warped":
                        continue  # unannotated and not a keyframe: nothing depends on it
                    if inputs[t] is None:
                        inputs[t] = _mapped(mapper, record or {"file_name": paths[t]})
                    outputs, new_state = model.inference_video([inputs[t]], state, keyframe=kind != "warped")
                    passes += 1
                    if kind != "warped":
                        state = new_state
                        if measure:
                            own[t] = (None,) + tuple(state.features[1:])  # P4/P5 only: P3 is not compared
                    if record is None:
                        continue
                    out = outputs[0]
                    if measure and kind == "warped":
                        out = dict(out, feature_transfer=_measure(model, inputs[t], state, own, t))
                    tagged = dict(inputs[t], video_phase=phase, frame_kind=kind, warp_distance=distance)
                    evaluator.process([tagged], [out])
            log_every_n_seconds(
                logging.INFO, f"Video evaluation: video {i + 1}/{len(mine)} ({vid}) done, {passes} frame passes, "
                f"{(time.perf_counter() - start) / max(passes, 1):.4f} s per pass", n=5,
            )
    logger.info(
        f"Video evaluation: {passes} frame passes of {len(mine)} videos ({interval} per frame) in "
        f"{time.perf_counter() - start:.1f} s."
    )
    results = evaluator.evaluate()
    return {} if results is None else results


def _mapped(mapper, record: dict) -> dict:
    out = mapper(record)
    if out is None:
        raise ValueError(
            f"Video evaluation: the mapper returned None for {record.get('file_name')}; use a test mapper "
            "(is_train=False)."
        )
    return out


def _measure(model, inp: dict, state, own: dict, t: int):
    images = model.preprocess_image([inp], resize=True).tensor
    if t not in own:
        own[t] = (None,) + tuple(model.keyframe_features(images)[1].features[1:])
    return feature_transfer_similarity(model, images, state, own[t])
