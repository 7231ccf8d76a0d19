"""``train ser|ter`` and ``probe speaker``: the click layer over the trainers."""
from __future__ import annotations

import click

from commands.common import JSON_OUT, WORKDIR, ProjectGroup, chosen_run, emit_json
from commands.recipes import RECIPE, recipe_used


@click.group(cls=ProjectGroup)
def train() -> None:
    """Train a model with leave-one-group-out cross-validation."""


def _device(device: str) -> str:
    from core.devices import resolve_device
    return resolve_device(device)


def _model_overrides(preset: str, values: tuple[str, ...]) -> dict:
    """``-m FIELD=VALUE`` strings → overrides of the preset's config (SERConfig or HeadConfig),
    converted like stage parameters."""
    import dataclasses

    from core.errors import StageError
    from models.ser_train import model_config
    from pipeline.stages import convert_value
    base = model_config(preset)
    fields = {f.name for f in dataclasses.fields(base)}
    out = {}
    for v in values:
        key, _, val = v.partition("=")
        if key not in fields or not val:
            raise click.BadParameter(f"{v!r}: expected FIELD=VALUE with FIELD one of "
                                     f"{', '.join(sorted(fields))}", param_hint="--model")
        try:
            out[key] = convert_value(getattr(base, key), val, key)
        except StageError as e:
            raise click.BadParameter(str(e), param_hint="--model") from None
    return out


CLASS_BALANCE = click.option(
    "--class-balance", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
    help="Class-weighted loss (the metric is UA): auto = on when the largest training class has "
         ">= 1.5x the smallest's utterances; off = plain cross-entropy (the paper's).")
VAL_SPLIT = click.option(
    "--val-split", type=click.Choice(["auto", "speaker", "utterance"]), default="auto", show_default=True,
    help="Validation rows inside the training groups (model selection, early stopping, fusion "
         "weights): speaker = whole held-out speakers, ~10 % of the utterances (voices unseen in "
         "training, like the test group's); utterance = 10 % of each class (speakers shared with "
         "training, which flatters what memorises voices); auto = speaker when >= 3 speakers are "
         "named and a few make ~10 %, else utterance. Train SER and TER alike to fuse them.")
CHECKPOINT_MINUTES = click.option(
    "--checkpoint-minutes", type=click.FloatRange(min=0.0), default=5.0, show_default=True,
    help="Minutes of training between checkpoints (written in the background; always one at the "
         "end of a fold). A killed run resumes from the last one.")


@train.command("ser")
@click.option("--config", "preset", default="small", show_default=True,
              type=click.Choice(["small", "large", "spec", "head-linear", "head-mlp", "head-attentive",
                                 "mfcc-linear"]),
              help="The paper's network: small: d=8, f=48 (the paper's); large: d=128, f=2; spec: mel "
                   "spectrogram as input (ablation). Reference heads on the same cache (softmax "
                   "layer weights, pooling over time): head-linear (mean → linear), head-mlp "
                   "(mean → 2-layer MLP), head-attentive (attentive statistics pooling → MLP); "
                   "mfcc-linear: MFCC mean/std → logistic regression (the classic baseline).")
@click.option("--folds", default="all", show_default=True,
              help="'all', a count k (first k groups) or comma-separated group names.")
@click.option("--crops", type=int, default=None,
              help="Training crops seen per fold (default for the paper's network: 2 M = batch 2 × "
                   "1 M steps; the reference heads default to 40 passes over the training utterances).")
@click.option("--steps", type=int, default=0, help="Optimizer steps per fold (overrides --crops).")
@click.option("--batch-size", type=int, default=None,
              help="Crops per step (default: 2, the paper's; heads: 32); the learning rate follows "
                   "--lr-rule unless --lr is given. On a GPU: 256 (its accuracy checked on emodb4) "
                   "to 1024 (≈ 13,400 crops/s on an H200, compiled; on emodb4 at equal crops its "
                   "UA was 0.018 below 256's, 95% CI [-0.038, +0.003]: bench/RESULTS.md).")
@click.option("--lr", type=float, default=0.0, help="Fixed learning rate (default: the rule; heads: 5e-3).")
@click.option("--lr-rule", type=click.Choice(["sqrt", "linear", "none"]), default="sqrt",
              show_default=True, help="sqrt: 1e-4·sqrt(B/2) capped at 5e-4 (safe for the raw layer weights).")
