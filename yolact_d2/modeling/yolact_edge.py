"""YolactEdge (Liu, Rivera-Soto, Xiao, Lee, ICRA 2021): YOLACT v1 plus feature transfer on video.

Image models are YOLACT v1 with the FPN run in two phases (the same results). Video models add
FlowNetMini and SPA: keyframes run the full network and leave a `KeyframeState`; the frames in
between run the backbone only up to C3 and warp the keyframe's phase-1 P4/P5 (see
`feature_transfer.py`). Both kinds of frame end in Yolact's protonet, head and Fast NMS.

Training follows the official stages (`training_stage`): "image" (plain YOLACT training), "flow"
(flow pre-training: only the flow net learns, against ground-truth flow) and "video" (fine-tuning:
backbone and FPN phase 1 frozen, the annotated frame warped from a reference frame a few frames
earlier, YOLACT losses on the warped pass plus feature matching). Inputs are the dicts of
`yolact_d2.data.video.VideoPairMapper`: "image" (the annotated / target frame), "reference_image",
"flow" ((2, H, W) backward flow in pixels, target(x) ~ reference(x + flow)), "instances".
"""
import dataclasses
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList, Instances

from yolact_d2.modeling.feature_transfer import KeyframeState, partial_backbone_forward, warp_features
from yolact_d2.modeling.flow import FLOW_LOSS_PENALTIES, flow_epe_loss, official_flow_to_pixels, pixel_flow_to_official
from yolact_d2.modeling.fpn import YolactFPN
from yolact_d2.modeling.meta_arch import Yolact
from yolact_d2.modeling.video_losses import LOCATIONS, feature_matching_loss

TRAINING_STAGES = ("image", "flow", "video")


