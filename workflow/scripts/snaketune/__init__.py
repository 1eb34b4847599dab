"""snaketune: the importable logic behind the Snakemake rules (one module per stage)."""

__version__ = "0.1.0"
