"""Common training settings (Detectron2's LazyConfig `train` node, read by tools/train_net.py)."""
train = dict(
    output_dir="./output",
    # A checkpoint to start from (ImageNet backbone, official YOLACT weights converted with
    # tools/convert_yolact_weights.py, or a model of ours trained with another class count).
    init_checkpoint="",
    # Empty init_checkpoint trains the backbone from random weights, which tools/train_net.py warns
    # about loudly (see tools/convert_imagenet_backbone.py); True says it is intended (shapes configs).
    from_scratch_ok=False,
    max_iter=800000,  # official yolact_base (batch 8)
    amp=dict(enabled=False, dtype="float16"),  # CUDA only; dtype "float16" (GradScaler) or "bfloat16"
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=10000, max_to_keep=5),
    eval_period=10000,  # 0 disables periodic evaluation (the final one still runs)
    log_period=20,
    # Dead-prototype / stuck-mask-loss warnings (yolact_d2/engine/health.py), checked every `period` its.
    health=dict(period=20, dead_fraction=0.9),
    device="cuda",
    seed=0,  # seeds the data stream (order and augmentation) and all RNGs
    sync_bn=False,  # BatchNorm2d -> SyncBatchNorm (CUDA) / NaiveSyncBatchNorm (CPU)
    # torch intra-op threads per process (None: torch's default). On a small shared CPU one thread
    # is often faster: OpenMP threads spin-wait when other processes hold the cores.
    num_threads=None,
)
