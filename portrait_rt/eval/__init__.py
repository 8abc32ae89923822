"""Offline metrics (no downloaded weights): mouth opening (the cartoons' colour key, and the darkening of any face's
mouth), lip-sync, PSNR/SSIM per reference count, drift."""

from .metrics import (
    background_drift,
    lipsync_from_opening,
    lipsync_score,
    mouth_opening,
    pearson,
    reconstruction_by_references,
    reconstruction_metrics,
)
from .mouth import mouth_darkening
from .report import evaluate_video, lipsync_report, plot_report, validate_metrics, write_report

__all__ = [
    "background_drift",
    "evaluate_video",
    "lipsync_from_opening",
    "lipsync_report",
    "lipsync_score",
    "mouth_darkening",
    "mouth_opening",
    "pearson",
    "plot_report",
    "reconstruction_by_references",
    "reconstruction_metrics",
    "validate_metrics",
    "write_report",
]