@click.option("--select", type=click.Choice(["last", "val"]), default=None,
              help="last: the final model (official; the paper network's default); val: best "
                   "validation UA inside the training groups (the heads' default).")
@click.option("--run", "run_name", default="", help="Run folder name (default: the config name).")
@click.option("--widths", type=click.Choice(["paper", "cpu"]), default="paper", show_default=True,
              help="paper: the official layer widths; cpu: narrower convs/LSTMs (same architecture) "
                   "for CPU runs.")
@click.option("--model", "-m", "model_values", multiple=True, metavar="FIELD=VALUE",
              help="Free architecture values, e.g. -m dim_neck=16 -m freq=24 -m classifier_act=relu.")
@click.option("--encoder-stage", default="speech", show_default=True,
              help="Cached speech-encoder stage whose layers are the input (not used by spec; "
                   "'wav2vec' is its former name).")
@click.option("--window-weighting", type=click.Choice(["equal", "frames"]), default=None,
              help="Inference: equal = plain mean over the model's windows, the zero-padded last "
                   "one included (official; the default for the paper's network); frames = windows "
                   "weighted by their real frames (the default for the reference heads).")
@CLASS_BALANCE
@VAL_SPLIT
@click.option("--eval-every", type=int, default=0, help="Steps between validation passes (0: ~20 per fold).")
@CHECKPOINT_MINUTES
@click.option("--amp", type=click.Choice(["bf16", "off"]), default="bf16", show_default=True,
              is_flag=False, flag_value="bf16",
              help="bf16 autocast on CUDA.")
@click.option("--resident", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
              help="Keep the features in device memory (auto: when they fit): the whole corpus once "
                   "for every fold when it fits, else each fold's training set.")
@click.option("--compile", "compile_mode", default="auto", show_default=True,
              type=click.Choice(["auto", "off", "default", "max-autotune-no-cudagraphs"]),
              help="torch.compile the network's layer weights and conv stacks for training steps on "
                   "CUDA: auto (mode default when a process computes >= 1 M crops of a fold in steps of "
                   ">= 1024 crops; a data-parallel rank its shares), off, or a torch.compile mode. "
                   "Compiled, the layer weights read each crop's frames in place in the resident "
                   "corpus (no crop-sized copy). Compiled / eager steps on an H200, same run: 1.04x at "
                   "batch 512, 1.41x at 1024 (16,700 crops/s), after a 15-25 s compile; results "
                   "equal up to float rounding; a failed compile falls back to eager.")
@click.option("--cuda-graph", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="Replay each training step from a CUDA graph (one launch instead of ~1,000 kernels) "
                   "after 3 eager steps: auto = where the step is compiled on CUDA and a fold trains "
                   "on one GPU. The same math; a failed capture falls back to eager steps. On an "
                   "H200: 1.02x the compiled step; the paper's 5 folds x 2 M crops at batch 1024 in "
                   "9.9 min through one command.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--gpus", default=None, metavar="0,1", help="Run folds in parallel, one per GPU.")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run folds on an existing Dask cluster (workers must see the work directory).")
@click.option("--data-parallel", is_flag=True,
              help="With --gpus: the folds a last round would leave GPUs idle for train on several "
                   "GPUs at once (DDP; 5 folds on 2 GPUs: the fifth on both). Their results differ "
                   "from one-GPU training (other crops per step). On 2 x H200 a fold on both GPUs "
                   "stepped 1.34x faster than on one (DDP costs ~18 %), so 5 folds gain little: "
                   "see bench/RESULTS.md.")
