"""Train and evaluate YOLACT with Detectron2's LazyConfig engine.

    python tools/train_net.py --config-file configs/shapes/yolact_shapes.py train.device=cpu
    python tools/train_net.py --config-file configs/yolact/yolact_R_50_FPN_550.py --num-gpus 8
    python tools/train_net.py --config-file ... --resume                  # continue after a kill
    python tools/train_net.py --config-file ... --eval-only train.init_checkpoint=output/model_final.pth
    python tools/train_net.py --config-file ... --eval-only --precision bf16   # AP of the bf16 model
    python tools/train_net.py --config-file ... --num-gpus 2 train.device=cpu   # 2 CPU processes (gloo)

The config defines model, dataloader (train / test / evaluator), optimizer, lr_multiplier, train
(configs/common/train.py). Overrides are `key=value`; an unknown key is an error naming close matches.

Training data: of dataloader.train only `dataset`, `mapper`, `total_batch_size` and `num_workers` are
used; they feed yolact_d2.engine.build_resumable_train_loader, whose stream of images (order and
augmentation) is a pure function of (train.seed, position), so `--resume` after a kill continues with
exactly the data an uninterrupted run would have seen, and N processes together see the 1-process batch.

Evaluation (--eval-only and during / after training) follows dataloader.evaluator: a VideoEvaluator
plays its dataset's clips over the keyframe passes (yolact_d2.evaluation.video; only the test mapper
of dataloader.test is used), a FlowEPEEvaluator scores model.estimate_flow on dataloader.test's frame
pairs, any other evaluator runs Detectron2's inference_on_dataset.
"""
import logging
import os
import sys


import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, default_writers, hooks  # noqa: E402
from detectron2.engine.defaults import create_ddp_model  # noqa: E402
from detectron2.evaluation import inference_on_dataset, print_csv_format  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.registry import locate  # noqa: E402

import yolact_d2  # noqa: E402,F401  (registers the meta-arch and backbones)
from yolact_d2.data.checks import check_datasets  # noqa: E402
from yolact_d2.deploy.optimize import optimize_for_inference  # noqa: E402
from yolact_d2.deploy.precision import PRECISIONS, PrecisionError, apply_precision, check_precision  # noqa: E402
from yolact_d2.engine import (  # noqa: E402
    DivergenceSafeCheckpointer,
    TrainingHealthHook,
    YolactCheckpointer,
    YolactTrainer,
    apply_overrides,
    build_resumable_train_loader,
    convert_sync_batchnorm,
    launch,
    use_config_lrs,
)
from yolact_d2.engine.schedule import resolve_steps  # noqa: E402
from yolact_d2.evaluation import (  # noqa: E402
    FlowEPEEvaluator,
    VideoEvaluator,
    inference_on_flow_dataset,
    inference_on_video_dataset,
)

logger = logging.getLogger("detectron2")


def load_config(config_file, overrides):
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file '{config_file}' does not exist.")
    cfg = LazyConfig.load(config_file)
    cfg = apply_overrides(cfg, list(overrides))
    for key in ("model", "train"):
        if key not in cfg:
            raise KeyError(f"Config '{config_file}' defines no '{key}' (see configs/common/).")
    optimizer = cfg.get("optimizer")
    if optimizer is not None and isinstance(optimizer.get("lr"), DictConfig) and "_target_" in optimizer.lr:
        # A computed learning rate (e.g. linear_scaled_lr of the batch size): a number from here on.
        optimizer.lr = instantiate(optimizer.lr)
    lr = cfg.get("lr_multiplier")
    if lr is not None:
        # The schedule's base_lr / max_iter follow optimizer.lr / train.max_iter unless set explicitly.
        if "base_lr" in lr and lr.base_lr is None:
            lr.base_lr = cfg.optimizer.lr
        if "max_iter" in lr and lr.max_iter is None:
            lr.max_iter = cfg.train.max_iter
    return cfg


def build_model(cfg):
    model = instantiate(cfg.model)
    if cfg.train.get("sync_bn", False):
        model = convert_sync_batchnorm(model, cfg.train.device)
    model.to(cfg.train.device)
    return model


