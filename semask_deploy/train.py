"""Training SeMask-FPN with the semantic decoder's supervision, single-process or DDP via torchrun.

The official recipe (mmseg SeMask-FPN): loss = CE(seg) + 0.4·CE(semantic) at the label size, ignore 255
(OHEM — the 100 000 × batch highest-loss pixels of the batch — where the official config has it: COCO-Stuff,
and ADE20K with Large); stochastic depth 0.3 (linear over the Swin blocks) for the official architectures;
AdamW (betas 0.9/0.999, weight decay except parameters named ``*norm*`` and the relative position tables, as
the official ``custom_keys``); poly lr (power 1, min 0) after a linear warm-up of ``min(1500, iters // 10)``
iterations; mmseg's augmentation (random keep-ratio rescale of the image scale, crop with cat_max_ratio, flip,
photometric distortion, pad labels with 255). lr, weight decay, warm-up ratio, batch per process, resize ratios
and cat_max_ratio are the official config's for the architecture and data set (:func:`official_recipe`):
ADE20K lr 1e-4, decay 1e-4, ratios {0.5, 0.75, …, 1.75}, cat_max_ratio 0.75 (Tiny) / 1; COCO-Stuff the same
with cat_max_ratio 1; Cityscapes lr 1e-3, decay 0.05, warm-up from 1e-5·lr (Base 1e-6), ratios 0.5–2.0,
cat_max_ratio 0.75.

Checkpoints are written by rank 0 in the official mmseg layout (``meta`` + ``state_dict`` with
``backbone.*`` / ``decode_head.*`` keys): ``out/latest.pth`` also holds the optimizer, schedule, iteration
and every rank's RNG state, so ``--resume`` continues exactly (the run's resolved options are saved too: a
resumed run takes every option not given again from them); ``out/final.pth`` holds the weights only.
Both load strictly with :func:`semask_deploy.api.load_model`. Logs: a tqdm bar and ``out/log.jsonl``.

Distributed: ``torchrun --standalone --nproc-per-node=N -m semask_deploy.train <semask-train args>``
(NCCL on GPUs, gloo on CPUs; SyncBatchNorm in the head; ``--batch-size`` is per process).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint import infer_config, load_state_dict_strict, read_checkpoint, save_checkpoint
from .config import SeMaskConfig
from .data.transforms import TrainAugment
from .errors import CheckpointError, ConfigError, SemaskError, Terminated, check_cpu_threads
from .fileio import check_output_folder, write_text_atomic
from .model import SeMaskSegmentor
from .training import data as tdata
from .training import dist as tdist
from .training.init import InitReport, checkpoint_kind, init_from_checkpoint, official_init
from .training.losses import OhemSampler, semask_loss
from .training.optim import PolySchedule, build_optimizer, default_warmup, param_groups
from .training.setup import (
    DEMO_ITERS, DEMO_NUM_CLASSES, DEMO_RECIPE, OFFICIAL_DROP_PATH, OFFICIAL_ITERS, VARIANT_CHOICES,
    default_crop, load_variant, official_recipe, recipe_arch, resolve_config,
)


@dataclass
class TrainOptions:
    """Everything ``semask-train`` accepts (see ``semask-train --help``)."""

    variant: str | None = None
    data: str = "synthetic"
    data_root: Path | None = None
    num_classes: int | None = None
    init: Path | None = None
    iters: int | None = None
    batch_size: int | None = None
    crop: tuple[int, int] | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup: int | None = None
    eval_every: int | None = None
    save_every: int | None = None
    eval_size: int | None = None
    out: Path = Path("semask-train-out")
    resume: bool = False
    seed: int = 0
    workers: int = 0
    ohem: bool | None = None
    drop_path: float | None = None
    log_every: int = 20
    gamma_init: float = 0.0
    device: str = "auto"
    threads: int | None = None
    attention: str = "sdpa"
    quiet: bool = False
    # options the user gave explicitly (the CLI fills it): on --resume these are kept even when they equal
    # the default, e.g. ``--seed 0`` for a run saved with seed 5; not saved with the run
    given: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("given")
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclass
class TrainResult:
    """What a run did: paths, the last evaluation, per-iteration losses of this process's run."""

    out: Path
    config: SeMaskConfig
    start_iter: int
    end_iter: int
    latest: Path | None = None
    final: Path | None = None
    metrics: dict[str, Any] | None = None
    losses: dict[int, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    init: InitReport | None = None


class _Logger:
    """Rank-0 messages on stderr and JSON lines in ``out/log.jsonl`` (appended; a resumed run continues it)."""

    def __init__(self, out: Path, enabled: bool, quiet: bool) -> None:
        self.enabled, self.quiet = enabled, quiet
        self.path = out / "log.jsonl"
        self.bar = None

    def event(self, record: dict[str, Any]) -> None:
        if self.enabled:
            # the folder is made by the first record (the start of training): a run refused for bad options
            # leaves nothing behind
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _records(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Every line of the log with its record (None for a line an interruption cut short)."""
        if not self.path.is_file():
            return []
        out: list[tuple[str, dict[str, Any] | None]] = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append((line, json.loads(line)))
            except ValueError:
                out.append((line, None))
        return out

    def drop_after(self, iteration: int) -> int:
        """On resume: remove the interrupted run's ``train``/``eval`` records past ``iteration`` (the resumed
        run trains those iterations again, so a loss curve would show them twice). Returns how many."""
        if not self.enabled:
            return 0
        records = self._records()
        kept = [line for line, rec in records if rec is not None
                and not (rec.get("event") in ("train", "eval") and int(rec.get("iter", 0)) > iteration)]
        if len(kept) != len(records):
            write_text_atomic(self.path, "".join(k + "\n" for k in kept))
        return len(records) - len(kept)

    def has_eval_at(self, iteration: int) -> bool:
        """Whether the log holds an evaluation of ``iteration`` (read on every rank: the file is shared)."""
        return any(rec is not None and rec.get("event") == "eval" and rec.get("iter") == iteration
                   for _, rec in self._records())

    def say(self, text: str) -> None:
        if self.enabled and not self.quiet:
            if self.bar is not None:
                self.bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr, flush=True)


def _check_batchnorm_values(crop: tuple[int, int], images: int) -> None:
    """Refuse a crop × batch that leaves BatchNorm one value per channel at the head's coarsest (stride-32) level,
    where training BatchNorm cannot compute a variance (PyTorch raises deep inside the first step)."""
    h, w = (-(-int(v) // 32) for v in crop)
    if images * h * w < 2:
        raise ConfigError(f"--crop {crop[0]}x{crop[1]} with {images} crop(s) per step gives the decode head's "
                          f"BatchNorm a single value per channel at stride 32 ({h}x{w} maps): use a crop larger "
                          "than 32x32 or --batch-size 2 or more")


def _check_options(o: TrainOptions) -> None:
    for name in ("iters", "batch_size", "eval_every", "save_every", "log_every", "eval_size", "threads"):
        v = getattr(o, name)
        if v is not None and v <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if o.threads is not None:
        check_cpu_threads(o.threads, "--threads", zero_means_all=False)
    env_attention = os.environ.get("SEMASK_ATTN")
    if env_attention and env_attention != o.attention and ("attention" in o.given or o.attention != "sdpa"):
        raise ConfigError(f"--attention {o.attention} conflicts with the environment variable SEMASK_ATTN="
                          f"{env_attention}, which would override it; unset SEMASK_ATTN or drop --attention")
    if o.lr is not None and not 0 < o.lr <= torch.finfo(torch.float32).max:
        raise ConfigError(f"--lr must be a positive finite (float32) number, got {o.lr}")
    if (o.weight_decay is not None and not 0 <= o.weight_decay < math.inf) or (o.warmup is not None and o.warmup < 0):
        raise ConfigError("--weight-decay and --warmup must be >= 0 (and finite)")
    if not math.isfinite(o.gamma_init):
        raise ConfigError(f"--gamma-init must be a finite number, got {o.gamma_init}")
    if o.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {o.workers}")
    if o.drop_path is not None and not 0 <= o.drop_path < 1:
        raise ConfigError(f"--drop-path must be in [0, 1), got {o.drop_path}")
    if not o.resume:  # (a resumed run's --data comes from its checkpoint: checked once restored)
        _check_data_root(o)
    if not 0 <= o.seed < 2**32:
        raise ConfigError(f"--seed must be between 0 and 2**32 - 1, got {o.seed}")
    check_output_folder(o.out)
    if o.init is not None and not Path(o.init).is_file():
        raise CheckpointError(f"--init checkpoint not found: {o.init}")
    if o.resume and not (o.out / "latest.pth").is_file():
        raise CheckpointError(f"--resume: no checkpoint to resume from ({o.out / 'latest.pth'} does not exist)")
    if not o.resume and (o.out / "latest.pth").is_file():
        raise ConfigError(f"{o.out} already holds a training run (latest.pth); pass --resume or another --out")


def _check_data_root(o: TrainOptions) -> None:
    if o.data == "synthetic" and o.data_root is not None:  # it would be ignored: the scenes are made in memory
        raise ConfigError("--data synthetic makes its own scenes in memory: drop --data-root (or pick the --data "
                          "layout those files belong to)")


def _load_resume(path: Path) -> dict[str, Any]:
    again = "; start the run again without --resume (another --out), or --init from its final.pth"
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): it cannot be resumed{again}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        why = first[:160] if len(first) <= 160 else first[:157] + "…"
        if not any(c.isalpha() for c in why):  # a bare pickle opcode such as "101": not a torch file at all
            why = "not a PyTorch checkpoint"
        raise CheckpointError(f"cannot read {path} to resume ({why}){again}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a training checkpoint{again}")
    for key in ("state_dict", "optimizer", "iteration"):
        if key not in state:
            raise CheckpointError(f"{path} is not a resumable training checkpoint (no {key!r}); use --init instead")
    if not isinstance(state.get("meta"), dict) or not isinstance(state["meta"].get("semask_config"), dict):
        raise CheckpointError(f"{path} lacks the model config semask-train saves with it (meta.semask_config): "
                              f"it was not written by semask-train{again}")
    return state


# what a resumed run takes from the interrupted one (not: where it writes, how it runs on this machine)
_RESUMED_OPTIONS = ("variant", "data", "data_root", "num_classes", "iters", "batch_size", "crop", "lr", "weight_decay",
                    "warmup", "eval_every", "save_every", "eval_size", "seed", "ohem", "drop_path", "log_every",
                    "gamma_init", "attention")


def _with_saved_options(opts: TrainOptions, saved: dict[str, Any]) -> tuple[TrainOptions, dict[str, Any]]:
    """On ``--resume``: every option not given again (left at its default) takes the interrupted run's value.

    Returns:
        The options and those taken from the saved run (name → value), for the log.
    """
    defaults = TrainOptions()
    kw: dict[str, Any] = {}
    for name in _RESUMED_OPTIONS:
        current, v = getattr(opts, name), saved.get(name)
        if v is None or name in opts.given or current != getattr(defaults, name):  # not saved, or given again
            continue
        v = tuple(v) if isinstance(v, list) else Path(v) if name == "data_root" else v
        if v != current:
            kw[name] = v
    return replace(opts, **kw), kw


def official_ohem(variant: str, data: str, embed_dim: int | None = None) -> bool:
    """Whether the official config of ``variant`` on ``data`` uses OHEM (COCO-Stuff; ADE20K with Large).

    ``variant`` ``"checkpoint"`` (an official SeMask checkpoint given to --init) is Large when ``embed_dim`` is 192.
    """
    if variant == "checkpoint":
        variant = "large" if embed_dim == 192 else "tiny"  # (T/S/B: the same rule)
    return variant in ("tiny", "small", "base", "large") and (
        data == "coco-stuff" or (variant == "large" and data == "ade20k"))


def set_drop_path(model: SeMaskSegmentor, rate: float) -> list[float]:
    """Stochastic depth as the official Swin: rates linear from 0 to ``rate`` over all Swin blocks in order.

    Returns:
        The per-block rates.
    """
    from .model.swin import SwinBlock

    blocks = [m for m in model.backbone.modules() if isinstance(m, SwinBlock)]
    rates = [rate * i / (len(blocks) - 1) if len(blocks) > 1 else 0.0 for i in range(len(blocks))]
    for block, r in zip(blocks, rates):
        block.drop_path = r
    return rates


def _rng_state(info: tdist.DistInfo) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(info.device) if info.device.type == "cuda" else None}


def run_train(opts: TrainOptions, *, stop_after: int | None = None) -> TrainResult:
    """Train (or resume) a SeMask-FPN model; see the module docstring.

    Args:
        opts: the options.
        stop_after: stop after this many iterations of THIS call, saving ``latest.pth`` as an
            interruption would leave it (for tests of ``--resume``); ``None`` runs to ``iters``.

    Returns:
        A :class:`TrainResult` (on every rank; paths and metrics are rank 0's).

    Raises:
        SemaskError: bad options, data or checkpoints.
    """
    t_wall = time.perf_counter()
    _check_options(opts)
    if os.environ.get("SEMASK_ATTN") and opts.attention != os.environ["SEMASK_ATTN"]:
        opts = replace(opts, attention=os.environ["SEMASK_ATTN"])  # what the model will run (logged and saved)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    info = tdist.setup(opts.device)
    try:
        return _train(opts, info, stop_after, t_wall)
    finally:
        tdist.teardown(info)


def _train(opts: TrainOptions, info: tdist.DistInfo, stop_after: int | None, t_wall: float) -> TrainResult:
    out = Path(opts.out)
    log = _Logger(out, info.is_main, opts.quiet)
    resume_state = _load_resume(out / "latest.pth") if opts.resume else None
    restored: dict[str, Any] = {}
    if resume_state is not None:
        saved_train = resume_state.get("meta", {}).get("train") or {}
        if "drop_path" not in saved_train and opts.drop_path is None:  # a run saved before stochastic depth
            opts = replace(opts, drop_path=0.0)
        opts, restored = _with_saved_options(opts, saved_train)
        _check_data_root(opts)
    init_data = read_checkpoint(opts.init) if opts.init is not None and not opts.resume else None

    # -- configuration and data -------------------------------------------------------------------
    variant = opts.variant
    if resume_state is not None and (variant is None or ("variant" in restored and variant not in VARIANT_CHOICES)):
        # the saved model config, not a config file that may have moved since (or a relative path)
        base = SeMaskConfig.from_dict(resume_state["meta"]["semask_config"])
        variant = variant or "resumed"
    else:
        base = load_variant(variant) if variant is not None else None
    if variant is None and init_data is None and opts.data == "synthetic":
        variant = "demo"  # the built-in demo architecture is the natural default on synthetic scenes
        base = load_variant(variant)
    if variant is None:
        if init_data is None or checkpoint_kind(init_data) != "semask":
            raise ConfigError("--variant is required (tiny, small, base, large, demo or a config .json), "
                              "unless --init is a SeMask checkpoint or --data is synthetic (default: demo)")
        base, variant = infer_config(init_data), "checkpoint"
    crop = opts.crop or default_crop(variant, base, opts.data)
    n_synth = opts.num_classes
    if opts.data == "synthetic" and n_synth is None:
        n_synth = base.num_classes if base is not None else DEMO_NUM_CLASSES
    data = tdata.open_train_data(opts.data, opts.data_root, num_classes=n_synth, size=crop, seed=opts.seed,
                                 eval_size=opts.eval_size)
    if variant == "checkpoint" and base.num_classes != data.num_classes:
        # fine-tuning a SeMask checkpoint on other classes: its architecture (semantic modes included) with the
        # data's class count; the class-sized tensors start fresh (training/init.py)
        base = replace(base, num_classes=data.num_classes, sem_num_classes=data.num_classes, dataset="custom",
                       name=f"{base.name}_{data.num_classes}cls")
    config = resolve_config(variant if variant in ("demo", "tiny", "small", "base", "large") else "json", base,
                            opts.data, data.num_classes, crop, data.synthetic)
    if resume_state is not None:
        saved = SeMaskConfig.from_dict(resume_state["meta"]["semask_config"])
        if saved != config:
            raise ConfigError(f"--resume: {out / 'latest.pth'} was trained with another model config "
                              f"({saved.name}); resume with the same --variant/--data/--crop/--num-classes")
    iters = opts.iters or (DEMO_ITERS if variant == "demo" else OFFICIAL_ITERS)
    recipe = DEMO_RECIPE if variant == "demo" else official_recipe(recipe_arch(config), opts.data)
    lr = opts.lr or recipe.lr
    weight_decay = recipe.weight_decay if opts.weight_decay is None else opts.weight_decay
    batch = opts.batch_size or recipe.batch
    _check_batchnorm_values(crop, batch * info.world_size)
    warmup = default_warmup(iters) if opts.warmup is None else opts.warmup
    eval_every = opts.eval_every or max(iters // 10, min(iters, 100))
    save_every = opts.save_every or eval_every
    ohem = official_ohem(variant, opts.data, config.embed_dim) if opts.ohem is None else opts.ohem
    official_arch = variant in ("tiny", "small", "base", "large", "checkpoint")
    drop_rate = (OFFICIAL_DROP_PATH if official_arch else 0.0) if opts.drop_path is None else opts.drop_path
    # the run's options as resolved, saved with every checkpoint: a resumed run continues with them
    resolved = replace(opts, iters=iters, lr=lr, weight_decay=weight_decay, batch_size=batch, crop=tuple(crop),
                       warmup=warmup,
                       eval_every=eval_every, save_every=save_every, ohem=ohem, drop_path=drop_rate,
                       variant=str(Path(variant).resolve()) if variant not in VARIANT_CHOICES + ("checkpoint", "resumed")
                       and Path(variant).is_file() else variant,
                       data_root=Path(opts.data_root).resolve() if opts.data_root is not None else None)

    # -- model -------------------------------------------------------------------------------------
    torch.manual_seed(opts.seed)  # the same initial weights on every rank
    model = SeMaskSegmentor(config, attention_backend=opts.attention)
    set_drop_path(model, drop_rate)
    official_init(model, opts.gamma_init)
    report = InitReport("scratch")
    if resume_state is None and opts.init is not None:
        report = init_from_checkpoint(model, opts.init, opts.gamma_init, data=init_data)
    model.class_names = tuple(data.classes)
    model.palette = [tuple(int(c) for c in p) for p in data.palette]
    model.to(info.device).train()
    optimizer = build_optimizer(model, lr, weight_decay)
    schedule = PolySchedule(lr, iters, warmup=warmup, warmup_ratio=recipe.warmup_ratio)
    start = 0
    if resume_state is not None:
        load_state_dict_strict(model, resume_state["state_dict"], where=str(out / "latest.pth"))
        optimizer.load_state_dict(resume_state["optimizer"])
        start = int(resume_state["iteration"])
        if resume_state.get("scheduler"):
            schedule.load_state_dict(resume_state["scheduler"])
        # this run's options (the saved ones unless given again): the loaded states hold the interrupted run's
        schedule.base_lr, schedule.warmup, schedule.max_iters = lr, warmup, iters
        optimizer.param_groups[0]["weight_decay"] = weight_decay  # (group 1: the no-decay parameters)
    rngs = (resume_state or {}).get("rng") or []
    if len(rngs) == info.world_size:
        torch.set_rng_state(rngs[info.rank]["torch"])
        if info.device.type == "cuda" and rngs[info.rank].get("cuda") is not None:
            torch.cuda.set_rng_state(rngs[info.rank]["cuda"], info.device)
    else:
        torch.manual_seed(opts.seed * 1000 + info.rank + start)  # per-rank seeds (dropout)
    net: torch.nn.Module = model
    if info.distributed:
        model = tdist.convert_sync_batchnorm(model, info.device)
        net = tdist.wrap_ddp(model, info)
    sampler = OhemSampler(thresh=None, min_kept=100_000) if ohem else None  # the official OHEMPixelSampler
    augment = TrainAugment(crop_size=tuple(crop), img_scale=tuple(config.test_scale), ratio_range=recipe.ratio_range,
                           cat_max_ratio=recipe.cat_max_ratio)

    groups = param_groups(model, weight_decay)
    start_record = {
        "event": "start" if resume_state is None else "resume", "iter": start, "world_size": info.world_size,
        "device": str(info.device), "options": resolved.to_json(), "config": config.to_dict(),
        "iters": iters, "lr": lr, "batch_per_process": batch, "warmup": warmup, "eval_every": eval_every,
        "data": data.description, "init": report.to_dict(), "ohem": ohem, "drop_path": drop_rate,
        "restored_options": {k: (str(v) if isinstance(v, Path) else v) for k, v in restored.items()},
        "no_decay_params": len(groups[1]["names"]), "decay_params": len(groups[0]["names"]),
    }
    # resumed: the interrupted run's records past the save; fresh: those of a run stopped before its first save
    start_record["dropped_log_records"] = log.drop_after(start)
    log.event(start_record)
    log.say(f"{'resuming at iteration ' + str(start) if resume_state else 'training'} {config.name}: "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {iters} iterations × "
            f"{batch}×{info.world_size} crops {crop[0]}x{crop[1]}, lr {lr:g}, warm-up {warmup}"
            f"{', OHEM' if ohem else ''}{f', drop path {drop_rate:g}' if drop_rate else ''}; {data.description}")
    if restored:
        log.say("options of the interrupted run: " + ", ".join(
            f"--{k.replace('_', '-')} {'x'.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in restored.items()))
    saved_world = (resume_state or {}).get("world_size")
    if saved_world is not None and int(saved_world) != info.world_size:
        log.say(f"warning: the interrupted run had {saved_world} process(es), this one {info.world_size}: the global "
                f"batch is now {batch}x{info.world_size} crops and the data order differs, so this run will not equal "
                "an uninterrupted one (run it with the same torchrun --nproc-per-node for that)")
    if config.sem_num_classes < config.num_classes:
        log.say(f"the semantic branch has {config.sem_num_classes} classes, the head {config.num_classes} (the "
                f"official pairing): the semantic loss ignores classes {config.sem_num_classes} and above")
    if resume_state is None:
        log.say(report.summary())
    elif start >= iters:
        log.say(f"{out} is already at iteration {start} of {iters}: nothing to train (pass a larger --iters to "
                "train further)")

    result = TrainResult(out, config, start, start, init=report)
    end = iters if stop_after is None else min(iters, start + stop_after)
    batches = tdata.TrainBatches(data.train, augment, batch, info, opts.seed, start, end, data.synthetic)
    loader = tdata.batch_loader(batches, opts.workers)

    saved = {"iteration": start if resume_state is not None else 0}  # what latest.pth holds

    def save(it_done: int, final: bool) -> None:
        # the loss is checked before each update, so the last update can still blow the weights up (a huge --lr)
        if not all(bool(torch.isfinite(t).all()) for t in (*model.parameters(), *model.buffers())
                   if t.is_floating_point()):
            raise SemaskError(f"the weights became non-finite (inf/NaN) by iteration {it_done}; nothing was saved "
                              "then: lower --lr")
        rng = tdist.all_gather_objects(info, _rng_state(info))
        # the losses since the last train record: a resumed run averages them into its first record as this one would
        log_windows = tdist.all_gather_objects(info, [w.tolist() for w in window])
        if info.is_main:
            meta = {"iteration": it_done, "train": resolved.to_json()}
            extra = {"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                     "iteration": it_done, "rng": rng, "world_size": info.world_size, "log_window": log_windows}
            result.latest = save_checkpoint(model, out / "latest.pth", meta=meta, extra=extra)
            log.say(f"saved {result.latest} (iteration {it_done})")
            saved["iteration"] = it_done
            if final:
                result.final = save_checkpoint(model, out / "final.pth", meta=meta)
                log.say(f"saved {result.final}")
        tdist.barrier(info)

    def run_eval(it_done: int) -> None:
        cm = tdata.evaluate(model, data.val, config.num_classes, info, config.test_scale, batch)
        metrics = cm.to_dict(data.classes)
        result.metrics = metrics
        log.event({"event": "eval", "iter": it_done, **metrics})
        per = ", ".join(f"{c['class']} {100 * c['iou']:.1f}" for c in metrics["per_class"] if c["iou"] is not None)
        log.say(f"iteration {it_done}: held-out mIoU {100 * (metrics['mIoU'] or 0):.2f} "
                f"aAcc {100 * (metrics['aAcc'] or 0):.2f} ({per})")

    if (resume_state is not None and start > 0 and (start % eval_every == 0 or start == iters)
            and not log.has_eval_at(start)):
        run_eval(start)  # saved, then stopped during its evaluation (each save comes first): evaluate it now
    bar = None
    if info.is_main and not opts.quiet:
        from tqdm import tqdm

        bar = tqdm(total=iters, initial=start, desc="training", unit="it", dynamic_ncols=True, file=sys.stderr)
        log.bar = bar
    saved_windows = (resume_state or {}).get("log_window") or []
    window = [torch.tensor(v) for v in saved_windows[info.rank]] if len(saved_windows) == info.world_size else []
    t_train = time.perf_counter()
    t_data = 0.0
    t_last = time.perf_counter()
    it = start
    # from the forward to the end of the update the model is no longer that of iteration `it` (the forward updates
    # BatchNorm statistics and draws random numbers, the step the weights); between iterations it is
    mid_iteration = [False]
    try:
        for x, y in loader:
            t_data += time.perf_counter() - t_last
            cur_lr = schedule.apply(optimizer, it)
            x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
            mid_iteration[0] = True
            seg, sem = net(x)
            loss, parts = semask_loss(seg, sem, y, sampler=sampler)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):  # before the update: the saved weights stay those of a finite loss
                raise SemaskError(f"the loss became {loss_value} at iteration {it}; lower --lr or check the labels")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            window.append(torch.tensor([loss_value, parts["loss_seg"], parts["loss_sem"], parts["acc"]]))
            it += 1
            mid_iteration[0] = False
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{cur_lr:.2e}", refresh=False)
                bar.update(1)
            if it % opts.log_every == 0 or it == end:
                stats = tdist.all_reduce_sum(info, torch.stack(window).mean(0)) / info.world_size
                result.losses.update({it - len(window) + k: float(v[0]) for k, v in enumerate(window)})
                elapsed = time.perf_counter() - t_train
                log.event({"event": "train", "iter": it, "loss": float(stats[0]), "loss_seg": float(stats[1]),
                           "loss_sem": float(stats[2]), "acc": float(stats[3]), "lr": cur_lr,
                           "sec_per_iter": elapsed / (it - start), "data_sec": t_data, "time": elapsed})
                window.clear()
            # saved before the evaluation: an error there (a bad held-out label) does not lose these iterations
            if it % save_every == 0 or it == iters or it == end:
                save(it, final=it == iters)
            if it % eval_every == 0 or it == iters:
                run_eval(it)
            t_last = time.perf_counter()
    except BaseException as exc:
        interrupted = isinstance(exc, (KeyboardInterrupt, Terminated))
        if not interrupted and not mid_iteration[0] and it > saved["iteration"] and info.world_size == 1:
            # an error between iterations (a corrupt training image or label drawn deep into the set, a failed log
            # write or evaluation) keeps the iterations done since the last save: the model is that of iteration
            # `it`, complete, so the resume equals an uninterrupted run. An error inside an iteration (a non-finite
            # loss) keeps the last save. (With DDP the other processes cannot join the save.)
            with contextlib.suppress(Exception):
                save(it, final=False)
        stopped_at = saved["iteration"]
        with contextlib.suppress(Exception):  # the log may be what failed (a full disk): the error below matters more
            log.event({"event": "interrupted" if interrupted else "error",
                       "iter": it, "saved_iter": stopped_at, "error": str(exc)[:300] or type(exc).__name__})
        if stopped_at > 0 and info.is_main and (out / "latest.pth").is_file():
            threads = f" --threads {opts.threads}" if opts.threads is not None else ""  # not taken over (machine)
            log.say(f"stopped at iteration {it}; {out / 'latest.pth'} holds iteration {stopped_at}: continue with "
                    f"semask-train --resume --out {out}{threads}")
        raise
    if bar is not None:
        bar.close()
        log.bar = None
    if it == iters and start >= iters and not (out / "final.pth").is_file():
        save(it, final=True)  # a run stopped between writing latest.pth and final.pth (or final.pth was removed)
    result.end_iter = it
    result.train_seconds = time.perf_counter() - t_train
    result.wall_seconds = time.perf_counter() - t_wall
    log.event({"event": "done" if it == iters else "stopped", "iter": it, "train_seconds": result.train_seconds,
               "wall_seconds": result.wall_seconds,
               "mIoU": (result.metrics or {}).get("mIoU")})
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m semask_deploy.train`` (what torchrun runs): the ``semask-train`` command line."""
    from .cli.train import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
