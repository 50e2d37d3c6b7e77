"""FastAPI serving of the registry's approved models (alias ``champion``). Imports no training code."""
