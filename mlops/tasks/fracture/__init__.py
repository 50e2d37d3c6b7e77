"""fracture: classifying the failure mode of a metal fracture surface from one SEM image."""