def do_test(cfg, model):
    if "evaluator" not in cfg.dataloader:
        logger.warning("No dataloader.evaluator in the config: skipping evaluation.")
        return {}
    evaluator = instantiate(cfg.dataloader.evaluator)
    if isinstance(evaluator, VideoEvaluator):  # plays the clips itself: only the test mapper is used
        test = cfg.dataloader.get("test") or {}
        mapper = instantiate(test.mapper) if "mapper" in test else None
        results = inference_on_video_dataset(model, evaluator, mapper=mapper)
    elif isinstance(evaluator, FlowEPEEvaluator):  # model.estimate_flow on the test loader's frame pairs
        results = inference_on_flow_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    else:
        results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process():
        print_csv_format(results)
    return results


class _DeferredTrainLoader:
    """The training stream starts at the trainer's first iteration, known only after `--resume` loaded the
    checkpoint (SimpleTrainer calls iter() on its loader at construction; a generator defers the work)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.trainer = None

    def __iter__(self):
        c = self.cfg.dataloader.train
        yield from build_resumable_train_loader(
            dataset=instantiate(c.dataset),
            mapper=instantiate(c.mapper) if "mapper" in c else None,
            total_batch_size=c.total_batch_size,
            num_workers=c.get("num_workers", 0),
            seed=self.cfg.train.get("seed", 0),
            start_iter=self.trainer.iter,
        )


def _training_meta(cfg) -> dict:
    """Stored in every checkpoint beside the weights: the training set's class names (from its
    MetadataCatalog entry), so that a Predictor elsewhere can name the classes."""
    names = cfg.dataloader.train.dataset.get("names") if "train" in cfg.get("dataloader", {}) else None
    for name in [names] if isinstance(names, str) else list(names or []):
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes:
            return {"thing_classes": list(classes)}
    return {}


# Where ImageNet weights for each backbone come from (item 14: training from scratch by accident).
_IMAGENET_HINTS = {
    "build_yolact_resnet": "torchvision's resnet50-0676ba61.pth / resnet101-63fe2227.pth (or official YOLACT's "
    "resnet50-19c8e357.pth / resnet101_reducedfc.pth)",
    "build_deform_resnet": "torchvision's resnet50-0676ba61.pth / resnet101-63fe2227.pth (or official YOLACT's "
    "resnet50-19c8e357.pth / resnet101_reducedfc.pth)",
    "build_darknet53": "official YOLACT's darknet53.pth",
}


def warn_if_training_from_scratch(cfg, resuming: bool) -> None:
    """A loud banner when the backbone starts from random weights without train.from_scratch_ok."""
    if resuming or cfg.train.get("init_checkpoint") or cfg.train.get("from_scratch_ok", False):
        return
    target = cfg.model.backbone.get("bottom_up", {}).get("_target_", "the backbone")
    name = getattr(target, "__name__", None) or str(target).rsplit(".", 1)[-1]
    source = _IMAGENET_HINTS.get(name, "the ImageNet weights of this backbone")
    rule = "=" * 100
    logger.warning(
        f"\n{rule}\nTRAINING FROM SCRATCH: train.init_checkpoint is empty, so the backbone ({name}) starts "
        "from RANDOM weights.\nYOLACT is trained from ImageNet weights; from scratch it needs a much longer "
        f"schedule and reaches a lower AP.\nFix: convert {source} once:\n"
        "    python tools/convert_imagenet_backbone.py IMAGENET.pth imagenet_backbone.pth --config CONFIG\n"
        "  then train with train.init_checkpoint=imagenet_backbone.pth.\n"
        f"If training from scratch is intended, set train.from_scratch_ok=True to silence this.\n{rule}"
    )


def do_train(args, cfg):
    check_datasets(cfg, splits=("train", "test"))  # class counts + every split's annotations, up front
    model = build_model(cfg)
    logger.info(f"Model:\n{model}")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    steps = cfg.lr_multiplier.get("steps", ()) if "lr_multiplier" in cfg else ()
    logger.info(
        f"Learning rate {cfg.optimizer.lr:g} at total batch size {cfg.dataloader.train.total_batch_size}; LR steps "
        f"at iterations {resolve_steps(steps, cfg.train.max_iter)} of train.max_iter={cfg.train.max_iter}."
    )

    ddp = dict(cfg.train.get("ddp", {}))
    if cfg.train.device == "cpu":
        ddp["device_ids"] = None  # DDP on CPU processes (gloo)
    ddp_model = create_ddp_model(model, **ddp)
    loader = _DeferredTrainLoader(cfg)
    trainer = YolactTrainer(ddp_model, loader, optimizer, amp=cfg.train.amp.enabled,
                            amp_dtype=cfg.train.amp.get("dtype", "float16"))
    loader.trainer = trainer
    checkpointer = YolactCheckpointer(
        model, cfg.train.output_dir, meta=_training_meta(cfg), optimizer=optimizer, trainer=trainer,
        init_may_miss=cfg.train.get("init_may_miss"),  # e.g. video configs: all but flow_net / spa must load
    )
    eval_period = cfg.train.get("eval_period", 0) or 0
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            TrainingHealthHook(
                getattr(model, "protonet", None),
                lr=cfg.optimizer.lr,
                total_batch_size=cfg.dataloader.train.total_batch_size,
                **cfg.train.get("health", {}),
            ),
            DivergenceSafeCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
        ]
    )
    config_lrs = [group["lr"] for group in optimizer.param_groups]
    warn_if_training_from_scratch(cfg, resuming=args.resume and checkpointer.has_checkpoint())
    # Resuming loads strictly; init_checkpoint fine-tunes (class layers may be re-initialised, logged).
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    if args.resume and checkpointer.has_checkpoint():
        # The checkpoint stores the iteration that just finished: continue at the next one.
        start_iter = trainer.iter + 1
        logger.info(f"Resuming from {checkpointer.get_checkpoint_file()} at iteration {start_iter}.")
        # The optimizer state brought the checkpoint's learning rate back; the config's wins, so that
        # a run stopped on divergence can continue with a lower optimizer.lr.
        use_config_lrs(optimizer, config_lrs)
    else:
        start_iter = 0
    if start_iter >= cfg.train.max_iter:
        logger.info(f"Training already finished (iteration {start_iter} >= train.max_iter={cfg.train.max_iter}).")
        return do_test(cfg, model)
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer.storage.latest() if comm.is_main_process() else None


def _video_evaluator_class(cfg):
    """The class of dataloader.evaluator if it is a video or flow evaluator, else None (not built)."""
    target = cfg.get("dataloader", {}).get("evaluator", {}).get("_target_")
    target = locate(target) if isinstance(target, str) else target
    return target if isinstance(target, type) and issubclass(target, (VideoEvaluator, FlowEPEEvaluator)) else None


def do_eval_only(cfg, precision: str = "fp32"):
    video = _video_evaluator_class(cfg)
    if precision == "int8" and video is not None:
        raise PrecisionError(
            f"--precision int8 with {video.__name__}: train_net evaluates int8 through the single-image ONNX "
            "graph, which has no keyframe state or flow; evaluate the video model at fp32 or bf16 (VideoPredictor("
            "..., precision='int8') runs the int8 keyframe / non-keyframe graphs)."
        )
    check_precision(precision, cfg.train.device)  # before any work: names what the machine lacks
    check_datasets(cfg, splits=("test",))
    model = build_model(cfg)
    weights = cfg.train.init_checkpoint
    # strict: evaluating weights that do not fit (a random or another-class-count checkpoint) is an
    # error naming the keys, never an AP of 0 from a half-initialised model.
    checkpointer = YolactCheckpointer(model, cfg.train.output_dir, strict=True)
    if not weights:
        if not checkpointer.has_checkpoint():
            raise FileNotFoundError(
                f"--eval-only needs weights: set train.init_checkpoint=PATH, or train first so that "
                f"{cfg.train.output_dir} has a last_checkpoint."
            )
        weights = checkpointer.get_checkpoint_file()
    checkpointer.load(weights)
    logger.info(f"Evaluating {weights} at precision {precision}")
    if precision == "fp32":
        return do_test(cfg, model)  # the model exactly as trained, as before the precision option
    if precision == "int8":  # the Predictor's int8 engine: calibrated ONNX (cached next to the weights) in onnxruntime
        from yolact_d2.deploy.quantize import OnnxYolactModel, int8_model_path

        model.eval()
        return do_test(cfg, OnnxYolactModel(int8_model_path(cfg, cfg.model, model, weights), model))
    # Lower precision: the Predictor's inference form (yolact_d2.deploy), so AP measures what it runs.
    apply_precision(optimize_for_inference(model), precision)
    with torch.autocast("cuda", dtype=torch.float16, enabled=precision == "fp16"):
        return do_test(cfg, model)


def main(args):
    cfg = load_config(args.config_file, args.opts)
    if cfg.train.get("num_threads"):
        torch.set_num_threads(int(cfg.train.num_threads))
    default_setup(cfg, args)
    # Our own modules' messages (divergence, training health, checkpoints) go where Detectron2's do.
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="yolact_d2", abbrev_name="yolact_d2")
    if args.eval_only:
        return do_eval_only(cfg, getattr(args, "precision", "fp32"))
    return do_train(args, cfg)


def parse_args(argv=None):
    """Detectron2's argument parser, plus flags written after the overrides: its `opts` take the rest
    of the command line (argparse.REMAINDER), so `X train.max_iter=5 --resume` would make `--resume`
    an override. Such flags (and their values) are parsed as flags; the key=value words stay overrides."""
    parser = default_argument_parser()
    parser.add_argument(
        "--precision", default="fp32", choices=PRECISIONS,
        help="--eval-only: evaluate at this precision (yolact_d2.deploy.precision; bf16 needs AVX512-BF16/AMX or CUDA; "
        "int8: CPU, ONNX Runtime, calibrated on 100 training images, cached next to the weights)",
    )
    args = parser.parse_args(argv)
    if not any(word.startswith("-") for word in args.opts):
        return args
    overrides = [w for w in args.opts if "=" in w and not w.startswith("-")]
    flags = [w for w in args.opts if w not in overrides]
    late = parser.parse_args(flags, namespace=args)  # unknown flags: argparse's usual error
    late.opts = overrides + late.opts  # words that are neither stay, for the key=value error
    return late


def cli(argv=None):
    from yolact_d2.model_zoo import resolve_config_file

    args = parse_args(argv)
    args.config_file = resolve_config_file(args.config_file)  # a file, or a model-zoo name (installed use)
    # Load once in the parent: bad overrides fail here, and the device picks the launcher.
    cfg = load_config(args.config_file, args.opts)
    if args.precision != "fp32" and not args.eval_only:
        raise PrecisionError(f"--precision {args.precision} applies to --eval-only (training runs in fp32).")
    check_precision(args.precision, cfg.train.device)  # one error line here, not one per process
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=cfg.train.device,
    )


def run_cli(argv=None) -> int:
    """Console entry point: a typo in an override is one clear line, not a traceback."""
    from yolact_d2.checkpoint import CheckpointFileError, WeightsMismatchError
    from yolact_d2.engine import ConfigOverrideError, NonFiniteLossError, UnknownConfigKeyError
    from yolact_d2.model_zoo import ConfigNotFoundError

    try:
        cli(argv)
    except (UnknownConfigKeyError, ConfigOverrideError, ConfigNotFoundError, PrecisionError) as e:
        print(f"train_net.py: error: {e}", file=sys.stderr)
        return 2
    except (CheckpointFileError, WeightsMismatchError) as e:  # a weights file that is unsafe, unreadable or does not fit
        print(f"train_net.py: error: {e}", file=sys.stderr)
        return 1
    except NonFiniteLossError as e:  # diverged: the trainer already logged the traceback to the log
        print(f"train_net.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli())
