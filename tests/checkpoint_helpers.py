"""Load a checkpoint through DetectionCheckpointer.load (the public path, the same on Detectron2
v0.6 and main) and return the incompatible-keys report it computes."""
from detectron2.checkpoint import DetectionCheckpointer


def load_and_report(model, path):
    checkpointer = DetectionCheckpointer(model)
    reports = []
    load_model = checkpointer._load_model
    checkpointer._load_model = lambda checkpoint: reports.append(load_model(checkpoint)) or reports[-1]
    checkpointer.load(str(path))
    (report,) = reports
    return report
