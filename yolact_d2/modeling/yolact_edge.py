"""YolactEdge (Liu, Rivera-Soto, Xiao, Lee, ICRA 2021): YOLACT v1 plus feature transfer on video.

Image models are YOLACT v1 with the FPN run in two phases (the same results). Video models add
FlowNetMini and SPA: keyframes run the full network and leave a `KeyframeState`; the frames in
between run the backbone only up to C3 and warp the keyframe's phase-1 P4/P5 (see
`feature_transfer.py`). Both kinds of frame end in Yolact's protonet, head and Fast NMS.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList, Instances

from yolact_d2.modeling.feature_transfer import KeyframeState, partial_backbone_forward, warp_features
from yolact_d2.modeling.fpn import YolactFPN
from yolact_d2.modeling.meta_arch import Yolact


@META_ARCH_REGISTRY.register()
class YolactEdge(Yolact):
    """Yolact's keyword arguments plus the video parts (None for image models).

    Args:
        flow_net: FlowNetMini (its pre-conv included); None: an image model (keyframes only).
        spa: SPA refinement of the warped P4/P5 (official vid configs); None: no refinement.
    The backbone must be a YolactFPN with three inputs (C3-C5) whose bottom-up network can run up
    to C3 alone (see `partial_backbone_forward`).
    """

    def __init__(self, *, flow_net: Optional[nn.Module] = None, spa: Optional[nn.Module] = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(self.backbone, YolactFPN) or len(self.backbone.in_features) != 3:
            raise ValueError(
                f"YolactEdge: the backbone must be a YolactFPN over three bottom-up features (C3-C5), got "
                f"{type(self.backbone).__name__}; YolactEdge warps its phase-1 P4/P5."
            )
        if spa is not None and flow_net is None:
            raise ValueError("YolactEdge: spa refines warped features; it needs a flow_net too (or set spa=None).")
        self.flow_net = flow_net
        self.spa = spa

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
