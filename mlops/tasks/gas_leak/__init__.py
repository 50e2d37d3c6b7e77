"""gas_leak: locating a (possibly hidden) gas-leak source and its depth velocity in infrared frame stacks."""
