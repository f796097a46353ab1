"""Where a run's folders may be: output_dir, data.root and the pixel cache must not nest,
or one would delete, or be read as, another's files."""

from __future__ import annotations

from pathlib import Path

from trainer.config import ConfigError


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def check_placement(output_dir: str, data_root: str) -> None:
    """Refuse an output_dir inside data.root (its plots would become a class) or around it."""
    if not data_root:
        return  # the scan names the missing data.root
    out, root = _resolved(output_dir), _resolved(data_root)
    if out == root or root in out.parents:
        raise ConfigError(
            f"output_dir: {str(out)!r} is inside data.root {str(root)!r}; the run's files would "
            f"be read as images: pick an output_dir outside data.root"
        )
    if out in root.parents:
        raise ConfigError(
            f"data.root: {str(root)!r} is inside output_dir {str(out)!r}; keep the images outside "
            f"the run folder: pick another output_dir"
        )


def check_cache_placement(cache: Path, name: str, output_dir: str, data_root: str) -> None:
    """Refuse a pixel cache folder (`name`: how the user set it) inside output_dir, which
    overwrite=true replaces and which then holds files the run did not record, or inside
    data.root, where its files would be read as a class of images."""
    where = _resolved(cache)
    for key, folder, why in (
        ("output_dir", output_dir, "the cache must outlive the run folder"),
        ("data.root", data_root, "its files would be read as images"),
    ):
        inside = _resolved(folder) if folder else None
        if inside is None or not (where == inside or inside in where.parents):
            continue
        hidden = any(part.startswith(".") for part in where.relative_to(inside).parts)
        if key == "output_dir" or not hidden:  # hidden folders are never read as classes
            raise ConfigError(
                f"{name}: {str(where)!r} is inside {key} {str(inside)!r}; {why}: pick a "
                f"data.cache_dir outside {key}"
            )
