"""YolactHead: output layout lines up with the priors (level, row, column, anchor)."""
import torch

from yolact_d2.modeling import YolactHead


def test_layout_and_activations():
    torch.manual_seed(0)
    head = YolactHead(in_channels=8, num_classes=4, num_anchors=3, num_prototypes=5)
    feats = [torch.randn(2, 8, 6, 7), torch.randn(2, 8, 3, 4)]
    with torch.no_grad():
        out = head(feats)
        num = (6 * 7 + 3 * 4) * 3
        assert out["loc"].shape == (2, num, 4)
        assert out["conf"].shape == (2, num, 5)
        assert out["coef"].shape == (2, num, 5)
        assert out["coef"].abs().max() < 1  # tanh
        # prediction of level 1, row 2, column 3, anchor 1 of image 1 from the raw conv output
        x = torch.relu(head.upfeature[0](feats[1]))
        raw_loc = head.bbox_pred(x)[1, :, 2, 3].view(3, 4)
        raw_conf = head.cls_score(x)[1, :, 2, 3].view(3, 5)
        raw_coef = head.coef_pred(x)[1, :, 2, 3].view(3, 5)
        idx = 6 * 7 * 3 + (2 * 4 + 3) * 3 + 1
        torch.testing.assert_close(out["loc"][1, idx], raw_loc[1], rtol=0, atol=0)
        torch.testing.assert_close(out["conf"][1, idx], raw_conf[1], rtol=0, atol=0)
        torch.testing.assert_close(out["coef"][1, idx], torch.tanh(raw_coef[1]), rtol=0, atol=0)
