"""sagan-attn's benchmark: ``python bench/sweep.py`` (see bench/README.md)."""
