"""bullwait's benchmark: `python -m bench [--quick]` (or `bash dev.sh bench`). See docs/performance.md."""
