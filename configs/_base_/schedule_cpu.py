# Optimiser and schedule for short CPU runs.
optim = dict(type='AdamW', lr=3e-3, weight_decay=1e-2, betas=[0.9, 0.999])
schedule = dict(type='onecycle', warmup=0.1)  # onecycle | cosine | constant; warmup = fraction of steps
train = dict(
    max_steps=380,           # optimiser steps (the budget): the demo model trains them in ~7.5 min on 2 cores (bf16)
    val_every_steps=0,       # validation during training every N steps (0 = only at the end)
    log_every_steps=10,
    grad_clip=35.0,          # max grad norm (0 = off)
    # Lightning precision: auto | 32-true | bf16-mixed | 16-mixed (GPU). auto = bf16 autocast where the
    # device computes bf16 natively (AVX512-BF16 / AMX CPUs: 1.6x faster steps here), else fp32 on a CPU
    precision='auto',
    ema=dict(enabled=False, decay=0.999),
    checkpoint_every_steps=100,
    deterministic=False,
    channels_last=False,     # NHWC activations (oneDNN's native CPU layout)
)
seed = 0
# Multi-task learning (bev_mtl/mtl): task weighting over the heads and self-distillation.
mtl = dict(
    weighting=dict(type='fixed'),  # fixed | uncertainty | gradnorm | dwa (+ their arguments)
    tasks=None,                    # tasks the weighting balances (None = every head)
    # teacher: ema | snapshot; decay: the EMA teacher's (None = the training EMA's if train.ema is
    # enabled, else 0.999: a ~1000-step horizon, too long to have learned anything in a short run)
    distill=dict(enabled=False, teacher='ema', decay=None, temperature=1.0, weight=1.0),
)
