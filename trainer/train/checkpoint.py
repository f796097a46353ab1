"""Resumable checkpoints: written aside, verified, renamed into place, pruned only afterwards.

RUN_DIR/checkpoints/step-00001234/ holds
  model.safetensors      the model's weights and buffers (unwrapped)
  ema.safetensors        the EMA copy, when train.ema_decay is set
  optimizer.pt           the optimizer state (tensors, numbers, lists only: loaded weights_only)
  rank-00000.json ...    each process's RNG states and its partial-epoch sums
  trainer_state.json     where the run is (phase, epoch, batch, step), best metric, scheduler
  COMPLETE               a manifest (bytes and sha256 of every file), written last
Everything is written into step-...tmp/, which is renamed into place only when complete, so a
folder named step-NNNNNNNN is whole or absent. A save that fails (a full disk) removes its .tmp
at once, and one left by a killed save is removed when the next run starts, so a retry has the
space back. The same step saved again (after a resume) replaces the old folder only once the new
one is in place. Loading checks the manifest: a damaged checkpoint (a truncated file) is refused
with the reason, and the one before it is used. Nothing here ever unpickles code: JSON,
safetensors and torch.load(weights_only=True).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors.torch import load_file

from trainer.errors import writing

COMPLETE = "COMPLETE"
STATE = "trainer_state.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file and why."""


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step:08d}"


def _is_step_name(name: str) -> bool:
    """step-NNNNNNNN exactly: never a .tmp being written nor an .old being replaced."""
    return name.startswith("step-") and name[5:].isdigit()


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """Checkpoints with a completion marker, oldest first (by step)."""
    if not checkpoints.is_dir():
        return []
    found = (p for p in checkpoints.glob("step-*") if p.is_dir() and _is_step_name(p.name))
    return sorted(p for p in found if (p / COMPLETE).is_file())