@RECIPE
@JSON_OUT
@WORKDIR
def train_ser_cmd(as_json, preset, folds, crops, steps, batch_size, lr, lr_rule, select, run_name, widths,
                  model_values, encoder_stage, window_weighting, class_balance, val_split, eval_every,
                  checkpoint_minutes, amp, resident, compile_mode, cuda_graph, seed, device, gpus, scheduler, data_parallel, workdir) -> None:
    """Train a speech model with leave-one-group-out cross-validation: the paper's AutoVC-like
    network, or a reference head on the same cached features; writes runs/ser/<config>/
    (checkpoints, predictions, metrics, layer weights)."""
    import dataclasses

    from commands.display import console
    from models.folds import SplitConfig
    from models.heads import HEAD_TRAIN, HEADS
    from models.run_folds import train_run
    from models.ser import CPU_WIDTHS
    from models.ser_sources import StoreKeys
    from models.ser_train import SERInputs, SERRun, model_config, ser_schedule
    from pipeline.scheduler import parse_gpus
    from pipeline.stages import canonical
    head = preset in HEADS
    widths_cpu = CPU_WIDTHS if widths == "cpu" and not head else {}
    model = model_config(preset, **{**widths_cpu, **_model_overrides(preset, model_values)})
    base = HEAD_TRAIN if head else SERRun().train
    batch_size = batch_size or base.batch_size
    if head and crops is None and not steps:  # passes over the training utterances
        n_steps, rate, epochs = 0, lr or base.lr, base.epochs
    else:
        n_steps, rate = ser_schedule(crops or 2_000_000, batch_size, steps, lr, lr_rule)
        epochs = 0.0
    train_cfg = dataclasses.replace(base, steps=n_steps, epochs=epochs, batch_size=batch_size, lr=rate,
                                    seed=seed, eval_every=eval_every, select=select or base.select,
                                    class_balance=class_balance, checkpoint_minutes=checkpoint_minutes)
    spec = SERRun(run=run_name or preset, model=model, train=train_cfg, recipe=recipe_used(),
                  split=SplitConfig(val_by=val_split),
                  inputs=SERInputs(keys=StoreKeys(encoder_stage=canonical(encoder_stage)), amp=amp, resident=resident,
                                   compile=compile_mode, cuda_graph=cuda_graph,
                                   window_weighting=window_weighting or ("frames" if head else "equal")))
    schedule = f"{epochs:g} passes" if epochs else f"{n_steps} steps"
    console.print(f"SER {spec.run}: {schedule} × batch {batch_size} per fold, lr {rate:g}, select "
                  f"{train_cfg.select}, class balance {class_balance}"
                  + (f" (recipe {spec.recipe})" if spec.recipe else ""))
    if not (gpus or scheduler) and _device(device) == "cpu" and n_steps > 20_000:
        console.print(f"[yellow]warning:[/yellow] {n_steps:,} steps per fold on the CPU "
                      "take days (the paper's schedule is a GPU job); on a CPU, --recipe cpu "
                      "trains the head-linear reference head in minutes, the most accurate there "
                      "(README, 'Which model to train'); the paper's network at CPU widths: "
                      "--widths cpu --steps 500 --batch-size 16")
    _report("SER", train_run(workdir, spec, folds, device, parse_gpus(gpus), scheduler,
                             data_parallel=data_parallel), as_json)


def _report(task: str, s: dict, as_json: bool) -> None:
    """A run summary in one line (and as JSON on stdout with --json)."""
    from commands.display import console
    m = s["mean"]
    console.print(f"{task} {s['run']}: UA {m['ua']:.3f} ± {m['ua_std']:.3f}, WA {m['wa']:.3f} "
                  f"(mean over {m['n_folds']} folds); pooled UA {s['pooled']['ua']:.3f}")
    if as_json:
        emit_json(s)


@click.group(cls=ProjectGroup)
def probe() -> None:
    """Probes on trained models' representations."""


@probe.command("speaker")
@click.option("--run", "--config", "run", default=None, metavar="NAME",
              help="The SER run whose encoder codes are probed (runs/ser/<name>: small, large, or "
                   "the --run name it was trained under; default: small when trained, else the "
                   "only trained SER run). --config is the old spelling.")
@click.option("--epochs", type=int, default=60, show_default=True)
@click.option("--activation", type=click.Choice(["none", "relu"]), default="none", show_default=True,
              help="Between the probe's linear layers (paper: linear layers).")