@META_ARCH_REGISTRY.register()
class YolactEdge(Yolact):
    """Yolact's keyword arguments plus the video parts (None for image models).

    Args:
        flow_net: FlowNetMini (its pre-conv included); None: an image model (keyframes only).
        spa: SPA refinement of the warped P4/P5 (official vid configs); None: no refinement.
        training_stage: "image", "flow" or "video" (module docstring); "flow" and "video" need a flow_net.
        feature_match_locations: official `fm_loss_loc`, "L", "P" or "L+P" (vid configs: "L+P").
        feature_match_weight: official `fm_loss_alpha` (1.0); 0 leaves `loss_feature_match` out.
        base_backward: official `flow.base_backward` (True): the video stage also trains on the YOLACT
            losses of the annotated frame's full pass, logged with a `_full` suffix (`loss_box_full`, ...).
        video_flow_loss_weight: beyond official (0: off): in the video stage, add the EPE of the warp's
            two flows against the data's ground-truth flow as `loss_flow` (items without "flow" skip it).
        flow_loss_penalty: "epe" (official) or "squared" (beyond official, see `flow_epe_loss`): the
            per-pixel error of the flow stage's and the video stage's `loss_flow`.
    The backbone must be a YolactFPN with three inputs (C3-C5) whose bottom-up network can run up
    to C3 alone (see `partial_backbone_forward`).
    """

    def __init__(
        self,
        *,
        flow_net: Optional[nn.Module] = None,
        spa: Optional[nn.Module] = None,
        training_stage: str = "image",
        feature_match_locations: str = "L+P",
        feature_match_weight: float = 1.0,
        base_backward: bool = True,
        video_flow_loss_weight: float = 0.0,
        flow_loss_penalty: str = "epe",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(self.backbone, YolactFPN) or len(self.backbone.in_features) != 3:
            raise ValueError(
                f"YolactEdge: the backbone must be a YolactFPN over three bottom-up features (C3-C5), got "
                f"{type(self.backbone).__name__}; YolactEdge warps its phase-1 P4/P5."
            )
        if spa is not None and flow_net is None:
            raise ValueError("YolactEdge: spa refines warped features; it needs a flow_net too (or set spa=None).")
        if training_stage not in TRAINING_STAGES:
            raise ValueError(f"YolactEdge: training_stage must be one of {TRAINING_STAGES}, got {training_stage!r}.")
        if training_stage != "image" and flow_net is None:
            raise ValueError(
                f"YolactEdge: training_stage={training_stage!r} trains the flow net, but flow_net is None; "
                "use a video config (configs/yolact_edge/moving_shapes/*.py, yolact_edge_vid_*.py)."
            )
        if feature_match_locations not in LOCATIONS:
            raise ValueError(f"YolactEdge: feature_match_locations must be one of {LOCATIONS}, got {feature_match_locations!r}.")
        self.flow_net = flow_net
        self.spa = spa
        self.training_stage = training_stage
        self.feature_match_locations = feature_match_locations
        self.feature_match_weight = float(feature_match_weight)
        self.base_backward = bool(base_backward)
        self.video_flow_loss_weight = float(video_flow_loss_weight)
        if flow_loss_penalty not in FLOW_LOSS_PENALTIES:
            raise ValueError(f"YolactEdge: flow_loss_penalty must be one of {FLOW_LOSS_PENALTIES}, got {flow_loss_penalty!r}.")
        self.flow_loss_penalty = flow_loss_penalty
        for module in self.frozen_modules():
            module.requires_grad_(False)
            module.eval()

    @property
    def is_video_model(self) -> bool:
        """True when the model has a flow net, i.e. can warp keyframe features."""
        return self.flow_net is not None

    # ------------------------------------------------------------------ the two kinds of frame
    def keyframe_features(
        self, images: torch.Tensor, image_size: Optional[Tuple[int, int]] = None
    ) -> Tuple[Dict[str, torch.Tensor], KeyframeState]:
        """Full backbone + both FPN phases; the state keeps phase-1 P3-P5 and the C3 lateral.

        images: (B, 3, H, W) normalised network input. Returns (FPN features P3-P7, state).
        """
        fpn = self.backbone
        merged, laterals = fpn.forward_phase1(fpn.bottom_up(images))
        feats = fpn.forward_phase2(merged)
        return feats, self.keyframe_state(merged, laterals, tuple(images.shape[-2:]), image_size)

    def keyframe_state(self, merged, laterals, input_size, image_size=None) -> KeyframeState:
        """What later frames warp from: phase-1 P3-P5, the C3 lateral and its flow-net reduction."""
        return KeyframeState(
            features=merged,
            lateral=laterals[0],
            input_size=tuple(input_size),
            image_size=tuple(image_size) if image_size is not None else tuple(input_size),
            flow_feature=self.flow_net.reduce(laterals[0]) if self.flow_net is not None else None,
        )

    def warped_features(self, images: torch.Tensor, state: KeyframeState) -> Dict[str, torch.Tensor]:
        """Partial backbone (to C3) + flow + warp of the keyframe's P4/P5 + P3 rebuilt + SPA + phase 2."""
        self._check_can_warp(images, state)
        lateral, flows = self.predict_flow(self.partial_c3(images), state)
        return self.backbone.forward_phase2(self.transfer_features(lateral, flows, state))

    # The non-keyframe stages, one method each (tools/benchmark_edge.py times them separately).
    def partial_c3(self, images: torch.Tensor) -> torch.Tensor:
        """The bottom-up backbone run only up to C3 (shared weights)."""
        fpn = self.backbone
        return partial_backbone_forward(fpn.bottom_up, images, fpn.in_features[0])[fpn.in_features[0]]

    def predict_flow(self, c3: torch.Tensor, state: KeyframeState):
        """C3 -> (its lateral, FlowNetMini's (coarse, mid) predictions against the keyframe)."""
        lateral = self.backbone.lateral_convs[0](c3)
        return lateral, self.flow_net(self.flow_net.reduce(lateral), state.flow_feature)  # 1/4 (P5), 1/2 (P4)

    def transfer_features(self, lateral: torch.Tensor, flows, state: KeyframeState) -> List[torch.Tensor]:
        """Warp the keyframe's P4/P5 (x scale + bias), rebuild P3, SPA: the phase-1 maps, finest first."""
        coarse, mid = flows
        warped = []
        for (flow, scale, bias), feat in zip((mid, coarse), state.features[1:]):
            if flow.shape[-2:] != feat.shape[-2:]:
                raise RuntimeError(
                    f"YolactEdge: flow at {tuple(flow.shape[-2:])} but the keyframe feature is "
                    f"{tuple(feat.shape[-2:])}; the backbone's C4/C5 must be the stride-2 halvings of C3."
                )
            warped.append(warp_features(feat, flow) * scale + bias)
        p3 = F.interpolate(warped[0], size=lateral.shape[-2:], mode="bilinear", align_corners=False) + lateral
        if self.spa is not None:
            warped = self.spa(lateral, warped)
        return [p3] + list(warped)

    def _check_can_warp(self, images: torch.Tensor, state: Optional[KeyframeState]) -> None:
        if not self.is_video_model:
            raise ValueError(
                "YolactEdge: this is an image model (no flow_net); non-keyframes need a video config "
                "(configs/yolact_edge/yolact_edge_vid_*.py). Run every frame as a keyframe instead."
            )
        if state is None:
            raise ValueError("YolactEdge: a non-keyframe needs the KeyframeState of a keyframe; run a keyframe first.")
        if tuple(images.shape[-2:]) != tuple(state.input_size):
            raise ValueError(
                f"YolactEdge: the network input is {tuple(images.shape[-2:])} but the keyframe's was "
                f"{tuple(state.input_size)}; a frame of another size needs a new keyframe."
            )
        if images.shape[0] != state.lateral.shape[0]:
            raise ValueError(
                f"YolactEdge: {images.shape[0]} images but the keyframe state holds {state.lateral.shape[0]}."
            )

    # ------------------------------------------------------------------ training
    def frozen_modules(self) -> List[nn.Module]:
        """What the training stage keeps fixed (official `fine_tune_layers`): in "flow" everything but
        the flow net (its pre-conv included); in "video" the bottom-up backbone and FPN phase 1 (the
        laterals; the top-down sum has no weights). Their weights get no gradient and their BatchNorms
        stay in eval mode, also through `model.train()`."""
        if self.training_stage == "flow":
            return [m for name, m in self.named_children() if name != "flow_net"]
        if self.training_stage == "video":
            return [self.backbone.bottom_up, self.backbone.lateral_convs]
        return []

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward(self, batched_inputs: List[Dict]):
        if not self.training or self.training_stage == "image":
            return super().forward(batched_inputs)
        if self.training_stage == "flow":
            return self._flow_stage_losses(batched_inputs)
        return self._video_stage_losses(batched_inputs)

    def _frame_pair(self, batched_inputs: List[Dict], resize: bool) -> Tuple[ImageList, torch.Tensor]:
        """(target images, reference images (B, 3, H, W)) of a batch of VideoPairMapper dicts."""
        missing = [i for i, d in enumerate(batched_inputs) if "reference_image" not in d]
        if missing:
            raise ValueError(
                f"YolactEdge ({self.training_stage} stage): items {missing} of the batch have no 'reference_image'; "
                "train on frame pairs from yolact_d2.data.video.VideoPairMapper (or FlyingChairs records)."
            )
        images = self.preprocess_image(batched_inputs, resize=resize)
        references = self.preprocess_image([{"image": d["reference_image"]} for d in batched_inputs], resize=resize)
        return images, references.tensor

    def _gt_flow(self, batched_inputs: List[Dict], size: Tuple[int, int]) -> torch.Tensor:
        """The items' "flow" (2, H, W) in pixels -> (B, 2, H, W) official units (NaN: unknown)."""
        flows = []
        for i, d in enumerate(batched_inputs):
            flow = d.get("flow")
            if flow is None:
                raise ValueError(
                    f"YolactEdge flow stage: item {i} ({d.get('file_name', '?')}) has no ground-truth 'flow'; "
                    "flow pre-training needs FlyingChairs records or a dataset with a flow source."
                )
            if tuple(flow.shape) != (2,) + tuple(size):
                raise ValueError(
                    f"YolactEdge: item {i}'s flow is {tuple(flow.shape)} but the network input is {tuple(size)}; "
                    "the mapper must resize the flow with the image (VideoPairMapper does)."
                )
            flows.append(torch.as_tensor(flow, dtype=torch.float32))
        return pixel_flow_to_official(torch.stack(flows).to(self.device))

    def _flow_predictions(self, images: torch.Tensor, references: torch.Tensor) -> List[torch.Tensor]:
        """Official `forward_flow`: both frames through the partial backbone and the C3 lateral,
        detached; the flow net (pre-conv included) at three scales. Flows, coarsest first."""
        with torch.no_grad():
            c3 = self.partial_c3(torch.cat([images, references]))  # one pass: frozen BN, same result
            lateral_current, lateral_reference = self.backbone.lateral_convs[0](c3).chunk(2)
        preds = self.flow_net(self.flow_net.reduce(lateral_current), self.flow_net.reduce(lateral_reference), finest=True)
        return [flow for flow, _, _ in preds]

    def _flow_stage_losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images, references = self._frame_pair(batched_inputs, resize=False)
        gt = self._gt_flow(batched_inputs, tuple(images.tensor.shape[-2:]))
        preds = self._flow_predictions(images.tensor, references)
        return {"loss_flow": flow_epe_loss(preds, gt, self.flow_loss_penalty)}

    @torch.no_grad()
    def estimate_flow(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        """Backward flow (2, H, W) in pixels of the network input, per item: where each pixel of
        "image" was in "reference_image" (the finest of the three predictions, bilinearly upsampled;
        official units are resolution-free, so upsampling keeps the values)."""
        if not self.is_video_model:
            raise ValueError("YolactEdge.estimate_flow: this is an image model (no flow_net); use a video config.")
        images, references = self._frame_pair(batched_inputs, resize=True)
        size = tuple(images.tensor.shape[-2:])
        finest = self._flow_predictions(images.tensor, references)[-1]
        flow = F.interpolate(finest, size=size, mode="bilinear", align_corners=False)
        return list(official_flow_to_pixels(flow, size).unbind(0))

    def _video_stage_losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """Official `is_video` training step: the reference frame as a keyframe (no gradients); the
        annotated frame's full pass (feature-matching targets, and its own YOLACT losses when
        base_backward); the annotated frame warped from the reference, with the YOLACT losses and the
        feature-matching loss. Official takes one SGD step per pass; we sum the passes (one step).
        Items without a reference frame (joint image batches) get the plain image losses (`_image`)."""
        video = [d for d in batched_inputs if "reference_image" in d]
        still = [d for d in batched_inputs if "reference_image" not in d]
        losses: Dict[str, torch.Tensor] = {}
        if still:
            losses.update({f"{k}_image": v for k, v in super().forward(still).items()})
        if not video:
            return losses
        images, references = self._frame_pair(video, resize=False)
        x = images.tensor
        fpn = self.backbone
        with torch.no_grad():  # frozen parts: the same values with or without gradients
            _, state = self.keyframe_features(references)
            bottom_up = fpn.bottom_up(x)
            computed, _ = fpn.forward_phase1(bottom_up)
        if self.base_backward:
            full = self.losses_from_features(fpn.forward_phase2(computed), x, video)
            losses.update({f"{k}_full": v for k, v in full.items()})
        # The flow net's pre-conv learns from both frames, as official (the keyframe's reduction is redone).
        state = dataclasses.replace(state, flow_feature=self.flow_net.reduce(state.lateral))
        # The annotated frame's C3 is the partial backbone's (frozen): reuse it instead of a 2nd pass.
        lateral, flows = self.predict_flow(bottom_up[fpn.in_features[0]], state)
        warped = self.transfer_features(lateral, flows, state)  # phase-1 [P3, P4, P5]
        losses.update(self.losses_from_features(fpn.forward_phase2(warped), x, video))
        if self.feature_match_weight > 0:
            losses["loss_feature_match"] = self.feature_match_weight * feature_matching_loss(
                warped[1:], computed[1:], fpn.output_convs, self.feature_match_locations
            )
        if self.video_flow_loss_weight > 0:
            with_flow = [i for i, d in enumerate(video) if d.get("flow") is not None]
            if with_flow:
                gt = self._gt_flow([video[i] for i in with_flow], tuple(x.shape[-2:]))
                preds = [flow[with_flow] for flow, _, _ in flows]
                losses["loss_flow"] = self.video_flow_loss_weight * flow_epe_loss(preds, gt, self.flow_loss_penalty)
        return losses

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def inference_video(
        self, batched_inputs: List[Dict], state: Optional[KeyframeState] = None, keyframe: bool = True
    ) -> Tuple[List[Dict[str, Instances]], KeyframeState]:
        """keyframe=True: full network, returns (results, a new state). keyframe=False: partial
        backbone + flow + warp from `state` (required), returns (results, the SAME state): YolactEdge
        always warps from the last keyframe, not from the previous frame."""
        images: ImageList = self.preprocess_image(batched_inputs, resize=True)
        if keyframe:
            d = batched_inputs[0]
            image_size = (int(d.get("height", d["image"].shape[-2])), int(d.get("width", d["image"].shape[-1])))
            feats, state = self.keyframe_features(images.tensor, image_size)
        else:
            feats = self.warped_features(images.tensor, state)
        return self.inference_from_features(feats, images, batched_inputs), state