def remove_unfinished(checkpoints: Path) -> None:
    """Delete what killed saves left in this run's checkpoints/ (main process, folder locked):
    step-N.tmp (half written; ~100 MB that kept a full disk full), and an old step-N.old that
    a replacement left: put back if its step-N never arrived, else deleted."""
    if not checkpoints.is_dir():
        return
    for path in sorted(checkpoints.glob("step-*")):
        if path.is_symlink() or not path.is_dir():
            continue  # this program writes folders only: anything else is not its to delete
        if path.suffix == ".old" and _is_step_name(path.stem) and not path.with_suffix("").exists():
            os.replace(path, path.with_suffix(""))
        elif path.suffix in (".tmp", ".old") and _is_step_name(path.stem):
            shutil.rmtree(path, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify(folder: Path) -> dict[str, Any]:
    """The checkpoint's trainer_state; raises CheckpointError if any file is missing or damaged."""
    try:
        manifest = json.loads((folder / COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: no readable {COMPLETE} manifest ({e})") from None
    try:
        files = {
            str(name): (int(e["bytes"]), str(e["sha256"])) for name, e in manifest["files"].items()
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{folder / COMPLETE}: not a checkpoint manifest (damaged)") from None
    for name, (expected_bytes, expected_sha) in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        size = path.stat().st_size
        if size != expected_bytes:
            raise CheckpointError(f"{path}: {size} bytes, expected {expected_bytes} (truncated?)")
        if _sha256(path) != expected_sha:
            raise CheckpointError(f"{path}: contents differ from the manifest (damaged)")
    state = _state(folder)
    if not state:
        raise CheckpointError(f"{folder / STATE}: missing or not JSON (damaged)")
    return state


def newest_valid(checkpoints: Path, warn=print) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies, skipping (and naming) damaged ones."""
    for folder in reversed(complete_checkpoints(checkpoints)):
        try:
            return folder, verify(folder)
        except CheckpointError as e:
            warn(f"warning: skipping damaged checkpoint: {e}")
    return None


# RNG states as JSON: no pickles in a checkpoint.
def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))

    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])


@dataclass
class Payload:
    """What one process contributes to a checkpoint: the main process writes the weights, the
    EMA, the optimizer and trainer_state; every process writes its own rank_state."""

    trainer_state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    ema: dict[str, torch.Tensor] | None
    rank_state: dict[str, Any]  # this process's RNG states and partial sums


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; a CPU copy also frees the device.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save(
    accelerator, checkpoints: Path, step: int, payload: Payload, keep_last: int, keep_best: bool
) -> Path:
    """Collective: every process calls it. Returns the final folder."""
    final = step_dir(checkpoints, step)
    tmp = final.with_name(final.name + ".tmp")
    main, rank = accelerator.is_main_process, accelerator.process_index
    if main:
        remove_unfinished(checkpoints)  # left by a save killed in an earlier run
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        with writing(tmp):  # a full disk names the checkpoint, not "unexpected pos" (torch.save)
            rank_file = tmp / f"rank-{rank:05d}.json"
            rank_file.write_text(json.dumps(payload.rank_state), encoding="utf-8")
            hashes = _write_main(tmp, payload) if main else {}
        accelerator.wait_for_everyone()
        if main:
            with writing(tmp):  # the manifest, too, may meet a full disk
                _commit(tmp, final, hashes)
    except BaseException:
        if main:  # a half-written checkpoint on a full disk would keep it full for the retry
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if main:
        prune(checkpoints, keep_last, keep_best)
    accelerator.wait_for_everyone()
    return final


class _Hashing:
    """A file opened for writing that also hashes what goes through it: the manifest's sha256
    without reading the file back."""

    def __init__(self, path: Path):
        self.file, self.sha = open(path, "wb"), hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _write(path: Path, write) -> str:
    """`write(file)` into `path`; returns the sha256 of the bytes written."""
    out = _Hashing(path)
    with out.file:
        write(out)
    return out.sha.hexdigest()


def _write_main(tmp: Path, payload: Payload) -> dict[str, str]:
    """The files only the main process writes: weights, EMA, optimizer, where the run is.
    Returns the sha256 of each, by file name."""
    hashes = {}
    for name, state in (("model.safetensors", payload.model), ("ema.safetensors", payload.ema)):
        if state is not None:
            # serialized in memory: one model-sized copy (the optimizer streams)
            data = safetensors.torch.save(_contiguous(state))
            hashes[name] = _write(tmp / name, lambda f, data=data: f.write(data))
    if payload.optimizer is not None:
        hashes["optimizer.pt"] = _write(
            tmp / "optimizer.pt", lambda f: torch.save(payload.optimizer, f)
        )
    text = json.dumps(payload.trainer_state, indent=2).encode("utf-8")
    hashes[STATE] = _write(tmp / STATE, lambda f: f.write(text))
    return hashes


def _commit(tmp: Path, final: Path, hashes: dict[str, str]) -> None:
    """Manifest, fsync, then one rename: the folder appears complete or not at all. `hashes`:
    the sha256 of files hashed as they were written; the others (the ranks' small files) are
    read back."""
    files = sorted(p for p in tmp.iterdir() if p.is_file())
    for p in files:
        _fsync(p)
    manifest = {
        "files": {
            p.name: {"bytes": p.stat().st_size, "sha256": hashes.get(p.name) or _sha256(p)}
            for p in files
        }
    }
    (tmp / COMPLETE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _fsync(tmp / COMPLETE)
    if not final.exists():
        os.replace(tmp, final)
        _fsync(final.parent)
        return
    # The same step saved again after a resume: the old folder goes only once the new one is
    # in place (a crash in between leaves step-N.old, put back by remove_unfinished).
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(tmp, final)
    _fsync(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def prune(checkpoints: Path, keep_last: int, keep_best: bool) -> None:
    """Delete complete checkpoints beyond the newest `keep_last`, sparing the best one."""
    folders = complete_checkpoints(checkpoints)
    keep = set(folders[-keep_last:])
    if keep_best:
        best = [p for p in folders if _state(p).get("is_best")]
        keep.update(best[-1:])
    for old in folders:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)


def _state(folder: Path) -> dict:
    try:
        return json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def load(folder: Path, rank: int) -> Payload:
    """Read a verified checkpoint; `rank_state` is this process's (empty if it has none)."""
    try:
        model = load_file(str(folder / "model.safetensors"))
        ema = (
            load_file(str(folder / "ema.safetensors"))
            if (folder / "ema.safetensors").exists()
            else None
        )
        optimizer = None
        if (folder / "optimizer.pt").exists():
            optimizer = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the files cannot be trusted
        raise CheckpointError(f"{folder}: cannot be loaded ({type(e).__name__}: {e})") from None
    rank_file = folder / f"rank-{rank:05d}.json"
    try:
        rank_state = json.loads(rank_file.read_text(encoding="utf-8")) if rank_file.exists() else {}
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise CheckpointError(f"{rank_file}: cannot be read ({type(e).__name__}: {e})") from None
    return Payload(_state(folder), model, optimizer, ema, rank_state)
