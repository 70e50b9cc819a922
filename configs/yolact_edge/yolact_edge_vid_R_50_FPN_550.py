"""YolactEdge ResNet-50 video model, 550x550, YouTube-VIS 40 classes (official yolact_edge_vid_resnet50).

Keyframes run the full network; the frames between warp its P4/P5 with FlowNetMini (see
yolact_d2.VideoPredictor). Official weights: yolact_edge_vid_resnet50_847_50000.pth; convert with
tools/convert_yolact_weights.py. The dataloader is a COCO placeholder until video data lands: the
model instantiates and loads weights, training/evaluation on YouTube-VIS is not wired yet."""
from ..common.data.coco import dataloader
from ..common.models.yolact_edge import model, make_video_model
from ..common.optim import SGD as optimizer
from ..common.schedule import lr_multiplier
from ..common.train import train

model.backbone.bottom_up.depth = 50
make_video_model(model)
train.output_dir = "./output/yolact_edge_vid_R_50_FPN_550"