@click.option("--pooling", type=click.Choice(["flatten", "mean"]), default="flatten", show_default=True,
              help="flatten: codes in time order cut/padded to 2048 (paper; large keeps only its first "
                   "16 frames); mean: the codes' mean over the utterance (same coverage for any d, f).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@WORKDIR
def probe_speaker_cmd(run, epochs, activation, pooling, seed, device, workdir) -> None:
    """Speaker-ID probe (2048 → 1024 → 1024 → speakers) on a SER run's encoder codes,
    speaker-dependent 80/20 splits × 5; lower accuracy = better disentanglement."""
    from models.probe import ProbeConfig, probe_speaker
    from commands.display import console
    run = chosen_run(workdir, "ser", run, "--run")
    r = probe_speaker(workdir, run, ProbeConfig(epochs=epochs, activation=activation, pooling=pooling,
                                                seed=seed), _device(device))
    console.print(f"speaker probe on SER {run}: accuracy {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} "
                  f"({r['n_speakers']} speakers, chance {r['chance']:.3f}, n={r['n']})")


@train.command("ter")
@click.option("--folds", default="all", show_default=True,
              help="'all', a count k (first k groups) or comma-separated group names.")
@click.option("--epochs", type=float, default=20, show_default=True,
              help="Passes over each fold's training utterances.")
@click.option("--steps", type=int, default=0, help="Optimizer steps per fold (overrides --epochs).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=None,
              help="Adam learning rate (default: 3e-4 for the CNN, 5e-3 for the reference heads).")
@click.option("--config", "config", type=click.Choice(["cnn", "text-linear", "text-mlp"]), default="cnn",
              show_default=True,
              help="cnn: the paper's 1-D CNN; reference heads on the same tokens: text-linear (mean "
                   "over tokens → logistic regression), text-mlp (mean → 2-layer MLP).")
@click.option("--paper", is_flag=True,
              help="The paper's schedule: batch 4, lr 1e-4, 412,800 steps per fold (overrides the above).")
@click.option("--official", is_flag=True,
              help="Reproduce the official quirks: sigmoid before the cross-entropy and average "
                   "pooling over 118 positions including padding.")
@click.option("--max-tokens", type=int, default=122, show_default=True,
              help="Token features are zero-padded/truncated to this length (official 122).")
@click.option("--select", type=click.Choice(["val", "last"]), default="val", show_default=True,
              help="val: best validation UA inside the training groups; last: the final model.")
@click.option("--eval-every", type=int, default=0, help="Steps between validation passes (0: ~20 per fold).")
@click.option("--run", "run_name", default=None, help="Run folder: runs/ter/<name> (default: the config name).")
@CLASS_BALANCE
@VAL_SPLIT
@CHECKPOINT_MINUTES
@click.option("--amp", type=click.Choice(["bf16", "off"]), default="off", show_default=True,
              is_flag=False, flag_value="bf16",
              help="bf16 autocast on CUDA (`--amp` alone = bf16, as in train ser).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@RECIPE
@JSON_OUT
@WORKDIR
def train_ter_cmd(as_json, folds, epochs, steps, batch_size, lr, config, paper, official, max_tokens, select,
                  eval_every, run_name, class_balance, val_split, checkpoint_minutes, amp, seed, device,
                  workdir) -> None:
    """Train a text model on cached `text` token features with leave-one-group-out
    cross-validation (or the corpus's official split): the paper's 1-D CNN, or a reference head;
    writes runs/ter/<run>/ (checkpoints, predictions, metrics)."""
    import dataclasses

    from models.folds import SplitConfig
    from models.heads import TEXT_HEADS
    from models.run_folds import train_run
    from models.ter import TERConfig
    from models.ter_train import TERInputs, TERRun
    from models.trainer import TrainConfig
    if config in TEXT_HEADS and (paper or official):
        raise click.BadParameter("--paper and --official are the CNN's", param_hint="--config")
    lr = lr or (3e-4 if config == "cnn" else 5e-3)
    if paper:
        steps, epochs, batch_size, lr = 412_800, 0.0, 4, 1e-4
    model = (dataclasses.replace(TEXT_HEADS[config], max_tokens=max_tokens) if config in TEXT_HEADS else
             TERConfig(max_tokens=max_tokens, sigmoid_logits=official,
                       pooling="official" if official else "masked"))
    run_name = run_name or config
    train_cfg = TrainConfig(steps=steps, epochs=0.0 if steps else epochs, batch_size=batch_size, lr=lr,
                            seed=seed, eval_every=eval_every, select=select, class_balance=class_balance,
                            checkpoint_minutes=checkpoint_minutes)
    spec = TERRun(run=run_name, model=model, train=train_cfg, inputs=TERInputs(amp=amp), recipe=recipe_used(),
                  split=SplitConfig(val_by=val_split))
    _report("TER", train_run(workdir, spec, folds, _device(device)), as_json)
