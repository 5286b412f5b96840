"""Visualisation: gold vs predicted boxes on post images, per-run Markdown reports, W&B images and tables."""

from .boxes import draw_comparison, draw_posts, panel_size, type_colour
from .report import build_report

__all__ = ["build_report", "draw_comparison", "draw_posts", "panel_size", "type_colour"]
