"""The self-check behind ``python -m logexec demo`` and its ``--compare``."""
