"""The fault-injection harness: an injector loaded into the worker processes, jobs that record
their runs, and the driver that runs one cell of the fault matrix and checks the property."""
