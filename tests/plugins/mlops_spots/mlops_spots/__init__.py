"""spots: an example task plugin (docs/adding-a-task.md). Which half of a 16x16 grayscale image holds a bright spot."""
