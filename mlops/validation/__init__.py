"""Great Expectations validation of every dataset before anything trains on it."""

from mlops.validation.runner import ValidationFailed, ValidationReport, require_valid, validate_dataset

__all__ = ["ValidationFailed", "ValidationReport", "require_valid", "validate_dataset"]
