"""Send drawings and plots to W&B: each PNG as an image and one table row per post.

W&B runs offline (files under ``<dir>/wandb/offline-run-*``, upload later with ``wandb sync``) unless the
environment has ``WANDB_API_KEY`` or sets ``WANDB_MODE``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refineg.data import Example

TABLE_COLUMNS = ["id", "text", "gold", "predicted", "comparison"]


def _entities(post: Example | None) -> str:
    if post is None:
        return ""
    return "; ".join(f"{e.text(post.tokens)} ({e.type}{', box' if e.boxes else ''})" for e in post.entities)


def log_visuals(
    posts: Sequence[tuple[Example, Example | None, Path]],
    plots: dict[str, Path],
    save_dir: str | Path,
    project: str = "refineg",
    name: str | None = None,
    config: dict[str, Any] | None = None,
    tables: dict[str, tuple[list[str], list[list[Any]]]] | None = None,
) -> str:
    """Logs post drawings as a ``wandb.Table`` (``posts``) and each plot as an image; returns the run's folder.

    Args:
        posts: ``(gold, prediction, drawing PNG)`` per post.
        plots: ``{key: PNG}`` logged as ``wandb.Image`` under ``key`` (e.g. ``calibration/reliability``).
        save_dir: Folder that receives ``wandb/``.
        project: W&B project.
        name: Run name.
        config: Run config.
        tables: More tables, ``{key: (columns, rows)}`` (e.g. the report's scores).
    """
    import wandb

    if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")):
        os.environ["WANDB_MODE"] = "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, name=name, dir=str(save_dir), config=config or {}, job_type="visualize")
    table = wandb.Table(columns=TABLE_COLUMNS)
    for gold, pred, png in posts:
        table.add_data(gold.id, " ".join(gold.tokens), _entities(gold), _entities(pred), wandb.Image(str(png)))
    payload: dict[str, Any] = {key: wandb.Image(str(path)) for key, path in plots.items()}
    if posts:
        payload["posts"] = table
    for key, (columns, rows) in (tables or {}).items():
        payload[key] = wandb.Table(columns=columns, data=rows)
    run.log(payload)
    folder = run.dir
    run.finish()
    return folder
