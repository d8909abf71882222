"""Tournaments: YAML grid -> DAG of cached stages -> Ray -> one Parquet row per cell."""

from .config import TournamentConfig, load_config
from .grid import Grid, expand

__all__ = ["Grid", "TournamentConfig", "expand", "load_config"]
