"""The run: options and context, planning, checkpoints, recipes, the output directory, progress, the whole job."""
