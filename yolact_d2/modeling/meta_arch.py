"""The YOLACT meta-architecture: preprocess -> backbone (+FPN) -> protonet / head -> losses or inference."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.structures import Boxes, ImageList, Instances

from yolact_d2.compat import image_list_from_tensors
from yolact_d2.modeling.inference import YolactPostProcessor, decode_boxes
from yolact_d2.modeling.priors import YolactPriorGenerator
from yolact_d2.modeling.yacs_build import yolact_kwargs_from_cfg

# Official YOLACT normalisation (data/config.py MEANS / STD), BGR order.
YOLACT_PIXEL_MEAN = (103.94, 116.78, 123.68)
YOLACT_PIXEL_STD = (57.38, 57.12, 58.40)

RESIZE_MODES = ("squash", "shortest_edge")


@META_ARCH_REGISTRY.register()
class Yolact(nn.Module):
    """YOLACT (and YOLACT++ through its optional parts) as a Detectron2 meta-architecture.

    Input: list of dicts with "image" (uint8 CHW in `input_format`), and at inference "height",
    "width" of the original image (default: the image's own size). Training dicts also carry
    "instances" and "crowd_boxes" (see CONTRACTS.md) and images already at the network size.

    Args:
        backbone: a Backbone returning the FPN levels (YolactFPN around any bottom-up backbone).
        protonet: FPN P3 -> prototypes (B, K, Hp, Wp).
        head: FPN levels -> {"loc", "conf", "coef"}.
        prior_generator: YolactPriorGenerator matching the head's anchors per location.
        num_classes: foreground classes C.
        criterion: callable(predictions, priors, targets) -> dict of losses (training only).
        post_processor: YolactPostProcessor (inference options).
        pixel_mean, pixel_std: normalisation in `input_format` channel order.
        input_format: "BGR" or "RGB": channel order of the incoming images.
        to_rgb: feed the network RGB (official ResNet/DarkNet weights); False keeps `input_format`.
        resize_mode: "squash" (official: every image to input_size x input_size) or
            "shortest_edge" (aspect-preserving: short side to `input_size`, long side at most
            `max_size`, padded at the bottom/right onto a fixed canvas).
        input_size: official max_size (550, 400, 700); the short side in "shortest_edge" mode.
        max_size: long-side cap for "shortest_edge" (default: input_size, i.e. the image fits in
            an input_size square).
        size_divisibility: "shortest_edge" mode pads every image onto one max_size x max_size
            canvas, rounded up to this multiple (0: none).
        semseg_on: build the semantic-segmentation branch (training loss; official keeps it).
        mask_rescoring: YOLACT++ mask-IoU network: (D, 1, Hp, Wp) masks -> (D, C) IoU. At
            inference the final score = class score x predicted IoU of that class; in training it
            is handed to the criterion as predictions["maskiou_net"].
        proto_feature / head_features: FPN feature names for the protonet and the head.

    yacs users: `Yolact(cfg)` / `build_model(cfg)` after yolact_d2.add_yolact_config(cfg)
    (see `from_config`); LazyConfig files call the keyword constructor.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        protonet: nn.Module,
        head: nn.Module,
        prior_generator: YolactPriorGenerator,
        num_classes: int,
        criterion: Optional[nn.Module] = None,
        post_processor: Optional[YolactPostProcessor] = None,
        pixel_mean: Sequence[float] = YOLACT_PIXEL_MEAN,
        pixel_std: Sequence[float] = YOLACT_PIXEL_STD,
        input_format: str = "BGR",
        to_rgb: bool = True,
        resize_mode: str = "squash",
        input_size: int = 550,
        max_size: Optional[int] = None,
        size_divisibility: int = 0,
        semseg_on: bool = True,
        mask_rescoring: Optional[nn.Module] = None,
        proto_feature: str = "p3",
        head_features: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
    ):
        super().__init__()
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"Yolact: resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}.")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"Yolact: input_format must be 'BGR' or 'RGB', got {input_format!r}.")
        head_classes = getattr(head, "num_classes", num_classes)
        if head_classes != num_classes:
            raise ValueError(
                f"Yolact: num_classes={num_classes} but the head predicts {head_classes} classes; "
                "set both (and the criterion's) to the dataset's number of foreground classes."
            )
        shapes = backbone.output_shape()
        missing = [f for f in list(head_features) + [proto_feature] if f not in shapes]
        if missing:
            raise ValueError(f"Yolact: backbone has no feature(s) {missing}; it outputs {sorted(shapes)}.")
        num_anchors = getattr(head, "num_anchors", None)
        per_loc = set(prior_generator.num_anchors_per_location)
        if num_anchors is not None and per_loc != {num_anchors}:
            raise ValueError(
                f"Yolact: the head predicts {num_anchors} priors per location but the prior generator "
                f"makes {sorted(per_loc)}; make len(scales) x len(aspect_ratios) equal head.num_anchors."
            )
        if len(prior_generator.scales) != len(head_features):
            raise ValueError(
                f"Yolact: {len(head_features)} head features but the prior generator has "
                f"{len(prior_generator.scales)} levels."
            )
        self.backbone = backbone
        self.protonet = protonet
        self.head = head
        self.prior_generator = prior_generator
        self.num_classes = num_classes
        self.criterion = criterion
        self.post_processor = post_processor if post_processor is not None else YolactPostProcessor()
        self.input_format = input_format
        self.to_rgb = to_rgb and input_format == "BGR"
        self.resize_mode = resize_mode
        self.input_size = int(input_size)
        self.max_size = int(max_size) if max_size is not None else self.input_size
        self.size_divisibility = int(size_divisibility)
        self.proto_feature = proto_feature
        self.head_features = list(head_features)
        self.mask_rescoring = mask_rescoring
        # Official `semantic_seg_conv`: 1x1 conv on P3 to C class logits (training loss only).
        self.semantic_seg_conv = (
            nn.Conv2d(shapes[proto_feature].channels, num_classes, 1) if semseg_on else None
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        """Keyword arguments from a yacs config (yolact_d2/config.py keys; modeling/yacs_build.py)."""
        return yolact_kwargs_from_cfg(cfg)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ preprocessing
    def _resized_size(self, h: int, w: int) -> Tuple[int, int]:
        if self.resize_mode == "squash":
            return self.input_size, self.input_size
        # Detectron2's ResizeShortestEdge rule (short side, long-side cap, rounding).
        return ResizeShortestEdge.get_output_shape(h, w, self.input_size, self.max_size)

    def _normalize(self, image: torch.Tensor, resize: bool) -> torch.Tensor:
        """uint8 (3, h, w) -> float (3, h', w'), resized, normalised, channels for the network."""
        x = image.to(self.device, non_blocking=True).float()[None]
        if resize:
            size = self._resized_size(x.shape[-2], x.shape[-1])
            if tuple(x.shape[-2:]) != size:
                # Official FastBaseTransform: resize the raw image first, then normalise.
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = (x - self.pixel_mean) / self.pixel_std
        if self.to_rgb:
            x = x[:, [2, 1, 0]]
        return x[0]

    def _canvas_size(self) -> Tuple[int, int]:
        """Fixed network input of the "shortest_edge" mode: max_size square, rounded up."""
        side = self.max_size
        if self.size_divisibility > 1:
            side = -(-side // self.size_divisibility) * self.size_divisibility
        return side, side

    def preprocess_image(self, batched_inputs: List[Dict], resize: bool = True) -> ImageList:
        """Resize (inference) as the official FastBaseTransform, normalise, batch.

        Training images come from the mapper already at the network size; `resize=False` then.
        In "shortest_edge" mode every image is padded (bottom/right, zeros after normalisation)
        onto one fixed canvas, so a batch gives exactly the per-image results and one prior set.
        ImageList.image_sizes hold the (unpadded) resized sizes.
        """
        images = [self._normalize(d["image"], resize) for d in batched_inputs]
        if self.resize_mode == "squash":
            return image_list_from_tensors(images, 0)
        canvas_h, canvas_w = self._canvas_size()
        batch = images[0].new_zeros((len(images), images[0].shape[0], canvas_h, canvas_w))
        for i, img in enumerate(images):
            h, w = img.shape[-2:]
            if h > canvas_h or w > canvas_w:
                raise ValueError(
                    f"Yolact: image {i} is {h}x{w} but the shortest_edge canvas is {canvas_h}x{canvas_w}; "
                    "resize training images with the same input_size/max_size as the model."
                )
            batch[i, :, :h, :w] = img
        return ImageList(batch, [tuple(img.shape[-2:]) for img in images])

    # ------------------------------------------------------------------ network
    def _predict_from_features(self, feats: Dict[str, torch.Tensor], images: torch.Tensor):
        """FPN features -> (predictions, priors): protonet, head and the priors of these grids."""
        proto = self.protonet(feats[self.proto_feature]).permute(0, 2, 3, 1).contiguous()  # (B, Hp, Wp, K)
        level_feats = [feats[f] for f in self.head_features]
        predictions = dict(self.head(level_feats))
        predictions["proto"] = proto
        priors = self.prior_generator(
            [tuple(f.shape[-2:]) for f in level_feats], tuple(images.shape[-2:]), images.device
        )  # (P, 4)
        if predictions["loc"].shape[1] != priors.shape[0]:
            raise RuntimeError(
                f"Yolact: the head made {predictions['loc'].shape[1]} predictions but there are "
                f"{priors.shape[0]} priors; check num_anchors against the prior scales/ratios."
            )
        return predictions, priors

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        if self.criterion is None:
            raise RuntimeError("Yolact: training needs a criterion (e.g. yolact_d2.modeling.loss.YolactLoss).")
        images = self.preprocess_image(batched_inputs, resize=False)
        return self.losses_from_features(self.backbone(images.tensor), images.tensor, batched_inputs)

    def losses_from_features(self, feats: Dict[str, torch.Tensor], images: torch.Tensor, batched_inputs: List[Dict]):
        """FPN features of the (B, 3, H, W) network input -> the criterion's loss dict (what training
        does after the backbone; YolactEdge's video stage feeds it warped features)."""
        predictions, priors = self._predict_from_features(feats, images)
        if self.semantic_seg_conv is not None:
            predictions["segm"] = self.semantic_seg_conv(feats[self.proto_feature])  # (B, C, H3, W3)
        if self.mask_rescoring is not None:
            predictions["maskiou_net"] = self.mask_rescoring
        input_size = tuple(images.shape[-2:])
        targets = []
        for d in batched_inputs:
            if "instances" not in d:
                raise ValueError("Yolact: training inputs need 'instances' (from YolactDatasetMapper).")
            if not d["instances"].has("gt_masks"):
                raise ValueError(
                    "Yolact: training instances have no gt_masks; with Detectron2's DatasetMapper set "
                    "MODEL.MASK_ON=True (yacs), or use YolactDatasetMapper."
                )
            crowd = d.get("crowd_boxes")
            if crowd is None:
                crowd = torch.zeros((0, 4))
            elif isinstance(crowd, Boxes):  # a Detectron2 Boxes, e.g. from a custom mapper: its (M, 4) tensor
                crowd = crowd.tensor
            targets.append(
                {
                    "instances": d["instances"].to(self.device),
                    "crowd_boxes": torch.as_tensor(crowd, dtype=torch.float32, device=self.device).reshape(-1, 4),
                    "image_size": input_size,
                }
            )
        return self.criterion(predictions, priors, targets)

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        images = self.preprocess_image(batched_inputs, resize=True)
        return self.inference_from_features(self.backbone(images.tensor), images, batched_inputs)

    @torch.no_grad()
    def inference_from_features(
        self, feats: Dict[str, torch.Tensor], images: ImageList, batched_inputs: List[Dict]
    ) -> List[Dict[str, Instances]]:
        """FPN features -> protonet / head -> Fast NMS -> Instances (what `inference` does after
        the backbone; YolactEdge feeds it warped features)."""
        predictions, priors = self._predict_from_features(feats, images.tensor)
        return self.inference_from_predictions(predictions, priors, images, batched_inputs)

    @torch.no_grad()
    def inference_from_predictions(
        self, predictions: Dict[str, torch.Tensor], priors: torch.Tensor, images: ImageList, batched_inputs: List[Dict]
    ) -> List[Dict[str, Instances]]:
        """Network outputs (loc, conf, coef, proto) -> softmax, decode, Fast NMS, masks -> Instances:
        the one post-processing, also of the int8 network run by ONNX Runtime (deploy.quantize)."""
        conf = F.softmax(predictions["conf"], dim=-1)  # (B, P, C+1)
        boxes = decode_boxes(predictions["loc"], priors)  # (B, P, 4) relative XYXY
        input_size = tuple(images.tensor.shape[-2:])
        results = []
        for i, d in enumerate(batched_inputs):
            height = d.get("height", d["image"].shape[-2])
            width = d.get("width", d["image"].shape[-1])
            instances = self.post_processor(
                boxes[i],
                conf[i],
                predictions["coef"][i],
                predictions["proto"][i],
                valid_size=images.image_sizes[i],
                input_size=input_size,
                output_size=(height, width),
                mask_rescoring=self.mask_rescoring,
            )
            results.append({"instances": instances})
        return results


def set_num_classes(model_cfg, num_classes: int) -> None:
    """Set the class count everywhere a Yolact LazyConfig model node carries it."""
    model_cfg.num_classes = num_classes
    for name in ("head", "criterion", "mask_rescoring"):
        node = model_cfg.get(name) if hasattr(model_cfg, "get") else getattr(model_cfg, name, None)
        if node is not None and "num_classes" in node:
            node.num_classes = num_classes


def set_head_width(model_cfg, channels: int, num_prototypes: int) -> None:
    """Set the FPN / protonet / head width and the prototype count together in a Yolact LazyConfig
    model node (small models for CPU training and tests shrink them as one)."""
    model_cfg.backbone.out_channels = channels
    model_cfg.protonet.in_channels = channels
    model_cfg.protonet.conv_dims = channels
    model_cfg.protonet.num_prototypes = num_prototypes
    model_cfg.head.in_channels = channels
    model_cfg.head.num_prototypes = num_prototypes
