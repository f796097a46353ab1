"""`trainer train`: set up, fit, evaluate the kept model, and write what the run folder tells.

run(cfg) -> setup() -> fit() -> calibrate() on val -> final_eval() -> report, summary.json and
the done line. Stopped
by SIGUSR1/SIGTERM/Ctrl-C, the run saves a checkpoint, requeues a Slurm job (checkpoint.requeue)
and exits with EXIT_PREEMPTED; rerunning the same command continues from the checkpoint.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from trainer import runtime
from trainer.config import RunConfig
from trainer.data.loaders import stop_workers
from trainer.errors import writing
from trainer.evaluation import calibration, plots, report
from trainer.evaluation.evaluate import evaluate, summary_of
from trainer.model.folder import write_calibration
from trainer.model.safeload import load_safetensors
from trainer.train import distributed, rundir
from trainer.train.loop import fit
from trainer.train.preemption import EXIT_PREEMPTED, Preempted, requeue
from trainer.train.setup import Context, setup
from trainer.train.startup import Startup
from trainer.train.state import State


def run(cfg: RunConfig) -> dict:
    """Train, select the best epoch on val, test it, write the run folder; returns the summary."""
    startup = Startup()
    accelerator = distributed.make_accelerator(cfg)
    claim = rundir.Claim(cfg.output_dir, accelerator)
    ok = False
    try:
        ctx, state, model = setup(cfg, accelerator, claim, startup)
        start = time.perf_counter()
        try:
            model = fit(ctx, state, model)
        except Preempted as e:
            _stopped(ctx, state, e)
            ok = True
            raise SystemExit(EXIT_PREEMPTED) from None
        # Checked before final_eval() loads the saved best weights, which would make every rank equal.
        in_sync = distributed.weights_in_sync(
            accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        )
        train_seconds = time.perf_counter() - start
        decoded = distributed.total(ctx.startup.decoded)
        temperature = calibrate(ctx, state, model)
        split, result, preds = final_eval(ctx, state, model, temperature)
        if split:
            write_report(ctx, state, split, result, preds, temperature)
        test = result if split == "test" else {}
        summary = summarize(ctx, state, test, train_seconds, in_sync, temperature, decoded)
        sync_cmd = ctx.tracker.finish()
        ctx.accelerator.print(
            f"{done_line(summary, test, train_seconds)}\n"
            f"model: {ctx.run_dir / 'model'}   (trainer predict {ctx.run_dir / 'model'} IMAGES...)"
        )
        if sync_cmd:
            ctx.accelerator.print(f"W&B offline run: upload it with `{sync_cmd}`")
        if not in_sync:
            print("warning: model weights differ across processes; DDP lost sync", file=sys.stderr)
        ok = True
        return summary
    except Exception as e:
        distributed.name_failed_rank(cfg, accelerator, e)
        raise
    finally:
        # Unlocked on every way out (also exit 75); a run that failed before its first
        # checkpoint puts back the run it was replacing.
        claim.release(succeeded=ok)
        runtime.shutdown(accelerator, barrier=ok)


def calibrate(ctx: Context, state: State, model: torch.nn.Module) -> float:
    """Load the kept model (RUN_DIR/model) into `model`, fit its softmax temperature on val and
    store it in RUN_DIR/model/config.json; 1.0 (nothing stored) without a val split."""
    a = ctx.accelerator
    best = load_safetensors(ctx.run_dir / "model" / "model.safetensors")
    a.unwrap_model(model).load_state_dict(best)
    if "val" not in ctx.index.splits:
        return 1.0
    loader = a.prepare(ctx.pipeline.eval_loader("val"))
    n, cl = len(ctx.class_names), ctx.channels_last
    _, preds = evaluate(
        model, loader, a, n, "calibrate", cl, ctx.pipeline.on_device, keep_logits=True
    )
    stop_workers(loader)
    # Every rank holds all val logits (gathered), so every rank fits the same temperature.
    t = calibration.fit_temperature(preds["logits"], preds["label"])
    fit = calibration.summary(preds["logits"], preds["label"], t)
    numbers = {k: fit[k] for k in ("nll_before", "nll_after", "ece_before", "ece_after")}
    if a.is_main_process:
        write_calibration(
            ctx.run_dir / "model",
            {"temperature": t, "fitted_on": "val", "samples": len(preds["label"]), **numbers},
        )
    a.wait_for_everyone()
    p = state.progress
    ctx.tracker.log(
        "calibration", step=p.step, epoch=p.epoch, phase="calibration", temperature=t, **numbers
    )
    if calibration.all_right(preds["logits"], preds["label"]):
        a.print("calibration: every val image is right, nothing to fit a temperature on: T stays 1")
    else:
        a.print(
            f"calibration: temperature {t:.3f} fitted on val (NLL {fit['nll_before']:.4f} -> "
            f"{fit['nll_after']:.4f}, ECE {fit['ece_before']:.4f} -> {fit['ece_after']:.4f})"
        )
    return t


def final_eval(
    ctx: Context, state: State, model: torch.nn.Module, temperature: float
) -> tuple[str | None, dict, dict]:
    """Evaluate the kept model (loaded by calibrate()) on test, or on val when there is no test
    split, with its calibrated probabilities."""
    split = next((s for s in ("test", "val") if s in ctx.index.splits), None)
    if split is None:
        return None, {}, {}
    a = ctx.accelerator
    loader = a.prepare(ctx.pipeline.eval_loader(split))
    n, cl = len(ctx.class_names), ctx.channels_last
    result, preds = evaluate(
        model, loader, a, n, split, cl, ctx.pipeline.on_device, temperature, keep_logits=True
    )
    stop_workers(loader)
    if split == "test":
        p = state.progress
        ctx.tracker.log(
            "test", step=p.step, epoch=p.epoch, phase="test", **summary_of(result, "test")
        )
    return split, result, preds


def write_report(
    ctx: Context, state: State, split: str, result: dict, preds: dict, temperature: float
) -> None:
    """RUN_DIR/report.{json,md}, RUN_DIR/predictions.csv and RUN_DIR/plots/*.png (main
    process); the plots are also sent to W&B."""
    a, run_dir = ctx.accelerator, ctx.run_dir
    if a.is_main_process:
        plot_dir = run_dir / "plots"
        epochs = [e for e in ctx.tracker.events if e["event"] == "epoch"]
        written = {
            "learning_curves": plots.learning_curves(epochs, plot_dir / "learning_curves.png"),
            "training_samples": plots.training_samples(
                ctx.pipeline.samples(), ctx.class_names, ctx.pre, plot_dir / "training_samples.png"
            ),
        }
        mistakes = report.confident_mistakes(preds, ctx.index.splits[split])
        written |= report.write_report(
            run_dir,
            result,
            ctx.class_names,
            mistakes,
            extra_plots={
                "learning curves": "plots/learning_curves.png",
                "training samples (after augmentation)": "plots/training_samples.png",
            },
            decisions=report.decisions(
                preds["logits"], preds["label"], ctx.class_names, temperature
            ),
            split=split,
            model=str(run_dir / "model"),
            data=str(ctx.index.root),
            epoch=state.progress.best_epoch,
        )
        report.write_predictions(
            run_dir / "predictions.csv",
            preds,
            ctx.index.splits[split],
            ctx.class_names,
            ctx.index.root,
        )
        ctx.tracker.log_images(written, step=state.progress.step)
    a.wait_for_everyone()


def summarize(
    ctx: Context,
    state: State,
    test: dict,
    train_seconds: float,
    in_sync: bool,
    temperature: float,
    decoded: int,
) -> dict:
    """RUN_DIR/summary.json (main process): the run's numbers and where its outputs are."""
    a, p, run_dir = ctx.accelerator, state.progress, ctx.run_dir
    summary = {
        "best_val_accuracy": p.best_val_accuracy,
        "best_val_loss": p.best_val_loss,
        "best_epoch": p.best_epoch,
        **summary_of(test, "test"),
        "test_per_class_accuracy": test.get("per_class_accuracy"),
        "test_confusion_matrix": test.get("confusion_matrix"),
        "temperature": temperature,  # softmax temperature fitted on val (1.0: no val split)
        "class_names": ctx.class_names,
        "epochs": p.epoch,
        "steps": p.step,
        "phases": [ph.name for ph in ctx.cfg.train.phases],
        "samples": ctx.index.counts(),
        "train_seconds": round(train_seconds, 3),
        "world_size": a.num_processes,
        "mixed_precision": a.mixed_precision,
        "pipeline": ctx.pipeline.name,  # the input path data.pipeline chose: pil, cached, decode
        "time_to_first_step": ctx.startup.summary(),  # seconds, in total and part by part
        "images_decoded": decoded,  # before training, by all processes: 0 when caches had them
        "weights_in_sync": in_sync,
        "model_dir": str(run_dir / "model"),
        "report": str(run_dir / "report.md"),
    }
    if a.is_main_process:
        text = json.dumps(summary, indent=2, ensure_ascii=False)
        with writing(run_dir / "summary.json"):
            (run_dir / "summary.json").write_text(text, encoding="utf-8")
    return summary


def done_line(summary: dict, test: dict, train_seconds: float) -> str:
    """'done in 12.3s: best val accuracy 0.9 (epoch 3), test accuracy 0.8 on 40 images'."""
    best = (
        f"best val accuracy {summary['best_val_accuracy']:.4f} (epoch {summary['best_epoch']})"
        if summary["best_val_accuracy"] is not None
        else "no val split (the last epoch's model is kept)"
    )
    tested = (
        f"test accuracy {test['accuracy']:.4f} on {test['samples']} images"
        if test
        else "no test split"
    )
    return f"done in {train_seconds:.1f}s: {best}, {tested}"


def _stopped(ctx: Context, state: State, e: Preempted) -> None:
    ctx.tracker.finish()
    ctx.accelerator.print(
        f"stopped by {e.signal_name} at step {state.progress.step}: checkpoint {e.checkpoint}\n"
        f"the same command continues the run (checkpoint.resume=auto)"
    )
    if ctx.cfg.checkpoint.requeue and ctx.stop.requeue_wanted and ctx.accelerator.is_main_process:
        requeue(say=ctx.accelerator.print)  # SIGUSR1 only: a SIGTERM (scancel) must stay a cancel
