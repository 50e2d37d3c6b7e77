"""fume_hood: rating a laboratory fume hood's state (1 bad .. 5 good) from one photo."""
