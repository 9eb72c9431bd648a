"""The report: JSON, Markdown and terminal table, the sparsity section, plots, and `compress diff`."""
